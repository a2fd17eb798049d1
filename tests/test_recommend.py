"""Top-k by the model's own score: the same ranking as brute-force scoring of every pair,
exclusions honoured, ANN candidates with exact rescoring, and ``object2vec recommend``."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import object2vec
from object2vec import Object2Vec
from object2vec.cli import main
from object2vec.recommend import RecommendError, recommend
from object2vec.sample_data import latent_pairs, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
USERS, ITEMS = list(range(1, 50)), list(range(1, 60))


def small_model(root, task: str):
    from conftest import TINY_HYPERPARAMETERS

    hp = dict(TINY_HYPERPARAMETERS, num_classes="3")
    if task == "regression":
        hp["output_layer"] = "mean_squared_error"
    data = write_jsonl(latent_pairs(1500, task=task, num_classes=3, seed=6), root / "train.jsonl")
    Object2Vec(hp).fit(data, seed=0, log=lambda *_: None, progress=False).save(root / "model")
    return object2vec.load(root / "model"), root / "model"


@pytest.fixture(scope="module", params=["regression", "multiclass"])
def trained(request, tmp_path_factory):
    return small_model(tmp_path_factory.mktemp(request.param), request.param)


def brute_force(model, column: int | None) -> np.ndarray:
    """scores[u, i] of every (user, item) pair, one model.predict call over all pairs."""
    in0 = [[u] for u in USERS for _ in ITEMS]
    in1 = [[i] for _ in USERS for i in ITEMS]
    scores = model.predict(in0, in1)
    if column is not None:
        scores = scores[:, column]
    return scores.reshape(len(USERS), len(ITEMS))


def column_of(model, class_index=None):
    return None if model.predictor.net.regression else (1 if class_index is None else class_index)


def test_matches_a_brute_force_numpy_ranking(trained):
    model, _ = trained
    for class_index in (None, 2):
        column = column_of(model, class_index)
        expected = brute_force(model, column)
        found = recommend(
            model.predictor, [[u] for u in USERS], [[i] for i in ITEMS], 5, class_index=class_index
        )
        for row, (best, scores) in enumerate(zip(found.items, found.scores)):
            np.testing.assert_allclose(scores, np.sort(expected[row])[::-1][:5], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(expected[row, best], scores, rtol=1e-5, atol=1e-6)
        if column is None:
            break  # regression has one score, no class to choose


def test_queries_may_be_the_in1_side(trained):
    model, _ = trained
    expected = brute_force(model, column_of(model)).T  # items as queries, users as items
    found = recommend(model.predictor, [[i] for i in ITEMS], [[u] for u in USERS], 3, query_side="in1")
    np.testing.assert_allclose(
        np.stack(found.scores), -np.sort(-expected, axis=1)[:, :3], rtol=1e-5, atol=1e-6
    )


def test_excluded_items_never_come_back(trained):
    model, _ = trained
    expected = brute_force(model, column_of(model))
    banned = [set(np.argsort(-row)[:4].tolist()) for row in expected]  # each user's 4 best
    found = recommend(model.predictor, [[u] for u in USERS], [[i] for i in ITEMS], 5, exclude=banned)
    for row, best in enumerate(found.items):
        assert not set(best.tolist()) & banned[row]
        assert best.tolist() == np.argsort(-expected[row])[4:9].tolist()


def test_candidates_then_exact_rescoring(trained):
    model, _ = trained
    queries, items = [[u] for u in USERS], [[i] for i in ITEMS]
    everything = recommend(model.predictor, queries, items, 5)
    all_candidates = recommend(model.predictor, queries, items, 5, candidates=len(ITEMS) - 1)
    expected = brute_force(model, column_of(model))
    for row, (best, scores) in enumerate(zip(all_candidates.items, all_candidates.scores)):
        np.testing.assert_allclose(expected[row, best], scores, rtol=1e-5, atol=1e-6)  # exact scores
        assert len(best) == 5 and scores.tolist() == sorted(scores.tolist(), reverse=True)
    agree = np.mean(
        [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(everything.items, all_candidates.items)]
    )
    assert agree >= 0.9  # 58 of 59 candidates: only an item the inner product ranks last can be lost


def test_bad_requests_are_refused(trained):
    model, _ = trained
    if not model.predictor.net.regression:
        with pytest.raises(RecommendError, match=r"--class 3 is outside \[0, 3\)"):
            recommend(model.predictor, [[1]], [[1]], 1, class_index=3)
    with pytest.raises(RecommendError, match="k must be at least 1"):
        recommend(model.predictor, [[1]], [[1]], 0)


def test_cli_recommend_with_exclude_file(trained, tmp_path, write_jsonl, capsys):
    model, model_dir = trained
    users = write_jsonl([{"in0": [u], "id": f"u{u}"} for u in USERS], "users.jsonl")
    items = write_jsonl([{"in1": [i]} for i in ITEMS], "items.jsonl")  # ids: line numbers 1 .. 59 = item ids
    expected = brute_force(model, column_of(model))
    best_two = {f"u{u}": (np.argsort(-expected[row])[:2] + 1).tolist() for row, u in enumerate(USERS)}
    seen = write_jsonl(
        [{"query": q, "items": v[:1]} for q, v in best_two.items()]
        + [{"query": q, "items": v[1:]} for q, v in best_two.items()]
        + [{"query": "nobody", "items": [1]}],
        "seen.jsonl",
    )
    out_file = tmp_path / "out.jsonl"
    code = main(
        [
            "recommend",
            "--model-dir",
            str(model_dir),
            "--queries",
            str(users),
            "--items",
            str(items),
            "-k",
            "3",
            "--exclude",
            str(seen),
            "--output",
            str(out_file),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0 and "1 lines name a query and 0 entries an item not in the inputs" in err
    lines = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert [line["query"] for line in lines] == [f"u{u}" for u in USERS]
    for row, line in enumerate(lines):
        got = [entry["id"] for entry in line["items"]]
        assert got == (np.argsort(-expected[row])[2:5] + 1).tolist()
        np.testing.assert_allclose(
            [e["score"] for e in line["items"]], expected[row, np.array(got) - 1], rtol=1e-5
        )


@pytest.mark.parametrize(
    "queries, exclude, message",
    [
        ([{"in1": [1]}], None, "queries and items both name in1"),
        ([{"in0": [1]}], ['{"query": 1}'], 'seen.jsonl: line 1: expected {"query": <query id>'),
        ([{"in0": [1]}], ['{"query": 1, "items": [1.5]}'], "ids must be integers or strings, got 1.5"),
    ],
)
def test_cli_recommend_mistakes_exit_2_with_one_line(
    trained, tmp_path, write_jsonl, capsys, queries, exclude, message
):
    _, model_dir = trained
    args = [
        "recommend",
        "--model-dir",
        str(model_dir),
        "--queries",
        str(write_jsonl(queries, "q.jsonl")),
        "--items",
        str(write_jsonl([{"in1": [2]}], "items.jsonl")),
    ]
    if exclude:
        args += ["--exclude", str(write_jsonl(exclude, "seen.jsonl"))]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
