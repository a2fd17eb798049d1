"""Approximate nearest neighbours: usearch, faiss-cpu and hnswlib on the same vectors.

Each library builds an HNSW graph with the same shape (``--connectivity`` links per node,
``--expansion-add`` candidates while inserting) over unit vectors (cosine similarity = inner
product), with the same number of threads. For each search depth in ``--ef`` it measures
queries/s (one batch of ``--queries`` queries) and recall@10 against exact search (numpy, in
blocks); for each library the build time, the memory the index adds to the process (resident
set size after minus before the build) and the size of its saved file.

Data sets: ``random`` (``--n`` vectors of ``--dim`` independent Gaussian values, normalised;
queries drawn the same way, not from the base): the worst case, with no structure for a graph
to follow; ``latent`` (``--n`` vectors of ``--dim`` values made from ``--latent-dim`` random
factors plus noise, as embeddings are; queries drawn the same way); ``movielens`` (the movie
embeddings of the recommended regression model of benchmarks/movielens.py, experiment (c),
trained on ua.base, or ``--model-dir`` of one saved earlier; every movie is a query).

    python benchmarks/ann.py [--datasets random,latent,movielens] [--n 1000000] [--dim 256] \
        [--libraries usearch,faiss,hnswlib] [--ef 64,128,256,512] [--threads 2] \
        [--data ../shared/data/ml-100k] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import DEFAULT_DATA  # noqa: E402

K = 10


def rss_bytes() -> int:
    """The process's resident set size now (Linux), after a garbage collection."""
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def random_unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks: no float64 copy of the whole set
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = unit_rows(block)
    return out


def latent_unit_vectors(n: int, dim: int, latent_dim: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """Random vectors with the structure embeddings have: a random linear image of
    ``latent_dim`` Gaussian factors (the same map for every call with this ``seed``), plus
    isotropic noise of ``noise`` times the signal's scale per value, normalised."""
    rng = np.random.default_rng(seed)
    mixing = (rng.standard_normal((latent_dim, dim)) / np.sqrt(latent_dim)).astype(np.float32)
    rng = np.random.default_rng([seed, n])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        block = rng.standard_normal((size, latent_dim), dtype=np.float32) @ mixing
        block += noise * rng.standard_normal((size, dim), dtype=np.float32)
        out[start : start + size] = unit_rows(block)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int, block: int = 100_000) -> np.ndarray:
    """Row ids of the k largest inner products per query, by brute force over blocks of base."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(base), block):
        scores = queries @ base[start : start + block].T
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate(
            [best_ids, np.arange(start, start + scores.shape[1] - k)[None].repeat(len(queries), 0)], axis=1
        )
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best_ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


class Usearch:
    name = "usearch"

    def __init__(self, dim: int, connectivity: int, expansion_add: int, threads: int):
        from usearch.index import Index

        self.index = Index(
            ndim=dim, metric="ip", dtype="f32", connectivity=connectivity, expansion_add=expansion_add
        )
        self.threads = threads

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=self.threads)

    def search(self, queries: np.ndarray, k: int, ef: int) -> np.ndarray:
        self.index.expansion_search = ef
        return self.index.search(queries, k, threads=self.threads).keys.astype(np.int64)

    def save(self, path: Path) -> None:
        self.index.save(str(path))


class Faiss:
    name = "faiss"

    def __init__(self, dim: int, connectivity: int, expansion_add: int, threads: int):
        import faiss

        faiss.omp_set_num_threads(threads)
        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(dim, connectivity, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = expansion_add

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int, ef: int) -> np.ndarray:
        self.index.hnsw.efSearch = ef
        return self.index.search(queries, k)[1]

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))


class Hnswlib:
    name = "hnswlib"

    def __init__(self, dim: int, connectivity: int, expansion_add: int, threads: int):
        import hnswlib

        self.dim, self.connectivity, self.expansion_add = dim, connectivity, expansion_add
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.set_num_threads(threads)

    def add(self, vectors: np.ndarray) -> None:
        self.index.init_index(
            max_elements=len(vectors), M=self.connectivity, ef_construction=self.expansion_add
        )
        self.index.add_items(vectors, np.arange(len(vectors)))

    def search(self, queries: np.ndarray, k: int, ef: int) -> np.ndarray:
        self.index.set_ef(max(ef, k))
        return self.index.knn_query(queries, k)[0].astype(np.int64)

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))


LIBRARIES = {cls.name: cls for cls in (Usearch, Faiss, Hnswlib)}


@dataclass
class Row:
    dataset: str
    library: str
    n: int
    build_s: float
    memory_mb: float
    file_mb: float
    ef: int
    queries_per_s: float
    recall_at_10: float


def measure(
    library: str,
    dataset: str,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    args: argparse.Namespace,
) -> list[Row]:
    before = rss_bytes()
    index = LIBRARIES[library](base.shape[1], args.connectivity, args.expansion_add, args.threads)
    started = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - started
    memory_mb = (rss_bytes() - before) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "index")
        file_mb = (Path(tmp) / "index").stat().st_size / 2**20
    print(
        f"  {dataset} {library}: built {len(base):,} in {build_s:.1f}s, +{memory_mb:.0f} MB, "
        f"file {file_mb:.0f} MB",
        flush=True,
    )
    rows = []
    for ef in args.ef:
        index.search(queries[:10], K, ef)  # warm-up
        started = time.perf_counter()
        found = index.search(queries, K, ef)
        qps = len(queries) / (time.perf_counter() - started)
        rows.append(
            Row(dataset, library, len(base), build_s, memory_mb, file_mb, ef, qps, recall(found, truth))
        )
        print(f"    ef={ef}: {qps:,.0f} queries/s, recall@10={rows[-1].recall_at_10:.4f}", flush=True)
    del index
    return rows


def exact_queries_per_s(base: np.ndarray, queries: np.ndarray) -> float:
    started = time.perf_counter()
    exact_top_k(base, queries, K)
    return len(queries) / (time.perf_counter() - started)


def movielens_vectors(args: argparse.Namespace) -> np.ndarray:
    from movielens_topk import movie_ids, trained_model  # trains a model: only for this data set

    model = trained_model(args.data, args.model_dir, args.seed)
    return unit_rows(model.embed(in1=[[int(movie)] for movie in movie_ids(args.data)]))


def datasets(args: argparse.Namespace):
    for name in args.datasets:
        if name == "random":
            yield (
                name,
                random_unit_vectors(args.n, args.dim, args.seed),
                random_unit_vectors(args.queries, args.dim, args.seed + 1),
            )
        elif name == "latent":
            yield (
                name,
                latent_unit_vectors(args.n, args.dim, args.latent_dim, args.seed),
                latent_unit_vectors(args.queries, args.dim, args.latent_dim, args.seed),
            )
        elif name == "movielens":
            movies = movielens_vectors(args)
            yield name, movies, movies
        else:
            raise SystemExit(f"unknown data set {name!r}; choose from random, latent, movielens")


def print_table(rows: list[Row], exact: dict[str, float]) -> None:
    print("\ndata set | library | vectors | build s | index memory MB | file MB | ef | queries/s | recall@10")
    print("---|---|---:|---:|---:|---:|---:|---:|---:")
    for r in rows:
        print(
            f"{r.dataset} | {r.library} | {r.n:,} | {r.build_s:.1f} | {r.memory_mb:.0f} | "
            f"{r.file_mb:.0f} | {r.ef} | "
            f"{r.queries_per_s:,.0f} | {r.recall_at_10:.4f}"
        )
    for name, qps in exact.items():
        print(f"{name} | exact (numpy matmul) | | | | | | {qps:,.0f} | 1.0000")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["random", "latent", "movielens"])
    parser.add_argument("--libraries", type=lambda s: s.split(","), default=list(LIBRARIES))
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--latent-dim", type=int, default=32, help="factors behind the 'latent' vectors")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--connectivity", type=int, default=16, help="HNSW links per node (M)")
    parser.add_argument("--expansion-add", type=int, default=128, help="HNSW efConstruction")
    parser.add_argument("--ef", type=lambda s: [int(v) for v in s.split(",")], default=[64, 128, 256, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="directory holding ua.base and ua.test"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="a saved recommended-regression MovieLens model (trained and saved here when missing)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, exact = [], {}
    for name, base, queries in datasets(args):
        truth = exact_top_k(base, queries, K)
        exact[name] = exact_queries_per_s(base, queries)
        for library in args.libraries:
            rows += measure(library, name, base, queries, truth, args)
        del base, queries
    print_table(rows, exact)


if __name__ == "__main__":
    main()
