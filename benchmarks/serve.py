"""Serving throughput and latency of ``object2vec serve`` over loopback HTTP.

For each encoder (``pooled_embedding``, and ``hcnn``/``bilstm`` when this version has them) a
model of a fixed size is written (random weights: speed does not depend on what was learned),
``object2vec serve`` is started on a free loopback port, and this script measures:

- embeddings/s and scores/s with requests of ``--batch`` (1,000) instances, one at a time;
- p50/p99 latency of single-instance requests at concurrency 1 and 16, requests/s, and the
  server process's CPU time per request (micro-batching lowers it under concurrency).

The client runs on the same machine, so on a small CPU it competes with the server: the
server's CPU time per request says what the server alone could sustain.

    python benchmarks/serve.py [--encoders pooled_embedding,hcnn,bilstm] [--threads 1] [--url http://127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from object2vec import artifact
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet
from object2vec.nn.encoders import ENCODERS

#: A mid-sized text model: 20k-token vocabularies, sequences of 5..32 tokens.
MODEL = {
    "enc0_vocab_size": "20000",
    "enc1_vocab_size": "20000",
    "enc0_max_seq_len": "32",
    "enc1_max_seq_len": "32",
    "enc0_token_embedding_dim": "256",
    "enc1_token_embedding_dim": "256",
    "enc_dim": "512",
    "mlp_layers": "2",
    "mlp_dim": "512",
    "num_classes": "3",
    "enc0_layers": "2",
    "enc1_layers": "2",
}
VOCAB, MIN_LEN, MAX_LEN = 20000, 5, 32


def write_model(encoder: str, root: Path) -> Path:
    hp = parse_hyperparameters({**MODEL, "enc0_network": encoder, "enc1_network": "enc0"})
    return artifact.save(root / encoder, hp, Object2VecNet(hp).eval())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, workers: int, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    options = ["--threads", str(threads)] if threads else []
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
            "--workers",
            str(workers),
            *options,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"object2vec serve --model-dir {model_dir} did not start")


def instances(rng: np.random.Generator, n: int, pairs: bool) -> list[dict]:
    def seq():
        return rng.integers(1, VOCAB, size=rng.integers(MIN_LEN, MAX_LEN + 1)).tolist()

    return [{"in0": seq(), "in1": seq()} if pairs else {"in0": seq()} for _ in range(n)]


class Connection:
    """One keep-alive HTTP/1.1 connection with a minimal client. The load generator shares the
    CPU with the server, so it must cost as little as possible (a general client such as httpx
    spends about a millisecond of CPU per request, which would be measured as server latency)."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def post(self, body: bytes) -> float:
        """Seconds from sending the request to having read the whole answer."""
        start = time.perf_counter()
        self.writer.write(
            b"POST /invocations HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (self.host.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        answer = await self.reader.readexactly(int(length.group(1)))
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{head.splitlines()[0].decode()}: {answer[:200].decode()}")
        return time.perf_counter() - start


async def batch_rate(url: str, bodies: list[bytes], per_request: int) -> float:
    """Instances per second, requests sent one after another."""
    async with Connection(url) as connection:
        await connection.post(bodies[0])  # warm-up
        start = time.perf_counter()
        for body in bodies:
            await connection.post(body)
        return len(bodies) * per_request / (time.perf_counter() - start)


async def latencies(url: str, bodies: list[bytes], concurrency: int) -> tuple[np.ndarray, float]:
    """Per-request seconds and requests/s with ``concurrency`` clients sending single instances,
    each on its own connection."""
    queue = list(reversed(bodies))
    times: list[float] = []

    async def client(ready: asyncio.Event) -> None:
        async with Connection(url) as connection:
            await connection.post(bodies[0])  # warm-up
            await ready.wait()
            while queue:
                times.append(await connection.post(queue.pop()))

    ready = asyncio.Event()
    clients = [asyncio.create_task(client(ready)) for _ in range(concurrency)]
    await asyncio.sleep(0.5)  # connections open and warm
    start = time.perf_counter()
    ready.set()
    await asyncio.gather(*clients)
    return np.array(times), len(bodies) / (time.perf_counter() - start)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a local process (Linux), to tell the server's cost per request
    from the client's on a machine they share; NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, TypeError, ValueError, IndexError):
        return float("nan")


def measure(
    url: str, batch: int, batch_requests: int, single_requests: int, seed: int, server_pid: int | None = None
) -> dict:
    rng = np.random.default_rng(seed)
    doc = lambda items: orjson.dumps({"instances": items})  # noqa: E731
    row = {
        "embeddings/s": asyncio.run(
            batch_rate(url, [doc(instances(rng, batch, False)) for _ in range(batch_requests)], batch)
        ),
        "scores/s": asyncio.run(
            batch_rate(url, [doc(instances(rng, batch, True)) for _ in range(batch_requests)], batch)
        ),
    }
    singles = [doc(instances(rng, 1, True)) for _ in range(single_requests)]
    for concurrency in (1, 16):
        cpu_before = cpu_seconds(server_pid)
        times, rate = asyncio.run(latencies(url, singles, concurrency))
        row[f"c{concurrency} server CPU ms/req"] = (
            1000 * (cpu_seconds(server_pid) - cpu_before) / len(singles)
        )
        row[f"c{concurrency} p50 ms"] = 1000 * float(np.percentile(times, 50))
        row[f"c{concurrency} p99 ms"] = 1000 * float(np.percentile(times, 99))
        row[f"c{concurrency} req/s"] = rate
    return row


def print_table(rows: dict[str, dict]) -> None:
    columns = list(next(iter(rows.values())))
    print("| encoder | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(
            f"| {name} | "
            + " | ".join(
                f"{row[c]:,.0f}" if row[c] >= 100 else f"{row[c]:.2g}" if row[c] < 1 else f"{row[c]:.1f}"
                for c in columns
            )
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sequence = [name for name in ("hcnn", "bilstm") if name in ENCODERS]
    parser.add_argument("--encoders", default=",".join(["pooled_embedding"] + sequence))
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per server worker")
    parser.add_argument("--batch", type=int, default=1000, help="instances per batch request")
    parser.add_argument("--batch-requests", type=int, default=20)
    parser.add_argument("--single-requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; model: {MODEL}; sequences of {MIN_LEN}..{MAX_LEN} tokens")
    rows = {}
    if args.url:
        rows[args.url] = measure(args.url, args.batch, args.batch_requests, args.single_requests, args.seed)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for encoder in args.encoders.split(","):
                process, url = start_server(write_model(encoder, Path(tmp)), args.workers, args.threads)
                try:
                    rows[encoder] = measure(
                        url,
                        args.batch,
                        args.batch_requests,
                        args.single_requests,
                        args.seed,
                        process.pid if args.workers == 1 else None,
                    )
                finally:
                    process.terminate()
                    process.wait()
                print(encoder, {k: round(v, 1) for k, v in rows[encoder].items()}, flush=True)
    print_table(rows)


if __name__ == "__main__":
    main()
