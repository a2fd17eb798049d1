"""``POST /neighbors`` served beside /invocations: answers in every format, and every client
mistake as a 4xx JSON error."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

import object2vec
from object2vec import Object2Vec
from object2vec.index import NeighborIndexError
from object2vec.sample_data import latent_pairs, write_jsonl
from object2vec.serving.neighbors import open_served_index
from object2vec.serving.server import create_app
from object2vec.serving.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
JSON, JSONLINES = "application/json", "application/jsonlines"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(model, its directory, the index directory of its 59 in1 items, ids "m1" .. "m59")."""
    from conftest import TINY_HYPERPARAMETERS

    root = tmp_path_factory.mktemp("served")
    data = write_jsonl(latent_pairs(1500, seed=4), root / "train.jsonl")
    Object2Vec(TINY_HYPERPARAMETERS).fit(data, seed=0, log=lambda *_: None, progress=False).save(
        root / "model"
    )
    model = object2vec.load(root / "model")
    model.build_index([[i] for i in range(1, 60)], side="in1", ids=[f"m{i}" for i in range(1, 60)]).save(
        root / "idx"
    )
    return model, root / "model", root / "idx"


@pytest.fixture(scope="module")
def post(served):
    model, model_dir, index_dir = served
    index = open_served_index(index_dir, model_dir, model.predictor.embedding_dim)
    app = create_app(model.predictor, ServeSettings(str(model_dir), max_payload_mb=0.05), index)
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server")

    def send(body, content_type: str | None = JSON, accept: str | None = None, path: str = "/neighbors"):
        content = orjson.dumps(body) if isinstance(body, (dict, list)) else body
        headers = {k: v for k, v in (("content-type", content_type), ("accept", accept)) if v is not None}
        return loop.run_until_complete(client.post(path, content=content, headers=headers))

    yield send
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:  # gather() of nothing would make its future on the thread's current loop, not this one
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


def test_neighbors_of_inputs_and_vectors_in_order(served, post):
    model = served[0]
    vector = model.embed(in1=[[9]])[0].tolist()
    response = post({"instances": [{"in1": [4]}, {"embedding": vector}, {"in1": [30]}], "k": 3})
    assert response.status_code == 200 and response.headers["content-type"].startswith(JSON)
    predictions = response.json()["predictions"]
    assert [p["neighbors"][0]["id"] for p in predictions] == ["m4", "m9", "m30"]
    assert all(len(p["neighbors"]) == 3 for p in predictions)
    assert predictions[0]["neighbors"][0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("query", ["?k=", "?k", "?k=0", "?k=x"])
def test_a_blank_or_bad_k_in_the_query_is_a_400(post, query):
    response = post({"instances": [{"in1": [4]}]}, path=f"/neighbors{query}")
    assert response.status_code == 400 and "k" in response.json()["error"]


def test_k_defaults_to_10_and_json_lines_both_ways(post):
    body = b'{"in1": [5]}\n{"in1": [6]}\n'
    response = post(body, content_type=JSONLINES, accept=JSONLINES, path="/neighbors?k=2")
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert response.status_code == 200 and [len(line["neighbors"]) for line in lines] == [2, 2]
    assert [line["neighbors"][0]["id"] for line in lines] == ["m5", "m6"]
    assert len(post({"instances": [{"in1": [5]}]}).json()["predictions"][0]["neighbors"]) == 10


def test_invocations_is_unchanged(post):
    response = post({"instances": [{"in0": [3], "in1": [4]}]}, path="/invocations")
    assert response.status_code == 200 and len(response.json()["predictions"][0]["scores"]) == 2


@pytest.mark.parametrize(
    "body, content_type, accept, status, text",
    [
        (b"{nope", JSON, None, 400, "invalid JSON"),
        ({"k": 3}, JSON, None, 400, '"instances" is missing'),
        ({"instances": []}, JSON, None, 400, "holds no instances"),
        ({"instances": [{"in1": [4]}], "k": 0}, JSON, None, 400, '"k" must be an integer in [1, 1000]'),
        ({"instances": [{"in1": [4]}], "k": "5"}, JSON, None, 400, '"k" must be an integer'),
        (
            {"instances": [{"in1": [4]}, {"in1": [60]}]},
            JSON,
            None,
            400,
            "instance 1: 'in1' token ID 60 is outside [0, 60)",
        ),
        ({"instances": [{"in0": [4]}]}, JSON, None, 400, "instance 0: the index holds in1 embeddings"),
        (
            {"instances": [{"in0": [4], "in1": [3]}]},
            JSON,
            None,
            400,
            "instance 0 has 'in0' and 'in1'; give one of",
        ),
        (
            {"instances": [{"embedding": [1.0, 2.0]}]},
            JSON,
            None,
            400,
            "has 2 values; the index holds 16-dimensional",
        ),
        ({"instances": [{"embedding": [1.0, None] * 8}]}, JSON, None, 400, "not a finite number"),
        ({"instances": [{"label": 1}]}, JSON, None, 400, "has none of 'in0', 'in1', 'embedding'"),
        ({"instances": [{"embedding": [0.0] * 16}]}, JSON, None, 400, "query 0 is all zeros"),
        ({"instances": [{"in1": [4]}]}, "text/csv", None, 415, "is not supported"),
        ({"instances": [{"in1": [4]}]}, JSON, "text/csv", 406, "is not supported"),
        ({"instances": [{"in1": [4]}] * 20000}, JSON, None, 413, "payload limit"),
    ],
)
def test_client_mistakes_get_4xx_json_errors(post, body, content_type, accept, status, text):
    response = post(body, content_type=content_type, accept=accept)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(JSON)
    assert text in response.json()["error"]


def test_serving_refuses_an_index_of_another_model(served, tmp_path):
    _, model_dir, index_dir = served
    other = object2vec.load(model_dir)  # a copy: the shared model stays as it is
    with torch_no_grad():
        next(other.net.parameters()).add_(1.0)
    other_dir = other.save(tmp_path / "other")
    with pytest.raises(NeighborIndexError, match="was built from model"):
        open_served_index(index_dir, other_dir)


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_serve_refuses_another_models_index_before_listening(served, tmp_path, capsys):
    from object2vec.cli import main

    _, model_dir, index_dir = served
    other = object2vec.load(model_dir)
    with torch_no_grad():
        next(other.net.parameters()).mul_(2.0)
    other_dir = other.save(tmp_path / "other")
    code = main(["serve", "--model-dir", str(other_dir), "--index", str(index_dir), "--port", "0"])
    assert code == 2 and "was built from model" in capsys.readouterr().err


def test_workers_receive_the_index_through_their_settings(served):
    _, model_dir, index_dir = served
    settings = ServeSettings(str(model_dir), workers=2, index=str(index_dir))
    assert ServeSettings.from_env(settings.to_env()).index == str(index_dir)
