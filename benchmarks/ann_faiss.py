"""faiss index types on independent Gaussian vectors: what recall@10 costs when there is no structure.

``benchmarks/ann.py`` compares libraries on one HNSW shape; this script asks a different
question: on ``--n`` random unit vectors of ``--dim`` values (independent Gaussian values,
normalised; queries drawn the same way, not from the base), which faiss index reaches a given
recall@10, and at how many queries/s compared with exact search. Every ``--config`` is a
faiss ``index_factory`` string followed by the search parameters to sweep, e.g.
``"HNSW32:efSearch=256,512,1024"`` or ``"IVF1024,Flat:nprobe=32,64,128"``; ``Flat`` is exact
search (no parameters). Ground truth is an exact inner-product search (``IndexFlatIP``), whose
queries/s is printed as the reference point.

For each configuration: build seconds (training plus adding, wall-clock and this process's CPU
time, since the machine may be shared), the memory the index adds (resident set size after
minus before) and, per parameter value, queries/s (one batch of ``--queries`` queries, after a
warm-up) and recall@10.

    python benchmarks/ann_faiss.py --n 100000 --config "HNSW32:efSearch=256,512,1024" \
        --config "IVF1024,Flat:nprobe=16,32,64,128" [--dim 256] [--threads 2] [--ef-construction 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ann import K, random_unit_vectors, recall, rss_bytes  # noqa: E402


@dataclass
class Config:
    factory: str
    name: str = ""
    values: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Config:
        factory, _, sweep = text.partition(":")
        if not sweep:
            return cls(factory)
        name, _, values = sweep.partition("=")
        return cls(factory, name, tuple(int(v) for v in values.split(",")))


@dataclass
class Timed:
    wall_s: float
    cpu_s: float


def timed(work) -> tuple[object, Timed]:
    """Run ``work()``; its result with the wall-clock and process CPU seconds it took."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, Timed(time.perf_counter() - wall, time.process_time() - cpu)


def build(config: Config, base: np.ndarray, ef_construction: int) -> tuple[faiss.Index, Timed, float]:
    before = rss_bytes()
    index = faiss.index_factory(base.shape[1], config.factory, faiss.METRIC_INNER_PRODUCT)
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efConstruction = ef_construction

    def train_and_add() -> None:
        index.train(base)
        index.add(base)

    _, took = timed(train_and_add)
    return index, took, (rss_bytes() - before) / 2**20


def search(index: faiss.Index, queries: np.ndarray, config: Config, value: int | None):
    if value is not None:
        faiss.ParameterSpace().set_index_parameter(index, config.name, value)
    index.search(queries[:10], K)  # warm-up
    (_, found), took = timed(lambda: index.search(queries, K))
    return found, len(queries) / took.wall_s


def measure(config: Config, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> None:
    index, took, memory_mb = build(config, base, args.ef_construction)
    print(
        f"{config.factory}: built {len(base):,} in {took.wall_s:.1f} s wall, {took.cpu_s:.1f} s CPU, "
        f"+{memory_mb:.0f} MB",
        flush=True,
    )
    for value in config.values or (None,):
        found, qps = search(index, queries, config, value)
        label = f"{config.name}={value}" if value is not None else "exact"
        print(
            f"| {config.factory} | {len(base):,} | {took.wall_s:.1f} | {took.cpu_s:.1f} | {memory_mb:.0f} "
            f"| {label} | {qps:,.0f} | {recall(found, truth):.4f} |",
            flush=True,
        )


def exact_search(base: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, Timed]:
    """The true top-``K`` of each query (an exhaustive inner-product search) and its time."""
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    (_, truth), took = timed(lambda: exact.search(queries, K))
    return truth, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--config", type=Config.parse, action="append", required=True)
    parser.add_argument("--ef-construction", type=int, default=128, help="HNSW efConstruction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    base = random_unit_vectors(args.n, args.dim, args.seed)
    queries = random_unit_vectors(args.queries, args.dim, args.seed + 1)
    truth, took = exact_search(base, queries)
    print(f"| exact (IndexFlatIP) | {len(base):,} | | | | | {len(queries) / took.wall_s:,.0f} | 1.0000 |")
    print("| index | vectors | build s wall | build s CPU | memory MB | search | queries/s | recall@10 |")
    for config in args.config:
        measure(config, base, queries, truth, args)


if __name__ == "__main__":
    main()
