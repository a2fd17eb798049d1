"""The inference service: reference payloads in every format, every client mistake as a 4xx
JSON error, fuzzing, micro-batching, and boto3's sagemaker-runtime client against a real
``object2vec serve`` process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import orjson
import pytest
import torch
from conftest import direct_embeddings, direct_scores, wait_until_listening
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import object2vec
from object2vec import Object2Vec
from object2vec.sample_data import latent_pairs, write_jsonl
from object2vec.serving import server
from object2vec.serving import settings as settings_module
from object2vec.serving.asgi import Answer, HttpRequest, answer_headers
from object2vec.serving.predictor import PREFERRED_MODES, Predictor, placement
from object2vec.serving.server import create_app
from object2vec.serving.settings import Platform, ServeSettings, serve_settings

JSON, JSONLINES = "application/json", "application/jsonlines"
VOCAB = 1100  # the reference examples use token IDs up to 1016
SCORES_EXAMPLE = {
    "instances": [
        {"in0": [6, 17, 606], "in1": [16, 21, 13]},
        {"in0": [774, 14, 21, 206], "in1": [21, 366, 125]},
    ]
}
EMBEDDING_EXAMPLE = {
    "instances": [{"in0": [6, 17, 606, 19]}, {"in0": [22, 1016, 32]}, {"in0": [774, 14, 21, 206]}]
}


def tiny_model(directory, task: str = "multiclass", **overrides) -> Object2Vec:
    """A quickly trained 3-class (or regression) model over token sequences of up to 5 IDs."""
    hp = {
        "enc0_network": "pooled_embedding",
        "enc0_max_seq_len": "5",
        "enc1_max_seq_len": "5",
        "enc0_vocab_size": str(VOCAB),
        "enc1_vocab_size": str(VOCAB),
        "enc0_token_embedding_dim": "8",
        "enc_dim": "8",
        "mlp_layers": "1",
        "mlp_dim": "8",
        "num_classes": "3",
        "epochs": "1",
        "mini_batch_size": "64",
        **overrides,
    }
    if task == "regression":
        hp["output_layer"] = "mean_squared_error"
    data = write_jsonl(
        latent_pairs(300, VOCAB, VOCAB, max_len0=5, max_len1=5, task=task, num_classes=3),
        directory / "train.jsonl",
    )
    model = Object2Vec(hp).fit(data, seed=0, log=lambda *_: None, progress=False)
    model.save(directory / "model")
    return object2vec.load(directory / "model", device="cpu")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Object2Vec:
    return tiny_model(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    tasks = asyncio.all_tasks(loop)  # the apps' batching workers
    for task in tasks:
        task.cancel()
    if tasks:  # gather() of nothing would make its future on the thread's current loop, not this one
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.close()


class Client:
    """Calls an app in-process on one event loop (so the app's batcher lives across calls):
    through ASGI (``way="asgi"``), or, where the route has one, through its direct handler with
    the whole body (``way="direct"``, as uvicorn's ``DirectProtocol`` calls it)."""

    alive: list[Client] = []  # apps stay referenced until the loop closes (their workers with them)

    def __init__(self, app, loop, way: str = "asgi"):
        Client.alive.append(self)
        self.app, self.loop, self.way = app, loop, way
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server")

    def post(
        self, body, content_type: str | None = JSON, accept: str | None = None, path: str = "/invocations"
    ) -> httpx.Response:
        return self.loop.run_until_complete(self._post(body, content_type, accept, path))

    async def _post(self, body, content_type, accept, path) -> httpx.Response:
        content = orjson.dumps(body) if isinstance(body, dict) else body
        headers = {k: v for k, v in (("content-type", content_type), ("accept", accept)) if v is not None}
        if self.way == "direct":
            answered = await self._direct("POST", path, headers, content)
            if answered is not None:
                return answered
        return await self.http.post(path, content=content, headers=headers)

    async def _direct(self, method: str, path: str, headers: dict, body: bytes) -> httpx.Response | None:
        """The route's direct handler's answer (None: the route has none)."""
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        scope = {"type": "http", "method": method, "path": path, "headers": raw, "query_string": b""}
        handler = self.app.direct_handler(scope)
        if handler is None:
            return None
        replies = []
        answered = asyncio.get_running_loop().create_future()

        def reply(answer: Answer) -> None:
            replies.append(answer)
            answered.set_result(answer)

        handler(HttpRequest(scope, None, body), reply)
        answer = await answered
        await asyncio.sleep(0.01)
        assert len(replies) == 1  # exactly one answer
        return httpx.Response(answer.status, headers=answer_headers(answer), content=answer.body)

    def post_all(self, bodies) -> list[httpx.Response]:
        """Send every body at the same time."""

        async def send():
            return await asyncio.gather(*(self._post(b, JSON, None, "/invocations") for b in bodies))

        return self.loop.run_until_complete(send())

    def get(self, path: str) -> httpx.Response:
        return self.loop.run_until_complete(self._get(path))

    async def _get(self, path: str) -> httpx.Response:
        answered = await self._direct("GET", path, {}, b"") if self.way == "direct" else None
        return answered if answered is not None else await self.http.get(path)


@pytest.fixture(scope="module", params=["asgi", "direct"])
def way(request) -> str:
    """How requests reach the app: through ASGI, or through their route's direct handler."""
    return request.param


@pytest.fixture(scope="module")
def client(model, loop, way) -> Client:
    return Client(create_app(model.predictor, ServeSettings("unused", max_payload_mb=0.05)), loop, way)


def as_jsonlines(document: dict) -> bytes:
    return b"".join(orjson.dumps(instance) + b"\n" for instance in document["instances"])


def answer_type(content_type: str | None, accept: str | None) -> str:
    """The type an answer must have: Accept when it names one, else the request's own type (as
    SageMaker's containers do without SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT)."""
    return accept if accept in (JSON, JSONLINES) else (content_type or JSON)


def results(response: httpx.Response, accept: str | None) -> list[dict]:
    """The answers of a 200 response that must be of type ``accept`` (None: JSON)."""
    assert response.status_code == 200, response.text
    if accept == JSONLINES:
        assert response.headers["content-type"].startswith(JSONLINES)
        return [orjson.loads(line) for line in response.content.splitlines()]
    assert response.headers["content-type"].startswith(JSON)
    return orjson.loads(response.content)["predictions"]


FORMATS = [(content, accept) for content in (JSON, JSONLINES) for accept in (None, "*/*", JSON, JSONLINES)]


@pytest.mark.parametrize("content_type, accept", FORMATS)
def test_reference_scoring_example_round_trips(client, model, content_type, accept):
    body = orjson.dumps(SCORES_EXAMPLE) if content_type == JSON else as_jsonlines(SCORES_EXAMPLE)
    answers = results(client.post(body, content_type, accept), answer_type(content_type, accept))
    scores = np.array([answer["scores"] for answer in answers], dtype=np.float32)
    assert scores.shape == (2, 3)
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    expected = model.predict(
        [i["in0"] for i in SCORES_EXAMPLE["instances"]], [i["in1"] for i in SCORES_EXAMPLE["instances"]]
    )
    np.testing.assert_array_equal(scores, expected)  # float32 values survive the JSON exactly
    np.testing.assert_allclose(
        scores,
        direct_scores(
            model.net,
            [i["in0"] for i in SCORES_EXAMPLE["instances"]],
            [i["in1"] for i in SCORES_EXAMPLE["instances"]],
        ),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("content_type, accept", FORMATS)
def test_reference_embedding_example_with_infer_max_seqlens(client, model, content_type, accept):
    body = orjson.dumps(EMBEDDING_EXAMPLE) if content_type == JSON else as_jsonlines(EMBEDDING_EXAMPLE)
    expected_type = answer_type(content_type, accept)
    answers = results(client.post(body, f"{content_type}; infer_max_seqlens=2,5", accept), expected_type)
    vectors = np.array([answer["embeddings"] for answer in answers], dtype=np.float32)
    sequences = [i["in0"] for i in EMBEDDING_EXAMPLE["instances"]]
    np.testing.assert_array_equal(vectors, model.embed(in0=[s[:2] for s in sequences]))
    assert vectors.shape == (3, model.predictor.embedding_dim)
    uncapped = results(client.post(body, content_type, accept), expected_type)
    np.testing.assert_array_equal(
        np.array([a["embeddings"] for a in uncapped], dtype=np.float32), model.embed(in0=sequences)
    )
    assert not np.array_equal(vectors, model.embed(in0=sequences))  # the cap changed the input


def test_embedding_request_mixing_encoders_keeps_order(client, model):
    body = {"instances": [{"in1": [5, 6]}, {"in0": [7]}, {"in1": [8]}, {"in0": [5, 6]}]}
    vectors = np.array([a["embeddings"] for a in results(client.post(body), None)], dtype=np.float32)
    np.testing.assert_array_equal(vectors[[0, 2]], model.embed(in1=[[5, 6], [8]]))
    np.testing.assert_array_equal(vectors[[1, 3]], model.embed(in0=[[7], [5, 6]]))
    # each side's own encoder, called directly: in1 through enc1, in0 through enc0
    np.testing.assert_allclose(
        vectors[[0, 2]], direct_embeddings(model.net, 1, [[5, 6], [8]]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        vectors[[1, 3]], direct_embeddings(model.net, 0, [[7], [5, 6]]), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(vectors[0], vectors[3], atol=1e-3)  # the same IDs, two encoders, two answers


@pytest.mark.parametrize("content_type", [JSON, JSONLINES])
def test_infer_max_seqlens_caps_each_side_with_its_own_number(client, model, content_type):
    """``infer_max_seqlens=<FWD>,<BCK>``: FWD cuts in0, BCK cuts in1, in embeddings and pairs."""
    longs = [[5, 6, 7, 8, 9], [10, 11, 12, 13], [14, 15, 16]]

    def post(instances, caps):
        document = {"instances": instances}
        body = orjson.dumps(document) if content_type == JSON else as_jsonlines(document)
        return results(client.post(body, f"{content_type}; infer_max_seqlens={caps}", JSON), JSON)

    answers = post([{"in1": s} for s in longs], "5,2")
    vectors = np.array([a["embeddings"] for a in answers], dtype=np.float32)
    np.testing.assert_allclose(vectors, direct_embeddings(model.net, 1, longs, cap=2), rtol=1e-5, atol=1e-6)
    assert not np.allclose(vectors, direct_embeddings(model.net, 1, longs), atol=1e-4)  # the cap mattered

    answers = post([{"in0": a, "in1": b} for a, b in zip(longs, longs[::-1])], "1,3")
    scores = np.array([a["scores"] for a in answers], dtype=np.float32)
    np.testing.assert_allclose(
        scores, direct_scores(model.net, longs, longs[::-1], caps=(1, 3)), rtol=1e-5, atol=1e-6
    )
    for caps in [(3, 1), (1, 5)]:  # a swap of the two numbers, or a cap on in0 only, answers otherwise
        assert not np.allclose(scores, direct_scores(model.net, longs, longs[::-1], caps=caps), atol=1e-5)


def test_regression_scores_are_one_value(tmp_path, loop, way):
    regressor = tiny_model(tmp_path, task="regression")
    client = Client(create_app(regressor.predictor, ServeSettings("unused")), loop, way)
    answers = results(client.post(SCORES_EXAMPLE, accept=JSONLINES), JSONLINES)
    assert [len(a["scores"]) for a in answers] == [1, 1]
    expected = regressor.predict([[6, 17, 606], [774, 14, 21, 206]], [[16, 21, 13], [21, 366, 125]])
    np.testing.assert_array_equal(np.float32([a["scores"][0] for a in answers]), expected)


BAD_REQUESTS = [
    # (body, content type, accept, status, text the error must contain)
    (b'{"instances": [{"in0": [1]', JSON, None, 400, "invalid JSON"),
    (b'\xff\xfe{"instances": []}', JSON, None, 400, "invalid JSON"),
    (b'{"in0": [1]}\nnot json\n', JSONLINES, None, 400, "line 2: invalid JSON"),
    (b'{"requests": [{"in0": [1]}]}', JSON, None, 400, '"instances" is missing'),
    (b'{"instances": []}', JSON, None, 400, "no instances"),
    (b"", JSON, None, 400, "invalid JSON"),
    (b"", JSONLINES, None, 400, "no instances"),
    (b'{"instances": [{"in0": [3]}, {"in0": [2.0]}]}', JSON, None, 400, "instance 1: 'in0' holds 2.0"),
    (b'{"instances": [{"in0": [3, "x"]}]}', JSON, None, 400, "instance 0: 'in0' holds 'x'"),
    (b'{"instances": [{"in0": [1], "in1": [2, -1]}]}', JSON, None, 400, "instance 0: 'in1' token ID -1"),
    (
        b'{"instances": [{"in0": [123456789012345678901234567890]}]}',
        JSON,
        None,
        400,
        "not an integer token ID",
    ),
    (
        b'{"instances": [{"in0": [1100]}]}',
        JSON,
        None,
        400,
        "instance 0: 'in0' token ID 1100 is outside [0, 1100)",
    ),
    (b'{"in1": [3]}\n{"in1": []}\n', JSONLINES, None, 400, "instance 1 (line 2): 'in1' is empty"),
    (b'{"instances": [{"in0": [1], "in1": [2]}, {"in1": [3]}]}', JSON, None, 400, "instance 0 has both"),
    (
        b'{"instances": [{"in0": [1]}]}',
        "application/json; infer_max_seqlens=0,10",
        None,
        400,
        "infer_max_seqlens",
    ),
    (b'{"instances": [{"in0": [1]}]}', "application/json; infer_max_seqlens=10,5001", None, 400, "[1, 5000]"),
    (
        b'{"instances": [{"in0": [1]}]}',
        "application/json; infer_max_seqlens=ten",
        None,
        400,
        "infer_max_seqlens",
    ),
    (b'{"instances": [{"in0": [1]}]}', JSON, "text/csv", 406, "Accept 'text/csv' is not supported"),
    (b'{"instances": [{"in0": [1]}]}', "text/csv", None, 415, "Content-Type 'text/csv' is not supported"),
    (b'{"instances": [{"in0": [1]}]}' + b" " * 60_000, JSON, None, 413, "payload limit of 0.05 MB"),
    # the headers are judged before the body
    (b'{"instances": [{"in0": [1]}]}' + b" " * 60_000, "text/csv", None, 415, "Content-Type 'text/csv'"),
]


@pytest.mark.parametrize(
    "body, content_type, accept, status, text",
    BAD_REQUESTS,
    ids=[f"{case[3]}-{case[4][:30]}" for case in BAD_REQUESTS],
)
def test_client_mistakes_get_4xx_json_errors(client, body, content_type, accept, status, text):
    response = client.post(body, content_type, accept, path="/endpoints/my-endpoint/invocations")
    assert response.status_code == status
    assert response.headers["content-type"].startswith(JSON)
    assert text in orjson.loads(response.content)["error"]


def test_payload_limit_defaults_to_6_mb(model, loop, way):
    client = Client(create_app(model.predictor, ServeSettings("unused")), loop, way)

    def body(megabytes: float) -> bytes:  # one long sequence (cut to enc0_max_seq_len by the model)
        return b'{"instances": [{"in0": [' + b"7, " * int(megabytes * 1024 * 1024 / 3) + b"7]}]}"

    assert client.post(body(5.9)).status_code == 200
    too_large = client.post(body(6.1))
    assert too_large.status_code == 413 and "6 MB" in too_large.json()["error"]


def test_a_configured_default_accept_answers_requests_without_accept(model, loop, way):
    """SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT decides for a missing or wildcard Accept only."""
    platform = Platform.read({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": JSON})
    client = Client(create_app(model.predictor, serve_settings("unused", platform=platform)), loop, way)
    lines = as_jsonlines(SCORES_EXAMPLE)
    for accept in (None, "*/*"):
        assert len(results(client.post(lines, JSONLINES, accept), JSON)) == 2
    assert len(results(client.post(lines, JSONLINES, JSONLINES), JSONLINES)) == 2


def mini_batch(megabytes: float) -> bytes:
    """A batch transform's MultiRecord mini-batch: JSON Lines pairs of about 1 KB each (the
    model cuts in0 to its enc0_max_seq_len)."""
    line = orjson.dumps({"in0": [7] * 330, "in1": [16, 21, 13]}) + b"\n"
    return line * int(megabytes * 1024 * 1024 / len(line))


def test_the_platform_payload_limit_admits_a_10_mb_mini_batch(model, loop, way):
    """A transform job with max_payload=20 (SAGEMAKER_MAX_PAYLOAD_IN_MB=20) sends mini-batches
    of up to 20 MB; the default limit (6 MB) refuses one of 10 MB."""
    body = mini_batch(10)
    assert len(body) > 10 * 1000 * 1000
    platform = Platform.read({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "20"})
    client = Client(create_app(model.predictor, serve_settings("unused", platform=platform)), loop, way)
    answers = results(client.post(body, JSONLINES, None), JSONLINES)
    assert len(answers) == body.count(b"\n") and all(len(a["scores"]) == 3 for a in answers)
    assert client.get("/execution-parameters").json()["MaxPayloadInMB"] == 20
    default = Client(create_app(model.predictor, serve_settings("unused", platform=Platform())), loop)
    assert default.post(body, JSONLINES, None).status_code == 413


def test_execution_parameters_say_what_the_server_does(model, loop, monkeypatch):
    monkeypatch.setattr(settings_module, "cpu_cores", lambda: 8)
    platform = Platform.read(
        {
            "SAGEMAKER_BATCH": "true",
            "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3",
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": "0",
        }
    )
    client = Client(create_app(model.predictor, serve_settings("unused", platform=platform)), loop)
    assert client.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 100,
    }


def test_routes_and_unknown_paths(client):
    assert client.get("/ping").status_code == 200
    assert client.get("/execution-parameters").json() == {
        "MaxConcurrentTransforms": 1,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 1,
    }
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = client.get("/invocations")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert wrong_method.headers["allow"] == "POST"
    head = client.loop.run_until_complete(client.http.head("/ping"))
    assert head.status_code == 200 and head.headers["content-type"] == "application/json"
    for path in ("/endpoints//invocations", "/endpoints/a/b/invocations", "/ping/"):
        assert client.post({"instances": [{"in0": [1]}]}, path=path).status_code == 404


def test_the_first_of_a_repeated_header_counts(model, loop):
    """As with the framework the server used before: a CSV type first is refused, whatever follows."""
    app = create_app(model.predictor, ServeSettings("unused"))
    body = orjson.dumps({"instances": [{"in0": [1, 2]}]})
    headers = [(b"content-type", b"text/csv"), (b"content-type", b"application/json")]
    status, _ = loop.run_until_complete(call_asgi(app, "POST", "/invocations", headers, [body]))
    assert status == 415
    scope = {"type": "http", "method": "POST", "path": "/invocations", "headers": headers}
    replies = []
    app.direct_handler(scope)(HttpRequest(scope, None, body), replies.append)  # a client mistake: at once
    assert [answer.status for answer in replies] == [415]


def test_headers_are_found_whatever_the_case_of_their_names():
    """ASGI servers give lower-case names (uvicorn does); another server's capitals still match."""
    headers = [(b"Content-Type", b"application/jsonlines"), (b"accept", b"application/json")]
    request = HttpRequest({"headers": headers}, None)
    assert request.header("content-type") == "application/jsonlines"
    assert request.header("accept") == "application/json" and request.header("x-missing") is None


def test_a_client_that_leaves_during_its_upload_gets_no_answer_and_logs_no_error(model, loop, caplog):
    app = create_app(model.predictor, ServeSettings("unused"))
    headers = [(b"content-type", b"application/json")]
    status, sent = loop.run_until_complete(
        call_asgi(app, "POST", "/invocations", headers, [b'{"instances": [{"in0"'], disconnect=True)
    )
    assert status is None and sent == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert app.state.batcher.arriving == 0  # no request left counted as on its way


async def call_asgi(app, method, path, headers, chunks, disconnect=False):
    """Drive the ASGI app directly: ``chunks`` as the body's messages (then a disconnect if asked);
    returns the response status (None if none was sent) and every message sent."""
    messages = [
        {"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b""}
    await app(scope, receive, send)
    start = [m for m in sent if m["type"] == "http.response.start"]
    return (start[0]["status"] if start else None), sent


def test_execution_parameters_report_the_workers_and_the_payload_limit(model, loop):
    settings = ServeSettings("unused", workers=2, max_payload_mb=6)
    answer = Client(create_app(model.predictor, settings), loop).get("/execution-parameters")
    assert answer.status_code == 200
    assert answer.json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }


def post_chunked(client: Client, pieces: list[bytes]) -> httpx.Response:
    """POST a body sent as chunks of unknown total length (``Transfer-Encoding: chunked``, no
    ``Content-Length``), so the server learns its size only while reading it."""

    async def body():
        for piece in pieces:
            yield piece

    response = client.loop.run_until_complete(
        client.http.post("/invocations", content=body(), headers={"content-type": JSON})
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    return response


def test_a_chunked_body_is_read_and_one_over_the_limit_is_413(client, model):
    small = post_chunked(client, [b'{"instances": [{"in0": ', b"[1, 2]}]}"])
    assert small.status_code == 200
    np.testing.assert_array_equal(
        np.float32(small.json()["predictions"][0]["embeddings"]), model.embed(in0=[[1, 2]])[0]
    )
    # the client's limit is 0.05 MB (52,428 bytes): 60,000 bytes in 6 chunks, no length declared
    too_large = post_chunked(client, [b'{"instances": [{"in0": [1]}]}'] + [b" " * 10_000] * 6)
    assert too_large.status_code == 413
    assert "payload limit of 0.05 MB" in too_large.json()["error"]
    assert client.get("/ping").status_code == 200


def test_concurrent_small_requests_share_forward_passes(model, loop, way, monkeypatch):
    passes = []
    answer = model.predictor.answer

    def counting_answer(batch, **kwargs):
        passes.append(sum(part.size for part in batch))
        return answer(batch, **kwargs)

    monkeypatch.setattr(model.predictor, "answer", counting_answer)
    client = Client(create_app(model.predictor, ServeSettings("unused", batch_wait_ms=50)), loop, way)
    bodies = [{"instances": [{"in0": [i + 1], "in1": [i + 2]}]} for i in range(16)]
    responses = client.post_all(bodies)
    assert sum(passes) == 16 and len(passes) < 16  # gathered, not one pass per request
    for i, response in enumerate(responses):  # and each request got its own answer
        np.testing.assert_allclose(
            np.float32(response.json()["predictions"][0]["scores"]),
            model.predict([[i + 1]], [[i + 2]])[0],
            rtol=1e-6,
        )


def test_an_internal_failure_is_a_500_for_that_request_only(model, loop, way, monkeypatch):
    calls = []
    answer = model.predictor.answer

    def failing_once(batch, **kwargs):
        calls.append(len(batch))
        return 1 / 0 if len(calls) == 1 else answer(batch, **kwargs)

    monkeypatch.setattr(model.predictor, "answer", failing_once)
    client = Client(create_app(model.predictor, ServeSettings("unused")), loop, way)
    failed = client.post(EMBEDDING_EXAMPLE)
    assert failed.status_code == 500 and failed.json() == {"error": "internal error: ZeroDivisionError"}
    assert client.post(EMBEDDING_EXAMPLE).status_code == 200 and len(calls) == 2


# --- fuzzing: every malformed body is a 4xx with a JSON error --------------------------------

int64 = st.integers(-(2**63), 2**63 - 1)
json_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
bad_sequences = st.one_of(
    st.just([]),
    st.lists(st.integers(-(2**63), -1), min_size=1, max_size=3),
    st.lists(st.integers(VOCAB, 2**63 - 1), min_size=1, max_size=3),
    st.lists(st.floats() | st.text(max_size=3) | st.booleans() | st.none(), min_size=1, max_size=3),
    int64,
    st.text(max_size=5),
    st.dictionaries(st.text(max_size=3), int64, max_size=2),
)
good_sequences = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=4)
bad_instances = st.one_of(
    st.fixed_dictionaries({"in0": bad_sequences}),
    st.fixed_dictionaries({"in0": good_sequences, "in1": bad_sequences}),
    st.dictionaries(st.sampled_from(["label", "x", "in2"]), json_values, max_size=2),
    int64 | st.text(max_size=4) | st.lists(int64, max_size=3),
)
instance_lists = st.builds(
    lambda good, bad, at: good[:at] + [bad] + good[at:],
    st.lists(st.fixed_dictionaries({"in0": good_sequences}), max_size=3),
    bad_instances,
    st.integers(0, 3),
)
malformed_bodies = st.one_of(
    # random bytes; hypothesis may splice earlier valid bodies into them, so keep only those that cannot
    # name an input (a body without in0/in1 is never valid)
    st.binary(max_size=64).filter(lambda body: b"in0" not in body and b"in1" not in body),
    json_values.filter(lambda v: not (isinstance(v, dict) and "instances" in v)).map(orjson.dumps),
    instance_lists.map(lambda instances: orjson.dumps({"instances": instances})),
    st.lists(
        st.fixed_dictionaries({"in0": good_sequences, "in1": good_sequences}), min_size=1, max_size=3
    ).map(lambda pairs: orjson.dumps({"instances": pairs + [{"in1": [1]}]})),  # mixed modes
    st.just(orjson.dumps({"instances": [{"in0": [1]}]}) + b" " * 60_000),
)  # over the limit
headers = st.one_of(
    st.tuples(
        st.sampled_from([JSON, f"{JSON}; charset=utf-8", None]), st.sampled_from([None, JSON, JSONLINES])
    ),
    st.tuples(
        st.sampled_from(
            [
                "text/csv",
                "application/json; infer_max_seqlens=0,0",
                "application/octet-stream",
                "application/json; infer_max_seqlens=3",
            ]
        ),
        st.just(None),
    ),
    st.tuples(st.just(JSON), st.sampled_from(["text/csv", "image/png", "application/json;q=0"])),
)


def test_fuzz_malformed_bodies_get_4xx_and_the_server_stays_up(client):
    sent = []

    @settings(
        max_examples=1200,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples every run: a failure here reproduces
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(body=malformed_bodies, header=headers)
    def send(body, header):
        response = client.post(body, *header)
        sent.append(response.status_code)
        assert 400 <= response.status_code < 500, (body, header, response.text)
        assert isinstance(orjson.loads(response.content)["error"], str)

    send()
    assert len(sent) >= 1000
    assert client.get("/ping").status_code == 200
    assert client.post(EMBEDDING_EXAMPLE).status_code == 200


# --- device placement ---------------------------------------------------------------------------


def test_preferred_mode_placement(model):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert placement(cpu, "embedding") == (cpu, cpu) and placement(cpu, "classification") == (cpu, cpu)
    assert placement(gpu, "embedding") == (gpu, cpu)  # only the encoders take GPU memory
    assert placement(gpu, "classification") == (gpu, gpu) and placement(gpu, None) == (gpu, gpu)
    with pytest.raises(ValueError, match="INFERENCE_PREFERRED_MODE"):
        Predictor(model.predictor.hp, model.predictor.net, preferred_mode="both")


def test_split_scoring_path_matches_the_network(model):
    predictor = model.predictor
    in0, in1 = [[6, 17, 606], [774, 14]], [[16, 21], [21, 366, 125]]
    with torch.inference_mode():
        ids0 = torch.tensor([[6, 17, 606], [774, 14, 0]])
        ids1 = torch.tensor([[16, 21, 0], [21, 366, 125]])
        expected = predictor.net.scores(ids0, torch.tensor([3, 2]), ids1, torch.tensor([2, 3])).numpy()
    np.testing.assert_allclose(predictor.predict(in0, in1), expected, rtol=1e-6, atol=1e-7)


def test_inference_preferred_mode_is_read_from_the_environment(model, tmp_path, monkeypatch):
    """SageMaker passes INFERENCE_PREFERRED_MODE in the container's environment: the predictor
    reads and checks it (an explicit argument wins); on a CPU every part stays on the CPU."""
    hp, net, cpu = model.predictor.hp, model.predictor.net, torch.device("cpu")
    monkeypatch.delenv("INFERENCE_PREFERRED_MODE", raising=False)
    assert Predictor(hp, net, device="cpu").preferred_mode is None
    for mode in PREFERRED_MODES:
        monkeypatch.setenv("INFERENCE_PREFERRED_MODE", mode)
        predictor = Predictor(hp, net, device="cpu")
        assert predictor.preferred_mode == mode
        assert (predictor.encoder_device, predictor.head_device) == (cpu, cpu)
    other = "classification" if mode == "embedding" else "embedding"
    assert Predictor(hp, net, device="cpu", preferred_mode=other).preferred_mode == other
    model_dir = model.save(tmp_path / "m")
    assert object2vec.load(model_dir, device="cpu").predictor.preferred_mode == mode
    monkeypatch.setenv("INFERENCE_PREFERRED_MODE", "both")
    with pytest.raises(ValueError, match="INFERENCE_PREFERRED_MODE='both'"):
        Predictor(hp, net, device="cpu")
    with pytest.raises(ValueError, match="INFERENCE_PREFERRED_MODE"):
        object2vec.load(model_dir, device="cpu")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_hands_the_environment_mode_to_every_worker(model, tmp_path, monkeypatch, workers):
    """``object2vec serve`` (one process, or each of N workers, which rebuild their settings
    from the environment) serves with the INFERENCE_PREFERRED_MODE of its environment."""
    import uvicorn

    model_dir = model.save(tmp_path / "m")
    for key in ServeSettings("unused").to_env():  # serve() exports these for its workers: restored after
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(app=app, **options))
    monkeypatch.setattr(server, "inference_threads", lambda *args: 1)  # leave this process's threads alone
    monkeypatch.setenv("INFERENCE_PREFERRED_MODE", "embedding")
    server.serve(model_dir, port=0, workers=workers)
    app = started["app"] if workers == 1 else server.app_from_env()
    assert app.state.predictor.preferred_mode == "embedding"
    assert app.state.settings.preferred_mode == "embedding"
    assert started["port"] == 0 and (workers == 1 or os.environ["OBJECT2VEC_SERVE_WORKERS"] == "2")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("via", ["argument", "environment"])
@pytest.mark.parametrize("mode", ["embedding", "classification"])
def test_preferred_mode_on_a_gpu(model, tmp_path, mode, via, monkeypatch):
    model.save(tmp_path / "m")
    if via == "environment":
        monkeypatch.setenv("INFERENCE_PREFERRED_MODE", mode)
    gpu_model = object2vec.load(
        tmp_path / "m", device="cuda", preferred_mode=mode if via == "argument" else None
    )
    net = gpu_model.predictor.net
    assert next(net.encoders.parameters()).is_cuda
    assert next(net.head.parameters()).is_cuda == (mode == "classification")
    in0, in1 = [[6, 17, 606], [774, 14]], [[16, 21], [21, 366, 125]]
    np.testing.assert_allclose(gpu_model.predict(in0, in1), model.predict(in0, in1), atol=1e-5)
    np.testing.assert_allclose(gpu_model.embed(in1=in1), model.embed(in1=in1), atol=1e-5)


# --- a real server process, called with boto3 ------------------------------------------------


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    """``object2vec serve`` in its own process, with two workers, on a loopback port it picks
    itself (``--port 0``) and reports."""
    model_dir = model.save(tmp_path_factory.mktemp("served") / "model")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "object2vec",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            "0",
            "--workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = wait_until_listening(process)
    deadline = time.monotonic() + 60
    while True:  # the address is bound before the workers have loaded the model
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("object2vec serve did not answer /ping")
        time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_boto3_invoke_endpoint_against_object2vec_serve(served, model, monkeypatch):
    import boto3
    from botocore.exceptions import ClientError

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    runtime = boto3.client("sagemaker-runtime", endpoint_url=served)
    answer = runtime.invoke_endpoint(
        EndpointName="object2vec-test",
        Body=orjson.dumps(EMBEDDING_EXAMPLE),
        ContentType="application/json; infer_max_seqlens=3,3",
        Accept=JSONLINES,
    )
    assert answer["ContentType"] == JSONLINES
    vectors = [orjson.loads(line)["embeddings"] for line in answer["Body"].read().splitlines()]
    expected = model.embed(in0=[i["in0"][:3] for i in EMBEDDING_EXAMPLE["instances"]])
    np.testing.assert_array_equal(np.array(vectors, dtype=np.float32), expected)

    answer = runtime.invoke_endpoint(
        EndpointName="object2vec-test", Body=as_jsonlines(SCORES_EXAMPLE), ContentType=JSONLINES, Accept=JSON
    )
    scores = np.array(
        [p["scores"] for p in orjson.loads(answer["Body"].read())["predictions"]], dtype=np.float32
    )
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)

    # Without Accept (as batch transform sends) or with */*: the request's own type.
    for accept in ({}, {"Accept": "*/*"}):
        answer = runtime.invoke_endpoint(
            EndpointName="object2vec-test", Body=as_jsonlines(SCORES_EXAMPLE), ContentType=JSONLINES, **accept
        )
        assert answer["ContentType"] == JSONLINES
        lines = [orjson.loads(line) for line in answer["Body"].read().splitlines()]
        assert [len(line["scores"]) for line in lines] == [3, 3]
        answer = runtime.invoke_endpoint(
            EndpointName="object2vec-test", Body=orjson.dumps(EMBEDDING_EXAMPLE), ContentType=JSON, **accept
        )
        assert answer["ContentType"] == JSON
        assert len(orjson.loads(answer["Body"].read())["predictions"]) == 3

    with pytest.raises(ClientError) as info:
        runtime.invoke_endpoint(
            EndpointName="object2vec-test", Body=b'{"instances": [{"in0": [-3]}]}', ContentType=JSON
        )
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert httpx.get(f"{served}/ping").status_code == 200


def test_the_real_server_embeds_in1_through_enc1_capped_and_reports_its_workers(served, model):
    sequences = [[16, 21, 13, 40], [21, 366, 125]]
    answer = httpx.post(
        f"{served}/invocations",
        content=orjson.dumps({"instances": [{"in1": s} for s in sequences]}),
        headers={"content-type": f"{JSON}; infer_max_seqlens=5,2"},
    )
    assert answer.status_code == 200, answer.text
    vectors = np.float32([p["embeddings"] for p in answer.json()["predictions"]])
    np.testing.assert_allclose(
        vectors, direct_embeddings(model.net, 1, sequences, cap=2), rtol=1e-5, atol=1e-6
    )
    assert httpx.get(f"{served}/execution-parameters").json() == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }


def test_serve_refuses_a_missing_model_before_listening(tmp_path, monkeypatch, capsys):
    from object2vec import cli
    from object2vec.serving.settings import default_model_dir

    assert cli.main(["serve", "--model-dir", str(tmp_path), "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert "not a model directory" in err and "listening on" not in out
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "sm"))
    assert default_model_dir() == str(tmp_path / "sm")
    monkeypatch.delenv("SM_MODEL_DIR")
    assert default_model_dir() == "/opt/ml/model"
