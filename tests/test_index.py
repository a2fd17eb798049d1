"""Nearest-neighbour index: round trip, scores per metric, ANN against exact search, the model
and side checks, and ``object2vec index`` / ``neighbors`` end to end."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import orjson
import pytest

import object2vec
from object2vec import Object2Vec
from object2vec.cli import main
from object2vec.index import NeighborIndex, NeighborIndexError, model_fingerprint, weights_fingerprint
from object2vec.sample_data import latent_pairs, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """A small model over ID pairs (vocabularies 50 and 60), saved; returns (model, its directory)."""
    from conftest import TINY_HYPERPARAMETERS

    root = tmp_path_factory.mktemp("index-model")
    data = write_jsonl(latent_pairs(1500, seed=3), root / "train.jsonl")
    model = Object2Vec(TINY_HYPERPARAMETERS).fit(data, seed=0, log=lambda *_: None, progress=False)
    model.save(root / "model")
    return object2vec.load(root / "model"), root / "model"


def structured_vectors(n: int, dim: int = 24, seed: int = 0) -> np.ndarray:
    """Vectors from 6 random factors plus noise: neighbourhoods an HNSW graph can follow."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, 6)) @ rng.standard_normal((6, dim)) + 0.1 * rng.standard_normal((n, dim))
    ).astype(np.float32)


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if metric == "l2":
        distances = ((queries[:, None, :] - base[None]) ** 2).sum(-1)
        return np.argsort(distances, axis=1)[:, :k]
    return np.argsort(-(queries @ base.T), axis=1)[:, :k]


def test_round_trip_keeps_ids_metadata_and_answers(tmp_path):
    vectors = structured_vectors(300)
    ids = [f"item-{i}" for i in range(300)]
    index = NeighborIndex.build(vectors, ids, metric="cosine", side="in1", model_fingerprint="sha256:abc")
    before = index.search(vectors[:20], 5)
    saved = index.save(tmp_path / "idx")
    assert sorted(p.name for p in saved.iterdir()) == ["index.faiss", "index.json"]
    meta = json.loads((saved / "index.json").read_text())
    assert meta["ids"] == ids and meta["side"] == "in1" and meta["metric"] == "cosine" and meta["dim"] == 24
    for mmap in (False, True):
        loaded = object2vec.load_index(saved, mmap=mmap)
        assert (loaded.ids, loaded.side, loaded.metric, loaded.model_fingerprint, loaded.dim) == (
            ids,
            "in1",
            "cosine",
            "sha256:abc",
            24,
        )
        after = loaded.search(vectors[:20], 5)
        assert after[0] == before[0]
        np.testing.assert_allclose(after[1], before[1], rtol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_each_item_finds_itself_first_with_its_metric_score(metric):
    vectors = structured_vectors(200, seed=1)
    if metric == "ip":  # under inner product a longer vector can beat the item itself
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids, scores = NeighborIndex.build(vectors, metric=metric).search(vectors, 3)
    assert [row[0] for row in ids] == list(range(200))
    if metric == "cosine":
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    elif metric == "ip":
        np.testing.assert_allclose(scores[:, 0], (vectors**2).sum(1), rtol=1e-4)
    else:
        np.testing.assert_allclose(scores[:, 0], 0.0, atol=1e-2)
    order = np.diff(scores, axis=1)
    assert (order >= -1e-5).all() if metric == "l2" else (order <= 1e-5).all()


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_ann_recall_against_exact_search_and_exact_scores(metric):
    base, queries = structured_vectors(3000, seed=2), structured_vectors(200, seed=3)
    ids, scores = NeighborIndex.build(base, metric=metric).search(queries, 10)
    truth = exact_neighbours(base, queries, 10, metric)
    recall = np.mean([len(set(found) & set(expected)) / 10 for found, expected in zip(ids, truth)])
    assert recall >= 0.95
    first = np.asarray([row[0] for row in ids])
    if metric == "l2":
        expected = np.linalg.norm(queries - base[first], axis=1)
    elif metric == "ip":
        expected = (queries * base[first]).sum(1)
    else:
        expected = (
            (queries * base[first]).sum(1)
            / np.linalg.norm(queries, axis=1)
            / np.linalg.norm(base[first], axis=1)
        )
    np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_k_larger_than_the_index_gives_every_row():
    ids, scores = NeighborIndex.build(structured_vectors(7)).search(structured_vectors(2, seed=9), 50)
    assert [sorted(row) for row in ids] == [list(range(7))] * 2 and scores.shape == (2, 7)


@pytest.mark.parametrize(
    "vectors, ids, metric, message",
    [
        (np.ones((3, 4)), [1, 2, 2], "cosine", "id 2 is given twice"),
        (np.ones((3, 4)), [1, 2], "cosine", "2 ids for 3 vectors"),
        (np.ones((3, 4)), [1, 2, True], "cosine", "integers or strings"),
        (np.vstack([np.ones((2, 4)), np.zeros((1, 4))]), None, "cosine", "vector 2 is all zeros"),
        (np.array([[1.0, np.nan]]), None, "ip", "not finite"),
        (np.ones((3, 4)), None, "hamming", "metric='hamming'"),
    ],
)
def test_bad_build_input_is_refused(vectors, ids, metric, message):
    with pytest.raises(NeighborIndexError, match=message):
        NeighborIndex.build(vectors, ids, metric=metric)


def test_bad_queries_are_refused():
    index = NeighborIndex.build(structured_vectors(20))
    with pytest.raises(NeighborIndexError, match="this index holds 24-dimensional"):
        index.search(np.ones((1, 5)), 3)
    with pytest.raises(NeighborIndexError, match="k must be a positive integer"):
        index.search(np.ones((1, 24)), 0)


def test_loading_refuses_what_is_not_an_index(tmp_path):
    with pytest.raises(NeighborIndexError, match="not an index directory"):
        object2vec.load_index(tmp_path)
    saved = NeighborIndex.build(structured_vectors(10)).save(tmp_path / "idx")
    meta = json.loads((saved / "index.json").read_text())
    (saved / "index.json").write_text(json.dumps({**meta, "count": 11}))
    with pytest.raises(NeighborIndexError, match="'ids' is missing or invalid"):
        object2vec.load_index(saved)
    (saved / "index.json").write_text("{not json")
    with pytest.raises(NeighborIndexError, match="not valid JSON"):
        object2vec.load_index(saved)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(NeighborIndexError, match="not an index directory; refusing"):
        NeighborIndex.build(structured_vectors(10)).save(tmp_path / "precious")


def test_fingerprint_is_the_sha256_of_the_weights_file(trained, tmp_path):
    model, model_dir = trained
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert weights_fingerprint(model_dir) == model_fingerprint(model) == f"sha256:{digest}"
    unsaved = Object2Vec.from_predictor(model.predictor)  # in memory only: the file save would write
    assert model_fingerprint(unsaved) == weights_fingerprint(unsaved.save(tmp_path / "again"))


def test_build_index_from_the_model_records_side_and_model(trained):
    model, model_dir = trained
    movies = [[i] for i in range(1, 60)]
    index = model.build_index(movies, side="in1", ids=list(range(1, 60)))
    assert (index.side, index.model_fingerprint, len(index)) == ("in1", weights_fingerprint(model_dir), 59)
    ids, _ = index.search(model.embed(in1=movies[:5]), 3)
    assert [row[0] for row in ids] == [1, 2, 3, 4, 5]
    index.check_compatible(weights_fingerprint(model_dir), "in1")
    with pytest.raises(NeighborIndexError, match="built from model .* but the model given is"):
        index.check_compatible("sha256:0000", "in1")
    with pytest.raises(NeighborIndexError, match="holds in1 embeddings but the query is an in0 input"):
        index.check_compatible(side="in0")
    index.check_compatible("sha256:0000", "in0", force=True)


# ---- the CLI ------------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_neighbors(capsys, model_dir, index, queries, output, *extra) -> tuple[int, str, str]:
    """``object2vec neighbors`` on ``queries`` into ``output`` (``model_dir`` None: no --model-dir)."""
    model = ["--model-dir", model_dir] if model_dir is not None else []
    return run_cli(
        capsys, "neighbors", *model, "--index", index, "--input", queries, "--output", output, *extra
    )


@pytest.fixture
def movie_index(trained, tmp_path, write_jsonl, capsys):
    model, model_dir = trained
    items = write_jsonl([{"in1": [i], "id": f"m{i}"} for i in range(1, 60)], "items.jsonl")
    code, out, _ = run_cli(
        capsys, "index", "--model-dir", model_dir, "--input", items, "--output", tmp_path / "idx"
    )
    assert code == 0 and "index of 59 in1 embeddings (cosine, 16 values)" in out
    return tmp_path / "idx"


def test_cli_neighbors_answers_inputs_and_vectors_in_order(
    trained, movie_index, tmp_path, write_jsonl, capsys
):
    model, model_dir = trained
    vector = model.embed(in1=[[7]])[0].tolist()
    queries = write_jsonl([{"in1": [3]}, {"embedding": vector}, {"in1": [12], "id": "x"}], "queries.jsonl")
    out_file = tmp_path / "out.jsonl"
    code, _, _ = run_neighbors(capsys, model_dir, movie_index, queries, out_file, "-k", "4", "--ef", "64")
    assert code == 0
    lines = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert [line["neighbors"][0]["id"] for line in lines] == ["m3", "m7", "m12"]
    assert all(len(line["neighbors"]) == 4 for line in lines)
    assert lines[0]["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    scores = [n["score"] for n in lines[0]["neighbors"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_refuses_another_models_or_sides_queries(trained, movie_index, tmp_path, write_jsonl, capsys):
    model, model_dir = trained
    other = (
        Object2Vec(model.hp)
        .fit(
            write_jsonl(latent_pairs(200, seed=9), "other.jsonl"), seed=1, log=lambda *_: None, progress=False
        )
        .save(tmp_path / "other")
    )
    queries = write_jsonl([{"in1": [3]}], "queries.jsonl")
    out_file = tmp_path / "out.jsonl"
    code, _, err = run_neighbors(capsys, other, movie_index, queries, out_file)
    assert code == 2 and "was built from model" in err and "use --force" in err and not out_file.exists()
    code, _, _ = run_neighbors(capsys, other, movie_index, queries, out_file, "--force")
    assert code == 0 and out_file.exists()
    users = write_jsonl([{"in0": [3]}], "users.jsonl")
    code, _, err = run_neighbors(capsys, model_dir, movie_index, users, out_file)
    assert code == 2 and "holds in1 embeddings but the query is an in0 input" in err


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"in1": [3]}', '{"in1": [60]}'], "queries.jsonl: line 2: 'in1' token ID 60 is outside [0, 60)"),
        (['{"in1": [3], "in0": [2]}'], "line 1 has 'in0' and 'in1'; give one of"),
        (['{"embedding": [1, 2]}'], "line 1: 'embedding' has 2 values; the index holds 16-dimensional"),
        (["not json"], "queries.jsonl:1: not valid JSON"),
    ],
)
def test_cli_bad_query_lines_name_file_line_and_field(
    trained, movie_index, tmp_path, write_jsonl, capsys, lines, message
):
    _, model_dir = trained
    queries = write_jsonl(lines, "queries.jsonl")
    code, _, err = run_neighbors(capsys, model_dir, movie_index, queries, tmp_path / "out.jsonl")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "lines, extra, message",
    [
        (['{"in1": [3], "id": 1}', '{"in1": [4], "id": 1}'], [], "line 2: id 1 was already given on line 1"),
        (['{"in1": [3]}', '{"in0": [4]}'], [], "line 2: names in0 but earlier records name in1"),
        (['{"in0": [3], "in1": [4]}'], [], "names both 'in0' and 'in1'; say which side to use with --side"),
        (['{"in0": [3], "in1": [4], "label": 1}'], ["--side", "in1", "--metric", "l2"], None),
    ],
)
def test_cli_index_items(trained, tmp_path, write_jsonl, capsys, lines, extra, message):
    _, model_dir = trained
    items = write_jsonl(lines, "items.jsonl")
    code, _, err = run_cli(
        capsys, "index", "--model-dir", model_dir, "--input", items, "--output", tmp_path / "i", *extra
    )
    if message is None:
        index = object2vec.load_index(tmp_path / "i")
        assert code == 0 and (index.ids, index.side, index.metric) == ([1], "in1", "l2")
    else:
        assert code == 2 and message in err


def test_cli_neighbors_without_a_model_takes_vectors_only(
    trained, movie_index, tmp_path, write_jsonl, capsys
):
    model, _ = trained
    out_file = tmp_path / "out.jsonl"
    vectors = write_jsonl([{"embedding": model.embed(in1=[[5]])[0].tolist()}], "vectors.jsonl")
    code, _, _ = run_neighbors(capsys, None, movie_index, vectors, out_file)
    assert code == 0 and orjson.loads(out_file.read_bytes())["neighbors"][0]["id"] == "m5"
    inputs = write_jsonl([{"in1": [5]}], "inputs.jsonl")
    code, _, err = run_neighbors(capsys, None, movie_index, inputs, out_file)
    assert code == 2 and "line 1: 'in1' needs a model to embed it (--model-dir)" in err
