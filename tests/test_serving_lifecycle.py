"""Serving under stress and shutdown: a full queue answers 503, SIGTERM answers every request already
received and exits 0, and a crashed worker of ``--workers N`` is replaced while the others serve."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from object2vec import artifact
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet
from object2vec.serving.predictor import Predictor
from object2vec.serving.server import create_app
from object2vec.serving.settings import ServeSettings

VOCAB = 500


def random_model(directory: Path, encoder: str = "pooled_embedding", dim: int = 8) -> Path:
    """A model with random weights (what it answers does not matter here, only when)."""
    hp = parse_hyperparameters(
        {
            "enc0_network": encoder,
            "enc1_network": "enc0",
            "enc0_vocab_size": str(VOCAB),
            "enc1_vocab_size": str(VOCAB),
            "enc0_max_seq_len": "32",
            "enc1_max_seq_len": "32",
            "enc0_token_embedding_dim": str(dim),
            "enc1_token_embedding_dim": str(dim),
            "enc_dim": str(dim),
            "mlp_dim": "8",
            "num_classes": "3",
        }
    )
    return artifact.save(directory, hp, Object2VecNet(hp).eval())


def embed_body(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return orjson.dumps({"instances": [{"in0": rng.integers(0, VOCAB, size=32).tolist()} for _ in range(n)]})


def test_a_request_queued_past_the_limit_gets_503(tmp_path, monkeypatch):
    predictor = Predictor.load(random_model(tmp_path / "m"), device="cpu")
    answer = predictor.answer

    def slow_answer(batch, **kwargs):
        time.sleep(0.4)  # a long pass: the next request waits in the queue meanwhile
        return answer(batch, **kwargs)

    monkeypatch.setattr(predictor, "answer", slow_answer)
    # the queue limit is for passes on the inference thread (the loop keeps reading, and queueing,
    # the next request meanwhile); a pooled model's small passes would run on the loop itself
    monkeypatch.setattr(predictor, "cheap_pass", lambda batch: False)
    app = create_app(predictor, ServeSettings("unused", max_queue_ms=100))

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            first = asyncio.create_task(client.post("/invocations", content=embed_body(2)))
            await asyncio.sleep(0.05)  # the first pass has started
            second = await client.post("/invocations", content=embed_body(3))
            return [await first, second]

    first, second = asyncio.run(send())
    assert first.status_code == 200 and len(first.json()["predictions"]) == 2
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "busy" in second.json()["error"]


def test_a_request_cancelled_while_queued_leaves_no_error_behind():
    """A request cancelled while it waits in the queue (as at the graceful shutdown's timeout)
    cancels what it awaited: when the queue limit passes, its timer must not raise into the event
    loop, no pass runs it, and the requests that stayed are answered or refused as usual."""
    from types import SimpleNamespace

    from object2vec.serving.server import MicroBatcher, Overloaded

    passes = []

    def slow_run(batch):
        passes.append(len(batch))
        time.sleep(0.3)  # a long pass: the later requests wait in the queue meanwhile
        return [np.zeros((job.size, 2), np.float32) for job in batch]

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        errors: list = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        batcher = MicroBatcher(slow_run, max_wait_s=0.0, max_queue_s=0.1)
        first = asyncio.create_task(batcher.submit(SimpleNamespace(size=1)))
        await asyncio.sleep(0.05)  # the first pass has started
        gone = asyncio.create_task(batcher.submit(SimpleNamespace(size=1)))
        stays = asyncio.create_task(batcher.submit(SimpleNamespace(size=1)))
        await asyncio.sleep(0.02)
        gone.cancel()
        answer = await first
        with pytest.raises(Overloaded):
            await stays  # waited past the limit while the pass ran
        await asyncio.sleep(0.2)  # every timer has fired by now
        assert gone.cancelled() and answer.shape == (1, 2)
        return errors

    assert asyncio.run(scenario()) == []
    assert passes == [1]  # the cancelled request was never run


def test_requests_queued_within_the_limit_are_answered_and_leave_no_timer():
    """Jobs queued behind a pass on the thread that ends before their limit are run by the next
    pass; the limit's timer ends with the pass that armed it (none is left to fire later)."""
    from types import SimpleNamespace

    from object2vec.serving.server import MicroBatcher

    passes = []

    def run(batch):
        passes.append(len(batch))
        time.sleep(0.1)
        return [np.full((job.size, 1), len(passes), np.float32) for job in batch]

    async def scenario() -> tuple:
        batcher = MicroBatcher(run, max_instances=1, max_wait_s=0.0, max_queue_s=0.5)
        first = asyncio.create_task(batcher.submit(SimpleNamespace(size=1)))
        await asyncio.sleep(0.03)  # the first pass runs on the thread
        later = [asyncio.create_task(batcher.submit(SimpleNamespace(size=1))) for _ in range(2)]
        answers = [await first] + [await task for task in later]
        return [a[0, 0] for a in answers], batcher._expiry

    answers, timer = asyncio.run(scenario())
    assert answers == [1.0, 2.0, 3.0] and passes == [1, 1, 1] and timer is None


def serve(model_dir: Path, port: int, *options: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "object2vec",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"object2vec serve did not start: {process.stdout.read().decode()}")
        time.sleep(0.1)


def post(port: int, body: bytes) -> socket.socket:
    """Send one request on a new connection; the answer is read later with :func:`answer`."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    return sock


def answer(sock: socket.socket) -> tuple[int, bytes, float]:
    """Status, body and arrival time of the answer on ``sock`` (the server closes after it)."""
    sock.settimeout(120)
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ]
        if length and len(body) >= length[0]:
            break
    arrived = time.monotonic()
    sock.close()
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2], arrived


@pytest.mark.slow
def test_sigterm_answers_every_received_request_then_exits_0(tmp_path, free_port):
    # bilstm on long sequences: each request is a pass of a good fraction of a second, so most of them
    # are still queued when the signal comes
    model_dir = random_model(tmp_path / "m", "bilstm", dim=64)
    port = free_port()
    process = serve(model_dir, port, "--threads", "1")
    sizes = [300 + 10 * i for i in range(8)]
    sockets = [post(port, embed_body(n, seed=n)) for n in sizes]
    time.sleep(0.5)  # every request has reached the server
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    answers = [answer(sock) for sock in sockets]
    assert process.wait(timeout=120) == 0, process.stdout.read().decode()
    for n, (status, body, _) in zip(sizes, answers):
        assert status == 200, body
        assert len(orjson.loads(body)["predictions"]) == n
    assert sum(arrived > signalled for _, _, arrived in answers) >= 4  # answered during shutdown
    with pytest.raises(ConnectionRefusedError):  # and nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def children(pid: int) -> set[int]:
    """uvicorn's worker processes (multiprocessing spawn children) of ``pid``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid and b"spawn_main" in command:
            found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_crashed_worker_is_replaced_while_the_others_serve(tmp_path, free_port):
    port = free_port()
    process = serve(random_model(tmp_path / "m"), port, "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        while len(workers := children(process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        for _ in range(20):  # the surviving worker answers meanwhile
            assert (
                httpx.post(f"http://127.0.0.1:{port}/invocations", content=embed_body(1)).status_code == 200
            )
        deadline = time.monotonic() + 60
        while (len(children(process.pid) - {victim}) < 2) and time.monotonic() < deadline:
            time.sleep(0.2)
        replacement = children(process.pid) - workers
        assert len(replacement) == 1 and victim not in children(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
