"""A bounded loopback soak of ``object2vec serve``: a long mixed load, then fuzzed bodies.

1. ``--requests`` (1,000,000) requests on ``--connections`` (16) keep-alive connections, drawn from
   a pool of single-pair scoring requests, single-input embedding requests, ``--batch`` (1,000)
   instance embedding requests (``--batch-share``, 0.2%) and malformed bodies
   (``--malformed-share``, 1%);
2. ``--fuzz`` (10,000) fuzzed bodies, each malformed by construction (cut JSON, wrong types,
   out-of-range or non-integer token IDs, empty sequences, mixed modes, broken JSON Lines, bodies
   over the payload limit, random bytes, unsupported media types), each sent once.

The status of every answer is checked against the kind of body it answers, which needs one
request at a time per connection in order: the load comes from ``--connections`` client processes
(``loadgen.py``; wrk cannot pair answers with requests once the server closes a connection, as it
does after refusing an oversized body). It prints requests/s, p50/p99 latency, the count of each
status per kind of body, the server's
resident memory (RSS) after start, after a warm-up and at the end, and a verdict: no 5xx, no
connection error, every malformed body a 4xx, every valid one a 200, RSS growth under 10% (from
after the warm-up, when the allocator holds its working set). Everything stays on 127.0.0.1, and
the run stops by itself (``--max-seconds`` bounds the first phase).

    python benchmarks/soak.py [--requests 1000000] [--fuzz 10000] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from loadgen import load, run_clients
from serve import MAX_LEN, MIN_LEN, VOCAB, start_server, write_model

JSON = "application/json"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sequence(rng: np.random.Generator) -> list[int]:
    return rng.integers(0, VOCAB, size=rng.integers(MIN_LEN, MAX_LEN + 1)).tolist()


def valid_body(rng: np.random.Generator, kind: str, batch: int) -> bytes:
    if kind == "pair":
        return orjson.dumps({"instances": [{"in0": sequence(rng), "in1": sequence(rng)}]})
    if kind == "embed":
        return orjson.dumps({"instances": [{"in0" if rng.random() < 0.5 else "in1": sequence(rng)}]})
    return orjson.dumps({"instances": [{"in0": sequence(rng)} for _ in range(batch)]})


BAD_TOKENS = [-1, VOCAB, 2**63, 2**64 - 1, 1.5, 2.0, "7", True, None, [1], {"a": 1}]


def malformed(rng: np.random.Generator, lines_ok: bool = True) -> tuple[str, bytes]:
    """One body (and its content type) that no valid request can be; ``lines_ok=False`` keeps
    newlines and tabs out (wrk's body file holds one body per line)."""
    good = [{"in0": sequence(rng), "in1": sequence(rng)} for _ in range(int(rng.integers(1, 4)))]
    choice = int(rng.integers(0, 13 if lines_ok else 11))
    if choice == 0:  # cut JSON: a strict prefix of a document is never a document
        body = orjson.dumps({"instances": good})
        return JSON, body[: int(rng.integers(0, len(body) - 1))]
    if choice == 1:  # a bad token somewhere
        at, side = int(rng.integers(len(good))), "in0" if rng.random() < 0.5 else "in1"
        sequence_ = good[at][side]
        sequence_[int(rng.integers(len(sequence_)))] = BAD_TOKENS[int(rng.integers(len(BAD_TOKENS)))]
        return JSON, orjson.dumps({"instances": good})
    if choice == 2:  # an empty sequence
        good[int(rng.integers(len(good)))]["in1"] = []
        return JSON, orjson.dumps({"instances": good})
    if choice == 3:  # pairs mixed with single inputs
        return JSON, orjson.dumps({"instances": good + [{"in0": sequence(rng)}]})
    if choice == 4:  # an instance that is not an object, or has neither input
        bad = [7, "in0", [1, 2], {"label": 1}, {"in2": [1]}, None][int(rng.integers(6))]
        return JSON, orjson.dumps({"instances": good + [bad]})
    if choice == 5:  # not {"instances": [...]}
        bad = [[], {}, {"instances": {}}, {"instances": []}, {"instances": 3}, {"in0": [1]}, 1, "x", None]
        return JSON, orjson.dumps(bad[int(rng.integers(len(bad)))])
    if choice == 6:  # random bytes (never naming an input)
        data = bytes(rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8))
        data = data.replace(b"in0", b"").replace(b"in1", b"")
        return JSON, data if lines_ok else data.replace(b"\n", b"").replace(b"\t", b"")
    if choice == 7:  # an unsupported content type
        media = ["text/csv", "application/octet-stream", "text/plain"][int(rng.integers(3))]
        return media, b'{"instances": []}'
    if choice == 8:  # a bad infer_max_seqlens
        value = ["0,5", "5", "a,b", "1,5001", "-1,2"][int(rng.integers(5))]
        return f"{JSON}; infer_max_seqlens={value}", orjson.dumps({"instances": good})
    if choice == 9:  # a sequence that is not a list
        good[0]["in0"] = [5, "abc", {"x": 1}, 3.5][int(rng.integers(4))]
        return JSON, orjson.dumps({"instances": good})
    if choice == 10:  # invalid UTF-8 inside a string
        return JSON, b'{"instances": [{"in0": [1], "x": "\xff\xfe"}]}'
    if choice == 11:  # JSON Lines with one broken line
        lines = [orjson.dumps(instance) for instance in good]
        lines.insert(int(rng.integers(len(lines) + 1)), b'{"in0": [1, 2')
        return "application/jsonlines", b"\n".join(lines)
    return JSON, orjson.dumps({"instances": [{"in0": [1] * 4_000_000}]})  # 8 MB: over the 6 MB payload limit


def pool(rng: np.random.Generator, size: int, batch: int, batch_share: float, malformed_share: float):
    """(content type, body) pairs and their kinds, in a shuffled order wrk cycles through."""
    kinds = ["batch" if r < batch_share else "malformed" if r < batch_share + malformed_share else "valid"
             for r in rng.random(size)]  # fmt: skip
    bodies, labels = [], []
    for kind in kinds:
        if kind == "malformed":
            bodies.append(malformed(rng, lines_ok=False))
        else:
            kind = "batch" if kind == "batch" else ("pair" if rng.random() < 0.5 else "embed")
            bodies.append((JSON, valid_body(rng, kind, batch)))
        labels.append(kind)
    return bodies, labels


def verdict(counts: dict[str, int]) -> list[str]:
    """What went wrong, from ``"<kind> <status>"`` counts (empty: nothing)."""
    problems = []
    for key, count in sorted(counts.items()):
        kind, status = key.rsplit(" ", 1)
        code = int(status)
        if code == 0:
            continue  # no answer at all: counted as a connection error
        if code >= 500:
            problems.append(f"{count} x {code} for {kind} bodies")
        elif kind == "malformed" and not 400 <= code < 500:
            problems.append(f"{count} malformed bodies answered {code}")
        elif kind != "malformed" and code != 200:
            problems.append(f"{count} valid {kind} bodies answered {code}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="serve this model (default: the benchmark's pooled_embedding)")
    parser.add_argument("--enc-dim", type=int, default=256)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--batch-share", type=float, default=0.002)
    parser.add_argument("--malformed-share", type=float, default=0.01)
    parser.add_argument("--fuzz", type=int, default=10_000)
    parser.add_argument("--max-seconds", type=float, default=3600, help="bound on the first phase")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    load_average = Path("/proc/loadavg").read_text().split()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_average}; {args.connections} clients")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model_dir or write_model("pooled_embedding", args.enc_dim, Path(tmp)))
        process, url = start_server(model_dir, None, 1, None)
        try:
            rss = {"start": rss_mb(process.pid)}
            bodies, kinds = pool(rng, 4000, args.batch, args.batch_share, args.malformed_share)
            load(url, bodies, args.connections, 60, kinds, limit=10_000)  # warm-up
            rss["after warm-up"] = rss_mb(process.pid)
            start = time.perf_counter()
            mixed = load(url, bodies, args.connections, args.max_seconds, kinds, limit=args.requests)
            report("mixed load", mixed, time.perf_counter() - start)
            rss["after mixed load"] = rss_mb(process.pid)
            fuzzed = [malformed(rng) for _ in range(args.fuzz)]
            fuzz = run_clients(url, fuzzed, args.connections, 3600, ["malformed"] * len(fuzzed), split=True)
            report("fuzzed bodies", fuzz, fuzz["seconds"])
            rss["end"] = rss_mb(process.pid)
            alive = process.poll() is None
        finally:
            process.terminate()
            process.wait()
    growth = rss["end"] / rss["after warm-up"] - 1
    sizes = ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
    print(f"RSS MB: {sizes}; growth after warm-up {growth:+.1%}")
    problems = verdict(mixed["counts"]) + verdict(fuzz["counts"])
    errors = connection_errors(mixed) + connection_errors(fuzz)
    problems += [f"{errors} connection errors"] if errors else []
    problems += [f"RSS grew {growth:.1%}"] if growth >= 0.10 else []
    problems += [] if alive else ["the server died"]
    print("verdict: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    sys.exit(1 if problems else 0)


def connection_errors(run: dict) -> int:
    return sum(run[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))


def report(name: str, run: dict, seconds: float) -> None:
    rate = run["requests"] / seconds
    print(f"{name}: {run['requests']:,} requests in {seconds:.0f} s, {rate:,.0f} requests/s, "
          f"p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms, max {run['max_ms']:.0f} ms; "
          f"connection errors {connection_errors(run)}")  # fmt: skip
    counts = ", ".join(f"{k}: {v:,}" for k, v in sorted(run["counts"].items()))
    print(f"  status counts: {counts}", flush=True)


if __name__ == "__main__":
    main()
