"""Data-parallel throughput: one process vs N torchrun processes on the MovieLens rating regression.

ua.base -> ua.test, in0 = [user], in1 = [movie], pooled_embedding, the published notebook's
hyperparameters (benchmarks/movielens.py) for a few epochs. Each setting runs the real commands,
``object2vec train`` and ``torchrun --standalone --nproc_per_node=N -m object2vec train``, on
the same cores: threads per process = cores / processes, so the comparison is what the
processes add, not what extra cores add. Prints training samples/s (all ranks together,
epochs after the first) and the validation MSE after the last epoch.

    python benchmarks/distributed.py [--data ../shared/data/ml-100k] [--epochs 3] [--cores 2] \
        [--processes 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import DEFAULT_DATA, PUBLISHED_REGRESSION  # noqa: E402

EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ .*samples_per_second=(\S+)", re.M)
MSE_LINE = re.compile(r"^validation:mean_squared_error=(\S+)$", re.M)


def write_ratings(source: Path, target: Path) -> Path:
    """``user item rating timestamp`` lines -> JSON Lines pairs ``{"label", "in0", "in1"}``."""
    table = np.loadtxt(source, dtype=np.int64, usecols=(0, 1, 2))
    target.write_bytes(
        b"".join(
            orjson.dumps({"label": float(r), "in0": [int(u)], "in1": [int(m)]}) + b"\n" for u, m, r in table
        )
    )
    return target


def run(
    processes: int, threads: int, channels: dict[str, Path], model_dir: Path, epochs: int, device: str
) -> dict:
    launcher = (
        [sys.executable, "-m", "object2vec"]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "object2vec",
        ]
    )
    params = {**PUBLISHED_REGRESSION, "epochs": str(epochs)}
    command = [
        *launcher,
        "train",
        "--train",
        str(channels["train"]),
        "--validation",
        str(channels["validation"]),
        "--model-dir",
        str(model_dir),
        "--seed",
        "0",
        "--device",
        device,
        "--no-progress",
        *(f"{k}={v}" for k, v in params.items()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    rates = [float(rate) for epoch, rate in EPOCH_LINE.findall(done.stdout) if int(epoch) > 1]
    return {
        "processes": processes,
        "threads": threads,
        "samples_per_s": statistics.median(rates),
        "mse": float(MSE_LINE.findall(done.stdout)[-1]),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="directory holding ua.base and ua.test"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    parser.add_argument(
        "--cores", type=int, default=os.cpu_count(), help="cores to share between the processes"
    )
    parser.add_argument("--processes", type=int, default=2, help="torchrun processes to compare with one")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="object2vec-distributed-") as tmp:
        root = Path(tmp)
        channels = {
            "train": write_ratings(args.data / "ua.base", root / "train.jsonl"),
            "validation": write_ratings(args.data / "ua.test", root / "validation.jsonl"),
        }
        settings = [(1, args.cores), (args.processes, max(args.cores // args.processes, 1))]
        results = []
        for processes, threads in settings:
            result = run(processes, threads, channels, root / f"model-{processes}", args.epochs, args.device)
            print(
                f"{processes} process(es) x {threads} thread(s): {result['samples_per_s']:.0f} samples/s, "
                f"validation MSE after {args.epochs} epochs {result['mse']:.4f}, "
                f"wall {result['wall_s']:.1f}s",
                flush=True,
            )
            results.append(result)
    base = results[0]["samples_per_s"]
    print(
        f"\nprocesses x threads | train samples/s | speed-up | validation MSE ({args.epochs} epochs) | wall s"
    )
    for r in results:
        print(
            f"{r['processes']} x {r['threads']} | {r['samples_per_s']:.0f} | "
            f"{r['samples_per_s'] / base:.2f}x | {r['mse']:.4f} | {r['wall_s']:.1f}"
        )


if __name__ == "__main__":
    main()
