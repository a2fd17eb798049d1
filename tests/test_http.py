"""The service's HTTP/1.1 connections (uvicorn's handling, answers written by
``object2vec.serving.http.DirectProtocol``) over real sockets, and which thread runs a pass."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httptools
import httpx
import numpy as np
import orjson
import pytest

from object2vec import artifact
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet
from object2vec.serving import http, server
from object2vec.serving import predictor as predictor_module
from object2vec.serving.predictor import Predictor
from object2vec.serving.server import create_app
from object2vec.serving.settings import ServeSettings

VOCAB, DIM = 300, 8


def random_model(directory: Path, encoder: str = "pooled_embedding", **settings: str) -> Path:
    hp = parse_hyperparameters(
        {
            "enc0_network": encoder,
            "enc0_vocab_size": str(VOCAB),
            "enc1_vocab_size": str(VOCAB),
            "enc0_max_seq_len": "10",
            "enc1_max_seq_len": "10",
            "enc0_token_embedding_dim": str(DIM),
            "enc1_token_embedding_dim": str(DIM),
            "enc_dim": str(DIM),
            "mlp_dim": "16",
            "num_classes": "3",
            **settings,
        }
    )
    return artifact.save(directory, hp, Object2VecNet(hp).eval())


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.load(random_model(tmp_path_factory.mktemp("model")), device="cpu")


@pytest.fixture(scope="module")
def address(predictor):
    """(host, port) of the service on a real socket, payload limit 0.05 MB."""
    app = create_app(predictor, ServeSettings("unused", max_payload_mb=0.05))
    with server.running(app) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def embed_body(n: int) -> bytes:
    rng = np.random.default_rng(n)
    return orjson.dumps({"instances": [{"in0": rng.integers(0, VOCAB, 6).tolist()} for _ in range(n)]})


def request(method: str, path: str, body: bytes = b"", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *headers]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Reader:
    """Reads responses off one connection: status, lower-case headers and body."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""
        sock.settimeout(10)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        self.buffer += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed before a response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed inside a body"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection (with nothing more sent)."""
        return not self._fill() and not self.buffer


def connect(address) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(address)
    return sock, Reader(sock)


def test_an_answer_has_its_status_line_headers_and_body(address):
    sock, reader = connect(address)
    with sock:
        sock.sendall(request("GET", "/ping"))
        status, headers, body = reader.response()
    assert status == 200 and body == b'{"status":"ok"}'
    assert headers["content-type"] == "application/json" and headers["content-length"] == "15"
    assert "date" in headers and headers["server"] == "uvicorn"  # uvicorn's default headers stay


def test_pipelined_requests_are_answered_in_order_on_one_connection(address):
    sock, reader = connect(address)
    with sock:
        sizes = [3, 1, 2]
        sock.sendall(
            b"".join(request("POST", "/invocations", embed_body(n)) for n in sizes) + request("GET", "/ping")
        )
        answers = [reader.response() for _ in sizes]
        assert [len(orjson.loads(body)["predictions"]) for _, _, body in answers] == sizes
        assert reader.response()[2] == b'{"status":"ok"}'
        sock.sendall(request("GET", "/ping"))  # kept alive
        assert reader.response()[0] == 200


def test_head_answers_the_headers_of_get_without_the_body(address):
    sock, reader = connect(address)
    with sock:
        sock.sendall(request("HEAD", "/ping") + request("GET", "/ping"))
        status, headers, _ = reader.response(head_only=True)
        assert status == 200 and headers["content-length"] == "15"
        assert reader.response()[2] == b'{"status":"ok"}'  # the next answer starts right after the head


@pytest.mark.parametrize(
    "raw",
    [request("GET", "/ping", b"", "Connection: close"), request("GET", "/ping", version="1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_the_connection_closes_after_the_answer_when_the_client_asks(address, raw):
    sock, reader = connect(address)
    with sock:
        sock.sendall(raw)
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


def test_errors_keep_their_status_headers_and_json_body(address):
    sock, reader = connect(address)
    with sock:
        sock.sendall(request("DELETE", "/ping") + request("POST", "/nowhere", b"{}"))
        status, headers, body = reader.response()
        assert status == 405 and headers["allow"] == "GET, HEAD" and orjson.loads(body)["error"]
        status, _, body = reader.response()
        assert status == 404 and orjson.loads(body) == {"error": "Not Found"}


def test_a_body_over_the_limit_is_413_before_it_is_sent_and_the_connection_serves_on(address):
    body = b"x" * 60_000  # over the 0.05 MB limit
    sock, reader = connect(address)
    with sock:
        head, _, _ = request("POST", "/invocations", body).partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")  # the headers only: the length alone is refused
        status, _, answer = reader.response()
        assert status == 413 and b"payload limit" in answer
        sock.sendall(body + request("GET", "/ping"))  # the refused body is skipped, then served on
        assert reader.response()[0] == 200


def test_a_body_taken_whole_empties_the_buffer_and_resumes_reading():
    """As uvicorn's receive does: a body over 64 KiB paused reading, which must not stay paused
    for the whole request (a client leaving meanwhile would go unnoticed)."""
    resumed = []
    cycle = SimpleNamespace(
        body=bytearray(b"x" * 70_000), flow=SimpleNamespace(resume_reading=lambda: resumed.append(1))
    )
    assert http.DirectProtocol._whole_body(cycle) == b"x" * 70_000
    assert cycle.body == bytearray() and resumed == [1]


def test_heads_joined_once_are_the_heads_written_whole():
    heads = http.ResponseHeads()
    defaults = [(b"date", b"Fri, 27 Nov 2026 03:00:00 GMT"), (b"server", b"uvicorn")]
    answers = [
        server.Answer(b'{"a":1}'),
        server.Answer(b"x" * 12345, "application/jsonlines"),
        server.Answer(b'{"error":"e"}', "application/json", 400),
        server.Answer(b"{}", "application/json", 503, [("retry-after", "1")]),
    ]
    for defaults_now in (
        defaults,
        [(b"date", b"Fri, 27 Nov 2026 03:00:01 GMT"), (b"server", b"uvicorn")],
        [],
    ):
        for answer in answers * 2:
            for keep_alive in (True, False):
                expected = http.response_head(answer, defaults_now, keep_alive)
                assert heads.head(answer, defaults_now, keep_alive) == expected


def test_a_body_all_there_is_answered_directly_and_one_still_arriving_is_read(address, monkeypatch):
    """A body that arrived with its headers goes to the route's direct handler (no task, no ASGI
    receive); a body still on its way when the read has been parsed is read from the connection
    by a task running the route's handler. Same answers."""
    ways, handed_over = [], []
    answer_directly, start_task = http.DirectProtocol._answer_directly, http.DirectProtocol._start_task
    read_body = server.read_body

    def directly(self, cycle, handler):
        ways.append("direct")
        answer_directly(self, cycle, handler)

    def by_task(self, cycle):
        ways.append("task")
        start_task(self, cycle)

    async def spying(request, limit):
        handed_over.append(request.body is not None)
        return await read_body(request, limit)

    monkeypatch.setattr(http.DirectProtocol, "_answer_directly", directly)
    monkeypatch.setattr(http.DirectProtocol, "_start_task", by_task)
    monkeypatch.setattr(server, "read_body", spying)
    whole = request("POST", "/invocations", embed_body(40))
    sock, reader = connect(address)
    with sock:
        sock.sendall(whole)
        first = reader.response()
        sock.sendall(whole[: len(whole) - 100])
        time.sleep(0.2)  # the handler starts and waits for the rest
        sock.sendall(whole[len(whole) - 100 :])
        second = reader.response()
    assert ways == ["direct", "task"] and handed_over == [False]
    assert first[0] == 200 and first[2] == second[2]


def test_a_direct_handler_that_fails_is_a_500_and_the_connection_serves_on():
    """A direct handler answers its own failures; one that raises anyway (a bug) costs its
    request a 500, never the connection or the server."""

    async def unused(request):
        raise AssertionError("the whole body was there: the direct handler answers")

    def failing(request, reply):
        raise RuntimeError("a bug")

    def echo(request, reply):
        reply(server.Answer(request.body))

    routes = server.Routes()
    routes.add("/fail", "POST", unused, failing)
    routes.add("/echo", "POST", unused, echo)
    with server.running(server.App(routes)) as url:
        host, port = url.removeprefix("http://").split(":")
        sock, reader = connect((host, int(port)))
        with sock:
            sock.sendall(request("POST", "/fail", b"{}") + request("POST", "/echo", b'{"a":1}'))
            status, _, body = reader.response()
            assert status == 500 and orjson.loads(body) == {"error": "internal error"}
            assert reader.response()[2] == b'{"a":1}'


def slow_app(delay_s: float):
    """An App with ``POST /slow``, answered after ``delay_s``, ``GET /ping`` answered at once and
    ``POST /late-read``, whose handler waits before it reads its body (a task's route)."""

    def slow(request, reply):
        asyncio.get_running_loop().call_later(delay_s, reply, server.Answer(b'{"slow":1}'))

    def ping(request, reply):
        reply(server.Answer(b'{"status":"ok"}'))

    async def late_read(request):
        await asyncio.sleep(delay_s)
        body = b"".join([chunk async for chunk in request.chunks()])
        return server.Answer(orjson.dumps({"n": len(body)}))

    routes = server.Routes()
    routes.add("/slow", "POST", server.awaiting(slow), slow)
    routes.add("/ping", "GET", server.awaiting(ping), ping)
    routes.add("/late-read", "POST", late_read)
    return server.App(routes)


def test_a_request_that_came_with_the_one_before_it_is_not_idle_time():
    """The keep-alive timeout counts from an answer only while no request is under way: one that
    arrived in the same read as the request before it (answered at once) is."""
    with server.running(slow_app(1.5), timeout_keep_alive=1) as url:
        host, port = url.removeprefix("http://").split(":")
        sock, reader = connect((host, int(port)))
        with sock:
            sock.sendall(request("GET", "/ping") + request("POST", "/slow", b"{}"))
            assert reader.response()[0] == 200
            assert reader.response()[2] == b'{"slow":1}'  # after 1.5 s, past the 1 s timeout


def test_a_long_pipeline_answered_at_once_is_answered_whole():
    """Requests queued behind a slow one are started from the event loop one by one: answered
    inside each other's answers they would run out of stack."""
    with server.running(slow_app(0.2)) as url:
        host, port = url.removeprefix("http://").split(":")
        sock, reader = connect((host, int(port)))
        with sock:
            sock.sendall(request("POST", "/slow", b"{}") + request("GET", "/ping") * 1500)
            assert reader.response()[2] == b'{"slow":1}'
            assert all(reader.response()[2] == b'{"status":"ok"}' for _ in range(1500))


def test_a_handler_that_waits_before_reading_gets_the_body_that_came_meanwhile():
    with server.running(slow_app(0.3)) as url:
        host, port = url.removeprefix("http://").split(":")
        sock, reader = connect((host, int(port)))
        whole = request("POST", "/late-read", b"x" * 10)
        with sock:
            sock.sendall(whole[:-4])
            time.sleep(0.05)
            sock.sendall(whole[-4:])  # all there before the handler reads it
            assert reader.response()[2] == b'{"n":10}'


def test_a_direct_answer_waits_while_the_client_reads_slowly():
    """When the connection's send buffer is full (the client reads slowly), the answer goes out
    from a task once it drains, as an ASGI answer would, and the request is finished after it."""
    written, finished = [], []
    drained = asyncio.Event()

    async def drain():
        await drained.wait()

    async def scenario():
        protocol = http.DirectProtocol.__new__(http.DirectProtocol)
        protocol.loop, protocol.tasks = asyncio.get_running_loop(), set()
        protocol.heads = http.ResponseHeads()
        cycle = SimpleNamespace(
            scope={"method": "POST"}, access_log=False, response_started=False, disconnected=False,
            keep_alive=True, default_headers=[], message_event=asyncio.Event(),
            flow=SimpleNamespace(write_paused=True, drain=drain),
            transport=SimpleNamespace(write=written.append), on_response=lambda: finished.append(1),
        )  # fmt: skip
        protocol._reply(cycle, server.Answer(b'{"a":1}'))
        await asyncio.sleep(0.01)
        assert written == [] and len(protocol.tasks) == 1  # waiting for the client
        drained.set()
        await asyncio.gather(*protocol.tasks)
        assert written[0].endswith(b'\r\n\r\n{"a":1}') and finished == [1] and cycle.response_complete
        assert not protocol.tasks

    asyncio.run(scenario())


def test_an_idle_connection_closes_after_the_keep_alive_timeout_counted_from_its_last_answer(predictor):
    """As uvicorn's own timer: ``timeout_keep_alive`` seconds without a request after an answer
    close the connection; a request in between starts the count again."""
    app = create_app(predictor, ServeSettings("unused"))
    with server.running(app, timeout_keep_alive=1) as url:
        host, port = url.removeprefix("http://").split(":")
        sock, reader = connect((host, int(port)))
        with sock:
            for _ in range(3):  # 0.6 s apart: each answer moves the timeout on
                sock.sendall(request("GET", "/ping"))
                assert reader.response()[0] == 200
                time.sleep(0.6)
            started = time.monotonic()
            assert reader.closed()  # blocks until the server closes the connection
            assert 0.2 < time.monotonic() - started < 1.0  # about 1 s after the last answer


def test_an_exchange_has_every_attribute_of_uvicorns_cycle():
    """``Exchange`` stands in for uvicorn's ``RequestResponseCycle`` without calling its
    ``__init__``: an attribute a newer uvicorn adds there must be added here too."""
    protocol = SimpleNamespace(
        transport=None, flow=None, logger=None, access_logger=None, access_log=False,
        server_state=SimpleNamespace(default_headers=[]), on_response_complete=None,
    )  # fmt: skip
    protocol.exchange_start = (None, None, None, None, False, None)
    real = http.RequestResponseCycle(
        scope={}, transport=None, flow=None, logger=None, access_logger=None, access_log=False,
        default_headers=[], message_event=asyncio.Event(), expect_100_continue=False, keep_alive=True,
        on_response=None,
    )  # fmt: skip
    exchange = http.Exchange(protocol, {}, True, False)
    for name, value in vars(real).items():
        assert hasattr(exchange, name), name
        if name not in ("message_event", "scope", "default_headers", "body"):
            assert getattr(exchange, name) == value, name
    assert isinstance(exchange.message_event, asyncio.Event) and exchange.body == bytearray()


def test_a_targets_path_and_query_are_those_httptools_reads():
    rng = np.random.default_rng(0)
    pieces = [b"a", b"/", b"-", b".", b"~", b"_", b"Z", b"9", b"?", b"%", b"#", b";", b" ", b"\xff", b"\x01"]
    targets = [b"/invocations", b"/endpoints/e/invocations", b"/a?k=1", b"/a%20b", b"//x", b"/"]
    targets += [b"/" + b"".join(rng.choice(pieces, size=rng.integers(0, 10))) for _ in range(5000)]
    for target in targets:
        try:
            parsed = httptools.parse_url(target)
            expected = (parsed.path, parsed.query or b"")
        except httptools.HttpParserInvalidURLError:
            expected = None
        try:
            found = http._path_and_query(target)
        except httptools.HttpParserInvalidURLError:
            found = None
        assert found == expected, target


def test_routes_find_direct_handlers_by_path_pattern_and_method():
    async def handler(request):
        return server.Answer(b"")

    def direct(request, reply):
        pass

    routes = server.Routes()
    routes.add("/ping", "GET", handler, direct)
    routes.add("/plain", "POST", handler)
    routes.add("/endpoints/{name}/invocations", "POST", handler, direct)
    assert routes.find_direct("/ping", "GET") is direct and routes.find_direct("/ping", "HEAD") is direct
    assert routes.find_direct("/endpoints/e1/invocations", "POST") is direct
    assert routes.find_direct("/endpoints/e1/invocations", "GET") is None
    assert routes.find_direct("/plain", "POST") is None and routes.find("/plain") == {"POST": handler}
    assert routes.find_direct("/endpoints//invocations", "POST") is None and routes.find("/nowhere") is None


def test_expect_100_continue_gets_the_interim_answer_then_the_answer(address):
    body = embed_body(2)
    sock, reader = connect(address)
    with sock:
        head, _, _ = request("POST", "/invocations", body, "Expect: 100-continue").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert reader.response(head_only=True)[0] == 100
        sock.sendall(body)
        status, _, answer = reader.response()
    assert status == 200 and len(orjson.loads(answer)["predictions"]) == 2


def test_a_malformed_request_is_400_and_the_server_serves_on(address):
    sock, reader = connect(address)
    with sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert reader.response()[0] == 400
    sock, reader = connect(address)
    with sock:
        sock.sendall(request("GET", "/ping"))
        assert reader.response()[0] == 200


def test_a_large_answer_arrives_whole_and_equals_the_in_process_one(predictor):
    """An answer over ``JOIN_LIMIT`` goes out as head and body buffers of one write."""
    app = create_app(predictor, ServeSettings("unused"))
    body = embed_body(1500)
    with server.running(app) as url:
        response = httpx.post(
            f"{url}/invocations", content=body, headers={"content-type": "application/json"}
        )
    assert len(response.content) > http.JOIN_LIMIT
    got = np.array([row["embeddings"] for row in response.json()["predictions"]], dtype=np.float32)
    instances = [item["in0"] for item in orjson.loads(body)["instances"]]
    np.testing.assert_array_equal(got, predictor.embed(in0=instances))


def test_the_access_log_names_method_path_version_and_status(predictor, monkeypatch):
    """As ``object2vec serve --access-log`` logs (uvicorn's format)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "handlers", [handler])
    monkeypatch.setattr(access, "level", access.level)  # restored after the test
    access.setLevel(logging.INFO)  # (which also clears logging's cache of enabled levels)
    app = create_app(predictor, ServeSettings("unused"))
    # logging left as this test set it: no log configuration, no level
    with server.running(app, access_log=True, log_config=None, log_level=None) as url:
        httpx.get(f"{url}/ping?probe=1")
    assert any('"GET /ping?probe=1 HTTP/1.1" 200' in record.getMessage() for record in records), records


def test_uvicorns_own_answers_stay_its_own(predictor):
    """Where uvicorn answers in place of the application (its concurrency limit), it still does."""
    with server.running(create_app(predictor, ServeSettings("unused")), limit_concurrency=1) as url:
        response = httpx.get(f"{url}/ping")
    assert response.status_code == 503 and response.text == "Service Unavailable"


def test_an_application_other_than_the_service_is_served_through_asgi():
    async def hello(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})

    assert http.served_app(hello) is None
    with server.running(hello) as url:
        response = httpx.get(url)
    assert response.status_code == 201 and response.text == "hello"


def test_the_service_is_found_inside_uvicorns_middleware_and_no_other(predictor):
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    app = create_app(predictor, ServeSettings("unused"))
    assert http.served_app(ProxyHeadersMiddleware(app)) is app

    class Refusing:  # a middleware of the user's: it must run
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    assert http.served_app(Refusing(app)) is None
    with server.running(Refusing(app)) as url:
        assert httpx.get(f"{url}/ping").status_code == 401


def test_the_direct_path_answers_the_service(predictor, monkeypatch):
    """uvicorn calls the overrides (a uvicorn that no longer called ``_start_asgi_task`` would skip
    them silently): a route with a direct handler is answered directly, any other by a task."""
    calls = []
    answer_directly, respond = http.DirectProtocol._answer_directly, http.DirectProtocol._respond

    def directly(self, cycle, handler):
        calls.append(("direct", cycle.scope["path"]))
        answer_directly(self, cycle, handler)

    async def by_task(self, cycle):
        calls.append(("task", cycle.scope["path"]))
        await respond(self, cycle)

    monkeypatch.setattr(http.DirectProtocol, "_answer_directly", directly)
    monkeypatch.setattr(http.DirectProtocol, "_respond", by_task)
    with server.running(create_app(predictor, ServeSettings("unused"))) as url:
        assert httpx.get(f"{url}/ping").status_code == 200
        assert httpx.get(f"{url}/nowhere").status_code == 404
    assert calls == [("direct", "/ping"), ("task", "/nowhere")]


def test_memory_bound_passes_are_not_cheap(predictor, tmp_path):
    long = orjson.dumps({"instances": [{"in0": [1] * 70_000}]})
    assert not predictor.cheap_pass([server.protocol.decode_request(long, *json_and_vocab())])
    wide = Predictor.load(random_model(tmp_path / "wide", mlp_dim="2048", mlp_layers="2"), device="cpu")
    pair = orjson.dumps({"instances": [{"in0": [1], "in1": [2]}]})
    parsed = server.protocol.decode_request(pair, *json_and_vocab())
    assert wide.pass_flop([parsed]) < 2e9 and not wide.cheap_pass([parsed])  # 4.3M head weights
    single = orjson.dumps({"instances": [{"in0": [1]}]})
    assert wide.cheap_pass([server.protocol.decode_request(single, *json_and_vocab())])


def passes_by_thread(predictor: Predictor, bodies: list[bytes], monkeypatch) -> list[str]:
    """The name of the thread each forward pass ran on, serving ``bodies`` one after another."""
    names: list[str] = []
    answer = predictor.answer

    def recording(batch, **kwargs):
        names.append(threading.current_thread().name)
        return answer(batch, **kwargs)

    monkeypatch.setattr(predictor, "answer", recording)
    app = create_app(predictor, ServeSettings("unused"))

    async def send() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            for body in bodies:
                response = await client.post("/invocations", content=body)
                assert response.status_code == 200

    asyncio.run(send())
    return names


def test_cheap_passes_run_on_the_event_loop_and_costly_ones_on_the_inference_thread(predictor, monkeypatch):
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop on this thread
    # 3 embeddings of 6 tokens: 3 x (6 x 8 + 2 x 8 x 8) = 528 FLOP
    assert predictor.pass_flop([server.protocol.decode_request(embed_body(3), *json_and_vocab())]) == 528
    assert passes_by_thread(predictor, [embed_body(3)], monkeypatch) == [loop_thread]
    monkeypatch.setattr(predictor_module, "CHEAP_PASS_FLOP", 527)
    assert passes_by_thread(predictor, [embed_body(3)], monkeypatch)[0].startswith("object2vec-inference")


def json_and_vocab():
    return server.protocol.parse_content_type("application/json"), (VOCAB, VOCAB)


def test_pairs_count_the_mlp_and_sequence_encoders_never_run_on_the_loop(predictor, tmp_path):
    pairs = orjson.dumps({"instances": [{"in0": [1, 2], "in1": [3]}, {"in0": [4], "in1": [5, 6, 7]}]})
    parsed = server.protocol.decode_request(pairs, *json_and_vocab())
    encoders = 7 * DIM + 4 * (2 * DIM * DIM)  # 7 tokens, 4 sequences projected
    # comparator (hadamard, concat, abs_diff: 4 x 8 = 32 wide) -> MLP 32x16, 16x16 -> head 16x3, per pair
    head = 2 * (32 * 16 + 16 * 16 + 16 * 3)
    assert predictor.pass_flop([parsed]) == encoders + 2 * head
    hcnn = Predictor.load(random_model(tmp_path / "hcnn", "hcnn"), device="cpu")
    assert not hcnn.cheap_pass([parsed]) and predictor.cheap_pass([parsed])
