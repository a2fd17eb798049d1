"""A picture of the MovieLens model: training curves and the movie embeddings by genre.

Writes the movies rated at least ``--min-ratings`` times in ua.base as items
(``{"in1": [movie], "id": movie, "genre": ..., "title": ...}``) and runs ``object2vec plot`` on
the regression model of benchmarks/movielens_topk.py, SMALL_REGRESSION (trained and saved to
``--model-dir`` when it holds none). A movie has up to 19 genre flags; its colour is its most
distinctive genre, the first it has in ``GENRE_PRIORITY`` (rare, specific genres before the
common Drama and Comedy, which many movies carry beside another).

    python benchmarks/movielens_map.py [--data ../shared/data/ml-100k] [--model-dir DIR] \
        [--min-ratings 20] [--map tsne|pca] --output docs/movielens_map.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import orjson

from object2vec.plots import plot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from movielens import DEFAULT_DATA  # noqa: E402
from movielens_topk import read_table, trained_model  # noqa: E402

GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
GENRE_PRIORITY = [
    "Animation",
    "Children's",
    "Documentary",
    "Horror",
    "Western",
    "Film-Noir",
    "Musical",
    "War",
    "Sci-Fi",
    "Crime",
    "Mystery",
    "Thriller",
    "Action",
    "Adventure",
    "Fantasy",
    "Romance",
    "Comedy",
    "Drama",
    "unknown",
]


def main_genre(flags: list[str]) -> str:
    held = {name for name, flag in zip(GENRES, flags) if flag == "1"}
    return next((genre for genre in GENRE_PRIORITY if genre in held), "unknown")


def movie_records(data_dir: Path, min_ratings: int) -> list[dict]:
    """u.item (Latin-1, ``|``-separated) -> one item record per movie rated often enough."""
    counts = np.bincount(read_table(data_dir / "ua.base")[:, 1], minlength=1700)
    records = []
    for line in (data_dir / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        movie = int(fields[0])
        if counts[movie] >= min_ratings:
            records.append(
                {"in1": [movie], "id": movie, "genre": main_genre(fields[5:24]), "title": fields[1]}
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument(
        "--min-ratings", type=int, default=20, help="leave out movies rated fewer times in ua.base"
    )
    parser.add_argument("--map", choices=["tsne", "pca"], default="tsne")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = trained_model(args.data, args.model_dir, args.seed)
    records = movie_records(args.data, args.min_ratings)
    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "movies.jsonl"
        items.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        written = plot(
            model,
            args.output,
            items=items,
            label_field="genre",
            method=args.map,
            seed=args.seed,
        )
    print(f"{len(records)} movies mapped; written to {written}")


if __name__ == "__main__":
    main()
