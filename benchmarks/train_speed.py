"""Training speed of the sparse/ID path: positive pairs/s, samples/s, where the time goes, peak RSS.

Three workloads, written once to a JSON Lines file and trained on with ``load_pairs`` +
``Object2Vec(...).fit`` in a fresh process per run; two are seeded synthetic data:

- ``starspace``: the StarSpace-shaped workload. Pairs whose in0 has 5-30 tokens and in1 20-50
  tokens from a Zipf vocabulary (50,000 tokens by default), one tied 300-dim table,
  ``pooled_embedding`` on both sides, ``enc_dim`` 300, comparator ``hadamard``, one MLP layer of
  64, ``negative_sampling_rate=5``, ``row_sparse``, adam, batch 256, 1 epoch.
- ``docemb``: the document-embedding notebook's hyperparameters (vocabulary 267,522,
  ``max_seq_len`` 50, token dim 300, ``enc_dim`` 300, tied table, hadamard, 2 relu MLP layers of
  512, dropout 0.4, adam lr 0.01, batch 512, ``negative_sampling_rate=3``, ``row_sparse``) on
  pairs of its shape: in0 10-30 tokens, in1 50 tokens.

In both, in1 is drawn from the Zipf distribution and half of in0's tokens are taken from its
in1 (a sentence and its document), so there is something to learn and the training loss is a
check that two versions train alike. ``--vocab``, ``--dim`` and ``--separate-tables`` (two
tables, enc0's and enc1's) make the million-row run: ``--vocab 3000000 --dim 64``. The third is
real data:

- ``sick``: SICK entailment with ``benchmarks/sick.py``'s settings for ``--encoder`` (hcnn,
  bilstm or pooled_embedding; one shared encoder, batch 64, bucket_width 5, dropout 0.3), read
  from ``--sick DIR``, trained without a validation channel so that only training is timed.

Each run reports: positive pairs/s and samples/s of training (wall clock; samples include the
negatives), samples per CPU-second (the process's CPU time over the epochs after the first, or
over the whole fit for one epoch, so it includes the one-time start: steadier than the wall
clock on a machine other jobs share), positive pairs/s end to end (reading + building the
network + training), the split of wall time between reading data, building the network and
training, the final training loss, and resident memory (data, tables, the optimizers' state as
resident pages, peak), from ``/proc/self/status`` and ``mincore``.

``--compare REV`` also runs the commit REV of this repository (its ``src/``, taken with ``git
archive``) on the same data file, alternating old and new runs (``--repeat`` times each), and
prints medians and the ratio: a speed-up is always measured side by side. Both versions run
from copies of their ``src/`` with their C extensions compiled there, so editing the tree
during a run changes nothing.

    python benchmarks/train_speed.py [--workload starspace|docemb|sick] [--pairs N] [--vocab V]
        [--dim D] [--separate-tables] [--encoder hcnn|bilstm] [--sick DIR] [--epochs 1]
        [--threads T] [--repeat 3] [--compare REV] [--data-dir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from processes import copy_this_tree, materialise, usable_cores, with_path

REPO = Path(__file__).resolve().parents[1]

WORKLOADS = {
    "starspace": {
        "pairs": 100_000,
        "vocab": 50_000,
        "dim": 300,
        "in0": (5, 30),
        "in1": (20, 50),
        "hyperparameters": {
            "enc0_network": "pooled_embedding",
            "enc1_network": "pooled_embedding",
            "enc0_max_seq_len": "30",
            "enc1_max_seq_len": "50",
            "enc_dim": "300",
            "tied_token_embedding_weight": "True",
            "comparator_list": "hadamard",
            "mlp_layers": "1",
            "mlp_dim": "64",
            "mlp_activation": "relu",
            "negative_sampling_rate": "5",
            "token_embedding_storage_type": "row_sparse",
            "optimizer": "adam",
            "mini_batch_size": "256",
            "epochs": "1",
        },
    },
    "docemb": {
        "pairs": 50_000,
        "vocab": 267_522,
        "dim": 300,
        "in0": (10, 30),
        "in1": (50, 50),
        "hyperparameters": {
            "enc0_network": "pooled_embedding",
            "enc1_network": "pooled_embedding",
            "enc0_max_seq_len": "50",
            "enc1_max_seq_len": "50",
            "enc_dim": "300",
            "tied_token_embedding_weight": "True",
            "comparator_list": "hadamard",
            "mlp_layers": "2",
            "mlp_dim": "512",
            "mlp_activation": "relu",
            "dropout": "0.4",
            "learning_rate": "0.01",
            "negative_sampling_rate": "3",
            "token_embedding_storage_type": "row_sparse",
            "optimizer": "adam",
            "mini_batch_size": "512",
            "epochs": "1",
        },
    },
}


# --- data ---------------------------------------------------------------------------------------


def zipf_tokens(rng: np.random.Generator, vocab: int, size: int, exponent: float = 1.0) -> np.ndarray:
    """``size`` token IDs in ``[1, vocab)`` whose frequency falls as 1/rank (ID 1 the most frequent,
    as a vocabulary sorted by count has it); ID 0 is left for padding."""
    weights = 1.0 / np.arange(1, vocab, dtype=np.float64) ** exponent
    cumulative = np.cumsum(weights)
    draws = rng.random(size) * cumulative[-1]
    return np.searchsorted(cumulative, draws, side="right").astype(np.int64) + 1


def generate(
    path: Path, pairs: int, vocab: int, in0: tuple[int, int], in1: tuple[int, int], seed: int
) -> None:
    """Write ``pairs`` positive records: in1 Zipf words, in0 half copied from its in1, half Zipf."""
    rng = np.random.default_rng(seed)
    len0 = rng.integers(in0[0], in0[1] + 1, size=pairs)
    len1 = rng.integers(in1[0], in1[1] + 1, size=pairs)
    off1 = np.concatenate([[0], np.cumsum(len1)])
    tokens1 = zipf_tokens(rng, vocab, int(off1[-1]))
    off0 = np.concatenate([[0], np.cumsum(len0)])
    owner = np.repeat(np.arange(pairs), len0)  # the record each in0 position belongs to
    copied = off1[owner] + (rng.random(len(owner)) * len1[owner]).astype(np.int64)
    tokens0 = np.where(rng.random(len(owner)) < 0.5, tokens1[copied], zipf_tokens(rng, vocab, len(owner)))
    with open(path, "wb") as handle:
        for i in range(pairs):
            record = {
                "label": 1,
                "in0": tokens0[off0[i] : off0[i + 1]].tolist(),
                "in1": tokens1[off1[i] : off1[i + 1]].tolist(),
            }
            handle.write(orjson.dumps(record) + b"\n")


def sick_workload(args, data_dir: Path) -> tuple[Path, dict[str, str]]:
    """SICK entailment exactly as ``benchmarks/sick.py`` trains it for ``args.encoder`` (its
    settings, its vocabulary, every pair also swapped), without the validation channel, so only
    training is timed. ``--epochs`` epochs (the benchmark itself runs up to 30)."""
    sys.path[:0] = [str(REPO / "src"), str(REPO / "benchmarks")]
    import sick

    train_rows = sick.read_sick(Path(args.sick) / "sick_train.tsv")
    vocab = sick.build_vocab(t for r in train_rows for t in (r["sentence_A"], r["sentence_B"]))
    pairs = sick.pairs(train_rows, vocab, "entailment", swap=True)
    path = data_dir / f"sick-entailment-{len(vocab)}.jsonl"
    with open(path, "wb") as handle:
        for i in range(len(pairs)):
            record = {"label": int(pairs.labels[i]), "in0": pairs.in0.get(i), "in1": pairs.in1.get(i)}
            handle.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    hp = {
        **sick.COMMON,
        **sick.PER_ENCODER[args.encoder],
        "enc0_network": args.encoder,
        "enc0_vocab_size": str(len(vocab)),
        **sick.PER_TASK["entailment"],
        "weight_decay": sick.WEIGHT_DECAY[(args.encoder, "entailment")],
        "tied_encoder_weight": "True",
        "epochs": str(args.epochs),
    }
    return path, hp


def synthetic_workload(args, data_dir: Path) -> tuple[Path, dict[str, str]]:
    spec = WORKLOADS[args.workload]
    path = data_dir / f"{args.workload}-{args.pairs}-{args.vocab}-{args.seed}.jsonl"
    if not path.is_file():
        generate(path, args.pairs, args.vocab, spec["in0"], spec["in1"], args.seed)
    return path, hyperparameters(args)


def hyperparameters(args) -> dict[str, str]:
    spec = WORKLOADS[args.workload]
    hp = {
        **spec["hyperparameters"],
        "enc0_vocab_size": str(args.vocab),
        "enc1_vocab_size": str(args.vocab),
        "enc0_token_embedding_dim": str(args.dim),
        "enc1_token_embedding_dim": str(args.dim),
        "epochs": str(args.epochs),
    }
    if args.separate_tables:
        hp["tied_token_embedding_weight"] = "False"
    return hp


# --- one run, in its own process ----------------------------------------------------------------


def memory_mb() -> dict[str, float]:
    """Resident and peak resident memory of this process, in MB (Linux)."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":")
                fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def resident_mb(tensors) -> float:
    """Resident memory of the CPU tensors among ``tensors`` in MB, page by page (``mincore``): a
    moment table allocated lazily counts only the pages of the rows written. Where ``mincore`` is
    missing: full sizes. Tensors on a GPU are counted by :func:`gpu_peak_mb` instead."""
    libc = ctypes.CDLL(None, use_errno=True)
    page = mmap.PAGESIZE
    total = 0
    for tensor in {t.data_ptr(): t for t in tensors if t.device.type == "cpu"}.values():
        size = tensor.numel() * tensor.element_size()
        start = tensor.data_ptr() - tensor.data_ptr() % page
        length = tensor.data_ptr() + size - start
        pages = (ctypes.c_ubyte * ((length + page - 1) // page))()
        if size == 0 or not hasattr(libc, "mincore"):
            total += size
        elif libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), pages) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        else:  # bit 0 of each byte: the page is resident; whole pages at the edges count
            total += min(size, int((np.frombuffer(pages, dtype=np.uint8) & 1).sum()) * page)
    return total / 2**20


def gpu_peak_mb() -> float:
    """Peak GPU memory the run allocated (tables, optimizer state, activations), 0 on the CPU."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else 0.0


def optimizer_tensors(optimizers) -> list:
    return [
        v
        for opt in optimizers
        for state in opt.state.values()
        for v in state.values()
        if hasattr(v, "data_ptr")
    ]


def worker(config: dict) -> dict:
    """Read the data, build and train the model; timings, loss and memory as a dict."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from object2vec import Object2Vec
    from object2vec.training import load_pairs

    torch.set_num_threads(config["threads"])
    before = memory_mb()
    model = Object2Vec(config["hyperparameters"])
    started = time.perf_counter()
    data = load_pairs(config["data"], model.hp)
    read_s = time.perf_counter() - started
    after_data = memory_mb()
    profiler = None
    if config.get("profile"):
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time: steadier on a shared machine
        profiler.enable()
    epoch_cpu = []  # the CPU clock when each epoch's line is logged
    log = lambda line: line.startswith("epoch ") and epoch_cpu.append(time.process_time())  # noqa: E731
    optimizers = {}  # every optimizer that steps, for the memory its state takes
    hook = register_optimizer_step_post_hook(lambda opt, *_: optimizers.setdefault(id(opt), opt))
    fit_started, fit_cpu = time.perf_counter(), time.process_time()
    model.fit(data, seed=config["seed"], log=log, progress=False)
    fit_s = time.perf_counter() - fit_started
    hook.remove()
    if profiler is not None:
        profiler.disable()
        _print_profile(profiler)
    train_s = model.result.seconds
    samples = round(model.result.samples_per_second * train_s)
    positives = int(np.count_nonzero(data.labels != 0)) * len(model.result.history)
    tables = sum(t.weight.numel() * t.weight.element_size() for t in model.net.token_tables) / 2**20
    per_epoch = samples // len(model.result.history)
    later = len(epoch_cpu) - 1  # epochs after the first: no one-time costs (imports, kernel setup)
    cpu = (
        (per_epoch * later / (epoch_cpu[-1] - epoch_cpu[0])) if later else samples / (epoch_cpu[0] - fit_cpu)
    )
    return {
        "read_s": read_s,
        "build_s": fit_s - train_s,
        "train_s": train_s,
        "samples": samples,
        "cpu_samples_per_s": cpu,
        "positives": positives,
        "train_loss": model.result.history[-1]["train:loss"],
        "memory_mb": {
            "start": before["rss"],
            "after_data": after_data["rss"],
            "tables": tables,
            "optimizer": resident_mb(optimizer_tensors(optimizers.values())),
            "peak": memory_mb()["peak"],
            "gpu_peak": gpu_peak_mb(),
        },
        "device": str(next(model.net.parameters()).device),
    }


def _print_profile(profiler) -> None:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
    print(out.getvalue(), file=sys.stderr)


def run_once(src: Path, config: dict) -> dict:
    """One training run of the code under ``src`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": with_path(str(src)), "OMP_NUM_THREADS": str(config["threads"])}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"run of {src} failed:\n{done.stdout}\n{done.stderr}")
    if config.get("profile"):
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------------


def summary(runs: list[dict]) -> dict:
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    train_s, read_s, build_s = med("train_s"), med("read_s"), med("build_s")
    samples, positives = runs[0]["samples"], runs[0]["positives"]
    return {
        "pairs_per_s": positives / train_s,
        "samples_per_s": samples / train_s,
        "end_to_end_pairs_per_s": positives / (read_s + build_s + train_s),
        "read_s": read_s,
        "build_s": build_s,
        "train_s": train_s,
        "train_loss": med("train_loss"),
        "cpu_samples_per_s": med("cpu_samples_per_s"),
        "peak_mb": statistics.median(r["memory_mb"]["peak"] for r in runs),
        "data_mb": statistics.median(r["memory_mb"]["after_data"] - r["memory_mb"]["start"] for r in runs),
        "tables_mb": runs[0]["memory_mb"]["tables"],
        "optimizer_mb": statistics.median(r["memory_mb"]["optimizer"] for r in runs),
    }


def describe(r: dict) -> str:
    return (
        f"{r['positives'] / r['train_s']:,.0f} positive pairs/s, "
        f"{r['samples'] / r['train_s']:,.0f} samples/s, {r['cpu_samples_per_s']:,.0f} samples/CPU-s, "
        f"train {r['train_s']:.1f}s, "
        f"read {r['read_s']:.1f}s, loss {r['train_loss']:.4f}, "
        f"peak {r['memory_mb']['peak']:,.0f} MB"
        + (f", GPU peak {r['memory_mb']['gpu_peak']:,.0f} MB" if r["memory_mb"].get("gpu_peak") else "")
        + f", on {r.get('device', 'cpu')}"
    )


def print_table(results: dict[str, dict]) -> None:
    columns = [
        ("pairs_per_s", "positive pairs/s", "{:,.0f}"),
        ("samples_per_s", "samples/s", "{:,.0f}"),
        ("cpu_samples_per_s", "samples/CPU-s", "{:,.0f}"),
        ("end_to_end_pairs_per_s", "end-to-end pairs/s", "{:,.0f}"),
        ("read_s", "read s", "{:.1f}"),
        ("build_s", "build s", "{:.1f}"),
        ("train_s", "train s", "{:.1f}"),
        ("train_loss", "train loss", "{:.4f}"),
        ("data_mb", "data MB", "{:,.0f}"),
        ("tables_mb", "tables MB", "{:,.0f}"),
        ("optimizer_mb", "optimizer state MB", "{:,.0f}"),
        ("peak_mb", "peak RSS MB", "{:,.0f}"),
    ]
    print("| code | " + " | ".join(title for _, title, _ in columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, s in results.items():
        print(f"| {name} | " + " | ".join(fmt.format(s[key]) for key, _, fmt in columns) + " |")
    if len(results) == 2:
        old, new = results.values()
        ratios = ", ".join(
            f"{title} {new[key] / old[key]:.2f}x"
            for key, title in [
                ("pairs_per_s", "positive pairs/s"),
                ("cpu_samples_per_s", "samples/CPU-s"),
                ("end_to_end_pairs_per_s", "end to end"),
            ]
        )
        print(f"\nratio (this tree / compared): {ratios}")


def title(args) -> str:
    if args.workload == "sick":
        return f"SICK entailment, {args.encoder}, benchmarks/sick.py settings, {args.epochs} epoch(s)"
    tables = "separate tables" if args.separate_tables else "one tied table"
    return (
        f"{args.workload}: {args.pairs:,} positive pairs, vocabulary {args.vocab:,}, dim {args.dim}, {tables}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=[*WORKLOADS, "sick"], default="starspace")
    parser.add_argument("--encoder", choices=["hcnn", "bilstm", "pooled_embedding"], default="hcnn")
    parser.add_argument("--sick", default=str(REPO.parent / "shared" / "data" / "sick"), help="SICK data")
    parser.add_argument("--pairs", type=int, help="positive pairs (default: the workload's)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: the workload's)")
    parser.add_argument("--dim", type=int, help="token dimension (default: the workload's)")
    parser.add_argument("--separate-tables", action="store_true", help="enc0 and enc1 each their own table")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=usable_cores(), help="default: the usable cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each version (medians reported)")
    parser.add_argument("--compare", metavar="REV", help="also run commit REV, alternating with this tree")
    parser.add_argument("--data-dir", type=Path, help="keep the generated data here (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile each run (to stderr)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    spec = WORKLOADS.get(args.workload, {})
    args.pairs = args.pairs or spec.get("pairs")
    args.vocab = args.vocab or spec.get("vocab")
    args.dim = args.dim or spec.get("dim")
    with tempfile.TemporaryDirectory(prefix="object2vec-speed-") as tmp:
        data_dir = args.data_dir or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        prepare = sick_workload if args.workload == "sick" else synthetic_workload
        data, hp = prepare(args, data_dir)
        config = {
            "data": str(data),
            "hyperparameters": hp,
            "threads": args.threads,
            "seed": args.seed,
            "profile": args.profile,
        }
        versions = {"this tree": copy_this_tree(Path(tmp) / "this-tree")}
        if args.compare:
            versions = {args.compare: materialise(args.compare, Path(tmp) / "compared"), **versions}
        print(f"{title(args)}, {args.threads} thread(s), {args.repeat} run(s) each", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in versions}
        for repetition in range(args.repeat):
            order = list(versions) if repetition % 2 == 0 else list(reversed(versions))
            for name in order:
                runs[name].append(run_once(versions[name], config))
                print(f"  {name}: {describe(runs[name][-1])}", flush=True)
        print_table({name: summary(r) for name, r in runs.items()})


if __name__ == "__main__":
    main()
