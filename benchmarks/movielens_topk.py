"""MovieLens 100k top-10 ranking (ua.base -> ua.test): the model's own scores, cosine
neighbours of a user's liked movies, and the popularity baseline.

The model is the previous recommended rating-regression setting of benchmarks/movielens.py
(``SMALL_REGRESSION``, 64 dimensions; the README's figures were measured with it), trained on
ua.base; early stopping watches a random 5% of ua.base held out for it, so nothing of ua.test is
seen before the ranking is scored. For every user, the candidates are the movies
they did not rate in ua.base; the relevant ones are those they rated >= 4 in ua.test. Metrics
are averaged over the users with at least one relevant movie:

- ``model``: ``object2vec recommend``: every candidate scored by the comparator and MLP;
- ``neighbours``: an ``object2vec index`` of the movie embeddings (cosine); a candidate's score
  is the sum of its cosine similarities to the user's liked movies (rated >= 4 in ua.base)
  among their ``--neighbours`` nearest neighbours;
- ``popularity``: the movies rated most often in ua.base, the same list for everyone.

    python benchmarks/movielens_topk.py [--data ../shared/data/ml-100k] [--model-dir DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import object2vec
from object2vec import Object2Vec
from object2vec.recommend import recommend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import DEFAULT_DATA, SMALL_REGRESSION, read_ratings  # noqa: E402

VALIDATION_SHARE = 0.05


def trained_model(data_dir: Path, model_dir: Path | None, seed: int) -> Object2Vec:
    """The previous recommended regression model on ua.base: loaded from ``model_dir`` when it holds one,
    else trained (early stopping on a held-out 5% of ua.base) and saved there when given."""
    if model_dir is not None and (model_dir / "model.safetensors").is_file():
        return object2vec.load(model_dir)
    ratings = read_ratings(data_dir / "ua.base", binarise=False)
    held_out = np.random.default_rng(seed).random(len(ratings)) < VALIDATION_SHARE
    train, validation = ratings.subset(np.flatnonzero(~held_out)), ratings.subset(np.flatnonzero(held_out))
    started = time.perf_counter()
    model = Object2Vec(SMALL_REGRESSION).fit(
        train,
        validation=validation,
        seed=seed,
        progress=False,
        log=lambda line: print("   ", line, flush=True),
    )
    test = read_ratings(data_dir / "ua.test", binarise=False)
    as_lists = lambda column: column.tokens.reshape(-1, 1).tolist()  # noqa: E731  (one ID per sequence)
    mse = float(np.mean((model.predict(as_lists(test.in0), as_lists(test.in1)) - test.labels) ** 2))
    print(f"trained in {time.perf_counter() - started:.0f}s; ua.test MSE {mse:.4f}", flush=True)
    if model_dir is not None:
        model.save(model_dir)
    return model


K = 10
LIKED = 4  # a rating of 4 or 5 counts as liked (relevant)


def movie_ids(data_dir: Path) -> np.ndarray:
    """Every movie ID of the data set, 1 .. 1682 (the vocabulary of 1684 leaves 0 and 1683 unused)."""
    return np.arange(1, int(read_table(data_dir / "u.data")[:, 1].max()) + 1)


def read_table(path: Path) -> np.ndarray:
    """``user item rating timestamp`` lines -> int64 ``[n, 3]`` (user, item, rating)."""
    return np.loadtxt(path, dtype=np.int64, usecols=(0, 1, 2))


def per_user(table: np.ndarray, users: np.ndarray, min_rating: int = 1) -> list[set[int]]:
    """For each user: the items they rated at least ``min_rating``."""
    out: dict[int, set[int]] = {int(u): set() for u in users}
    for user, item, rating in table:
        if rating >= min_rating:
            out[int(user)].add(int(item))
    return [out[int(u)] for u in users]


def scores_at_k(ranked: list[list[int]], relevant: list[set[int]]) -> dict[str, float]:
    """precision@K, recall@K and NDCG@K (binary relevance), averaged over users with a relevant item."""
    precision, recall, ndcg = [], [], []
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    for items, wanted in zip(ranked, relevant):
        if not wanted:
            continue
        hits = np.array([item in wanted for item in items[:K]], dtype=float)
        precision.append(hits.sum() / K)
        recall.append(hits.sum() / len(wanted))
        ndcg.append((hits * discounts[: len(hits)]).sum() / discounts[: min(len(wanted), K)].sum())
    return {
        "precision@10": float(np.mean(precision)),
        "recall@10": float(np.mean(recall)),
        "ndcg@10": float(np.mean(ndcg)),
        "users": len(precision),
    }


def by_model(
    model: Object2Vec,
    users: np.ndarray,
    movies: np.ndarray,
    seen: list[set[int]],
    candidates: int | None = None,
) -> list[list[int]]:
    """``recommend``: every unseen movie scored by the comparator and MLP (or only ANN candidates)."""
    position = {int(m): p for p, m in enumerate(movies)}
    exclude = [{position[m] for m in rated} for rated in seen]
    found = recommend(
        model.predictor,
        [[int(u)] for u in users],
        [[int(m)] for m in movies],
        K,
        exclude=exclude,
        candidates=candidates,
    )
    return [movies[best].tolist() for best in found.items]


def by_neighbours(
    model: Object2Vec,
    movies: np.ndarray,
    seen: list[set[int]],
    liked: list[set[int]],
    neighbours: int,
    popular: list[int],
) -> list[list[int]]:
    """Item-to-item: a cosine index of the movie embeddings; an unseen movie scores the sum of its
    similarities to the user's liked movies among their ``neighbours`` nearest. Users who liked
    nothing get the popularity list."""
    index = model.build_index([[int(m)] for m in movies], side="in1", metric="cosine", ids=movies.tolist())
    vector_of = dict(zip(movies.tolist(), model.embed(in1=[[int(m)] for m in movies])))
    ranked = []
    for rated, likes in zip(seen, liked):
        if not likes:
            ranked.append([m for m in popular if m not in rated][:K])
            continue
        ids, scores = index.search(np.stack([vector_of[m] for m in sorted(likes)]), neighbours + 1)
        totals: dict[int, float] = {}
        for row_ids, row_scores in zip(ids, scores):
            for movie, score in zip(row_ids, row_scores):
                if movie not in rated:
                    totals[movie] = totals.get(movie, 0.0) + float(score)
        best = sorted(totals, key=totals.get, reverse=True)[:K]
        ranked.append(best + [m for m in popular if m not in rated and m not in best][: K - len(best)])
    return ranked


def by_popularity(popular: list[int], seen: list[set[int]]) -> list[list[int]]:
    return [[m for m in popular if m not in rated][:K] for rated in seen]


def timed(run):
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="directory holding ua.base and ua.test"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="a saved model to use (trained and saved there when it holds none)",
    )
    parser.add_argument("--neighbours", type=int, default=50, help="nearest movies taken per liked movie")
    parser.add_argument("--candidates", type=int, default=200, help="ANN candidates for the rescoring row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = trained_model(args.data, args.model_dir, args.seed)
    base, test = read_table(args.data / "ua.base"), read_table(args.data / "ua.test")
    users = np.unique(base[:, 0])
    movies = movie_ids(args.data)
    seen, liked = per_user(base, users), per_user(base, users, LIKED)
    relevant = per_user(test, users, LIKED)
    counts = np.bincount(base[:, 1], minlength=len(movies) + 1)[1:]
    popular = (np.argsort(-counts, kind="stable") + 1).tolist()
    rows = []
    for name, run in (
        ("model scores (recommend)", lambda: by_model(model, users, movies, seen)),
        (
            f"model scores, {args.candidates} ANN candidates",
            lambda: by_model(model, users, movies, seen, args.candidates),
        ),
        (
            f"cosine neighbours of liked movies (index, {args.neighbours} each)",
            lambda: by_neighbours(model, movies, seen, liked, args.neighbours, popular),
        ),
        ("popularity (most rated in ua.base)", lambda: by_popularity(popular, seen)),
    ):
        ranked, seconds = timed(run)
        rows.append((name, scores_at_k(ranked, relevant), seconds, ranked))
        print(f"{name}: {rows[-1][1]} in {seconds:.2f}s", flush=True)
    exhaustive, rescored = rows[0][3], rows[1][3]
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(exhaustive, rescored)])
    print(
        f"\nusers with a relevant movie in ua.test: {rows[0][1]['users']} of {len(users)}; "
        f"ANN-candidate top-10 overlap with the exhaustive top-10: {overlap:.3f}"
    )
    print("\nmethod | precision@10 | recall@10 | NDCG@10 | seconds (all users)")
    print("---|---:|---:|---:|---:")
    for name, metrics, seconds, _ in rows:
        print(
            f"{name} | {metrics['precision@10']:.4f} | {metrics['recall@10']:.4f} | "
            f"{metrics['ndcg@10']:.4f} | "
            f"{seconds:.2f}"
        )


if __name__ == "__main__":
    main()
