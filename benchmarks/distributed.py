"""Data-parallel throughput: one process vs N torchrun processes on the MovieLens rating regression.

ua.base -> ua.test, in0 = [user], in1 = [movie], pooled_embedding, the published notebook's
hyperparameters (benchmarks/movielens.py) for a few epochs. Each setting runs the real commands,
``object2vec train`` and ``torchrun --standalone --nproc_per_node=N -m object2vec train``, on
the same cores: threads per process = cores / processes, so the comparison is what the
processes add, not what extra cores add. Prints training samples/s (all ranks together,
epochs after the first) and the validation MSE after the last epoch.

    python benchmarks/distributed.py [--data ../shared/data/ml-100k] [--epochs 3] [--cores 2] \
        [--processes 2] [--device cpu]

``--sparse-runs N`` instead starts the same torchrun training N times in a row with
``token_embedding_storage_type=row_sparse`` on synthetic sequence pairs (``latent_pairs``,
tied table, ``pooled_embedding``, negative sampling, so the ranks exchange different numbers of
rows every step) and reports how many runs ended cleanly: exit status 0 from every rank, no traceback, no
abort message, the model written.

    python benchmarks/distributed.py --sparse-runs 20 [--processes 2] [--device cpu]
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
MSE_OR_ACCURACY = re.compile(r"^validation:(?:mean_squared_error|accuracy)=\S+$", re.M)


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


SPARSE_RUN = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "20",
    "enc0_vocab_size": "500",
    "enc0_token_embedding_dim": "64",
    "enc_dim": "64",
    "tied_token_embedding_weight": "True",
    "comparator_list": "hadamard",
    "mlp_layers": "1",
    "mlp_dim": "64",
    "negative_sampling_rate": "3",
    "token_embedding_storage_type": "row_sparse",
    "learning_rate": "0.01",
    "mini_batch_size": "128",
    "epochs": "2",
}
#: What a rank that died badly leaves in the output (torchrun's and the C++ runtime's words).
ABORT_SIGNS = ("Traceback", "terminate called", "ChildFailedError", "Signal", "core dumped", "SIGABRT")


def sparse_runs(runs: int, processes: int, device: str) -> None:
    """Train with row_sparse tables under torchrun ``runs`` times; count the clean endings."""
    from object2vec.sample_data import latent_pairs, write_jsonl

    with tempfile.TemporaryDirectory(prefix="object2vec-sparse-runs-") as tmp:
        root = Path(tmp)
        records = latent_pairs(6000, vocab0=500, vocab1=500, max_len0=20, max_len1=20, seed=0, same_kind=True)
        train = write_jsonl(records[:5000], root / "train.jsonl")
        validation = write_jsonl(records[5000:], root / "validation.jsonl")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [
            *launcher,
            f"--nproc_per_node={processes}",
            "-m",
            "object2vec",
            "train",
            "--device",
            device,
        ]
        command += ["--no-progress", "--train", str(train), "--validation", str(validation)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        clean = 0
        for run in range(1, runs + 1):
            model = root / f"model-{run}"
            params = [f"{k}={v}" for k, v in SPARSE_RUN.items()]
            started = time.perf_counter()
            done = subprocess.run(
                [*command, "--model-dir", str(model), *params], env=env, capture_output=True, text=True
            )
            output = done.stdout + done.stderr
            signs = [sign for sign in ABORT_SIGNS if sign in output]
            ok = done.returncode == 0 and not signs and (model / "model.safetensors").is_file()
            clean += ok
            print(
                f"run {run}: exit {done.returncode}, {'clean' if ok else 'FAILED ' + ', '.join(signs)}, "
                f"{time.perf_counter() - started:.1f}s, {MSE_OR_ACCURACY.findall(done.stdout)[-1:]}",
                flush=True,
            )
            if not ok:
                print(output[-3000:], flush=True)
        print(f"\n{clean}/{runs} runs of {processes} processes with row_sparse tables ended cleanly")


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
    parser.add_argument(
        "--sparse-runs", type=int, default=0, help="row_sparse runs in a row, counting clean ends"
    )
    args = parser.parse_args()
    if args.sparse_runs:
        sparse_runs(args.sparse_runs, args.processes, args.device)
        return
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
