"""Serving throughput and latency of ``object2vec serve`` over loopback HTTP, beside the JSON floor.

For each encoder (``pooled_embedding``, ``hcnn``, ``bilstm``) a model of a fixed size is written
(random weights: speed does not depend on what was learned), ``object2vec serve`` is started on a
free loopback port (one worker unless ``--workers``), and this script measures:

- embeddings/s and scores/s with requests of ``--batch`` (1,000) instances on 2 connections;
- requests/s and p50/p99 latency of single-pair requests (scores) and of single-instance
  embedding requests on 16 connections;
- the server process's CPU time per request;
- (``--single-only``: the single-instance embedding requests alone, to compare two versions quickly);
- the JSON floor, in the same run: what orjson alone needs to parse the same request bodies and
  write the same answers on one core (instances/s), and the server's embeddings/s against it.

Load comes from wrk when installed (``apt-get install wrk``; see ``loadgen.py``), else from
``--clients`` Python client processes. ``--baseline-src DIR`` (or ``--baseline-rev REV``, a
commit of this repository, extracted and its C extensions built) also runs the server from another
source tree (e.g. ``git archive main src | tar -x -C /tmp/base``) and interleaves the two,
``--repeat`` times, so both see the same machine load; the table gives medians and ratios.

    python benchmarks/serve.py [--encoders pooled_embedding,hcnn,bilstm] [--enc-dim 256]
        [--baseline-src /tmp/base/src | --baseline-rev REV] [--change-rev REV] [--single-only]
        [--repeat 3] [--threads T] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
from loadgen import have_wrk, json_floor, load
from processes import materialise, with_path

from object2vec import artifact
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet

#: A mid-sized text model: 20k-token vocabularies, 256-dimensional tokens, sequences of 5..32 tokens.
MODEL = {
    "enc0_vocab_size": "20000",
    "enc1_vocab_size": "20000",
    "enc0_max_seq_len": "32",
    "enc1_max_seq_len": "32",
    "enc0_token_embedding_dim": "256",
    "enc1_token_embedding_dim": "256",
    "mlp_layers": "2",
    "mlp_dim": "512",
    "num_classes": "3",
    "enc0_layers": "2",
    "enc1_layers": "2",
}
VOCAB, MIN_LEN, MAX_LEN = 20000, 5, 32
#: seconds of load per measurement: sequence encoders answer 1,000 instances in a second or more
SECONDS = {"pooled_embedding": 6, "hcnn": 20, "bilstm": 40}


def write_model(encoder: str, enc_dim: int, root: Path) -> Path:
    """A model with seeded random weights, saved by the ``object2vec`` this process imports."""
    hp = parse_hyperparameters(
        {**MODEL, "enc_dim": str(enc_dim), "enc0_network": encoder, "enc1_network": "enc0"}
    )
    torch.manual_seed(0)
    return artifact.save(root / encoder, hp, Object2VecNet(hp).eval())


def write_model_with(src: str | None, encoder: str, enc_dim: int, root: Path) -> Path:
    """The same model saved by the code under ``src`` (None: this process's): an older tree may not
    read the hyperparameters a newer one writes, so each server gets a model its own code wrote."""
    if src is None:
        return write_model(encoder, enc_dim, root)
    script = (
        "import sys, pathlib, serve; "
        "serve.write_model(sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]))"
    )
    env = dict(os.environ, PYTHONPATH=with_path(os.pathsep.join([src, str(Path(__file__).parent)])))
    subprocess.run([sys.executable, "-c", script, encoder, str(enc_dim), str(root)], env=env, check=True)
    return root / encoder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: Path, src: str | None, workers: int, threads: int | None):
    """``object2vec serve`` from ``src`` (a source tree; None: this interpreter's package)."""
    port = free_port()
    env = dict(os.environ, **({"PYTHONPATH": with_path(src)} if src else {}))
    command = [sys.executable, "-m", "object2vec", "serve", "--model-dir", str(model_dir)]
    command += ["--port", str(port), "--workers", str(workers)]
    command += ["--threads", str(threads)] if threads else []
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a local process (Linux), NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def bodies_for(batch: int, seed: int) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    doc = lambda items: orjson.dumps({"instances": items})  # noqa: E731
    return {
        "embed": [doc(instances(rng, batch, False)) for _ in range(4)],
        "score": [doc(instances(rng, batch, True)) for _ in range(4)],
        "single": [doc(instances(rng, 1, True)) for _ in range(64)],
        "single embed": [doc(instances(rng, 1, False)) for _ in range(64)],
    }


def drain(url: str, body: bytes) -> None:
    """One request answered: the requests a load generator left behind when it stopped are done."""
    httpx.post(f"{url}/invocations", content=body, headers={"content-type": "application/json"}, timeout=600)


def measure(
    url: str, pid: int | None, bodies: dict[str, list[bytes]], batch: int, seconds: float, single_only: bool
) -> dict:
    as_json = lambda items: [("application/json", b) for b in items]  # noqa: E731
    drain(url, bodies["embed"][0])  # warm-up
    row = {}
    if single_only:
        single_embed = load_16(url, pid, as_json(bodies["single embed"]), seconds, "c16 embed", row)
        row["errors"] = sum(single_embed.get(k, 0) for k in ("status_errors", "timeouts"))
        return row
    embed = load(url, as_json(bodies["embed"]), 2, seconds)
    row["embeddings/s"] = embed["requests/s"] * batch
    row["embed p50 ms"] = embed["p50_ms"]
    drain(url, bodies["single"][0])
    score = load(url, as_json(bodies["score"]), 2, seconds)
    row["scores/s"] = score["requests/s"] * batch
    drain(url, bodies["single"][0])
    single = load_16(url, pid, as_json(bodies["single"]), seconds, "c16", row)
    single_embed = load_16(url, pid, as_json(bodies["single embed"]), seconds, "c16 embed", row)
    runs = (embed, score, single, single_embed)
    row["errors"] = sum(run.get(k, 0) for run in runs for k in ("status_errors", "timeouts"))
    return row


def load_16(url: str, pid: int | None, bodies, seconds: float, label: str, row: dict) -> dict:
    """Single-instance requests on 16 connections; their requests/s, p50/p99 and the server's CPU
    time per request (user and system, microseconds; NaN without the server's process id) go into
    ``row``. The CPU time is the steadier figure on a shared machine: the rate also moves with
    how much of the cores the server gets."""
    cpu = cpu_seconds(pid) if pid else float("nan")
    result = load(url, bodies, 16, max(5.0, seconds / 2))
    spent = (cpu_seconds(pid) if pid else float("nan")) - cpu
    row[f"{label} req/s"] = result["requests/s"]
    row[f"{label} p50 ms"] = result["p50_ms"]
    row[f"{label} p99 ms"] = result["p99_ms"]
    row[f"{label} server CPU us/req"] = 1e6 * spent / max(1, result["requests"])
    return result


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="pooled_embedding,hcnn,bilstm")
    parser.add_argument("--enc-dim", type=int, default=256)
    parser.add_argument("--baseline-src", help="also serve from this source tree, interleaved (same load)")
    parser.add_argument("--baseline-rev", help="as --baseline-src, from this commit (its C extensions built)")
    parser.add_argument("--change-rev", help="serve this commit as the change (default: this tree)")
    parser.add_argument(
        "--single-only", action="store_true", help="measure single-instance embeddings at 16 connections only"
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per server worker")
    parser.add_argument("--batch", type=int, default=1000, help="instances per batch request")
    parser.add_argument("--seconds", type=float, default=None, help="load per measurement (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generator = "wrk" if have_wrk() else "Python client processes"
    print(f"machine: {os.cpu_count()} CPUs, load average {load_average()}; load from {generator}")
    print(f"model: {MODEL}, enc_dim {args.enc_dim}")
    rows: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        baseline = (
            materialise(args.baseline_rev, Path(tmp) / "baseline") if args.baseline_rev else args.baseline_src
        )
        change = str(materialise(args.change_rev, Path(tmp) / "change")) if args.change_rev else None
        variants = {"change": change} if not baseline else {"baseline": str(baseline), "change": change}
        for encoder in args.encoders.split(","):
            model_dirs = {
                name: write_model_with(src, encoder, args.enc_dim, Path(tmp) / name)
                for name, src in variants.items()
            }
            bodies = bodies_for(args.batch, args.seed)
            seconds = args.seconds or SECONDS.get(encoder, 10)
            for repeat in range(args.repeat):
                floor = json_floor(bodies["embed"], args.enc_dim)
                rows.setdefault(encoder, {}).setdefault("JSON floor", []).append(
                    {
                        "embeddings/s": floor["floor instances/s"],
                        "parse/s": floor["parse instances/s"],
                        "write/s": floor["write rows/s"],
                    }
                )
                order = list(variants.items())
                for name, src in order if repeat % 2 == 0 else reversed(order):  # neither always first
                    process, url = start_server(model_dirs[name], src, args.workers, args.threads)
                    try:
                        pid = process.pid if args.workers == 1 else None
                        row = measure(url, pid, bodies, args.batch, seconds, args.single_only)
                    finally:
                        process.terminate()
                        process.wait()
                    if "embeddings/s" in row:
                        row["floor ratio"] = row["embeddings/s"] / floor["floor instances/s"]
                    row["load avg"] = float(load_average())
                    rows[encoder].setdefault(name, []).append(row)
                    print(encoder, name, repeat, {k: round(v, 2) for k, v in row.items()}, flush=True)
    print_table(rows)


def print_table(rows: dict[str, dict[str, list[dict]]]) -> None:
    """Medians over the repeats; with a baseline, the change's ratio to it."""
    for encoder, variants in rows.items():
        print(f"\n{encoder} (median of {len(next(iter(variants.values())))} runs)")
        columns = [c for c in next(iter(v for k, v in variants.items() if k != "JSON floor"))[0]]
        print("| server | " + " | ".join(columns) + " |")
        print("|---|" + "---:|" * len(columns))
        medians = {
            name: {c: float(np.median([r[c] for r in runs])) for c in runs[0]}
            for name, runs in variants.items()
        }
        for name, values in medians.items():
            print(f"| {name} | " + " | ".join(fmt(values.get(c)) for c in columns) + " |")
        if "baseline" in medians:
            base, change = medians["baseline"], medians["change"]
            ratio = {c: change[c] / base[c] for c in columns if base[c]}
            cells = (f"{ratio[c]:.2f}x" if c in ratio else "" for c in columns)
            print("| change / baseline | " + " | ".join(cells) + " |")
        floor = medians["JSON floor"]
        print(
            f"JSON floor: parse {floor['parse/s']:,.0f} instances/s, write {floor['write/s']:,.0f} rows/s, "
            f"both {floor['embeddings/s']:,.0f}/s on one core"
        )


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


if __name__ == "__main__":
    main()
