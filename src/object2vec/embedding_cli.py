"""The commands that use trained embeddings: ``index``, ``neighbors``, ``recommend``, ``plot``.

Wiring only, like :mod:`object2vec.cli` (which registers these parsers through
:data:`EMBEDDING_COMMANDS`; this module never imports it): every command calls the functions
below, which are plain Python (load, read records, call the API, write). Their mistakes raise
:class:`~object2vec.errors.Object2VecError`, which the CLI prints on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from .api import load
from .cli_options import add_device, positive_int
from .index import (
    EXPANSION_SEARCH,
    METRICS,
    SIDES,
    NeighborIndex,
    NeighborIndexError,
    load_index,
    weights_fingerprint,
)
from .neighbors import (
    MAX_K,
    check_query_sides,
    neighbor_objects,
    query_vectors,
    read_items,
    read_queries,
    write_json_lines,
)
from .recommend import RecommendError, read_exclude, recommend, recommendation_objects


def _k(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_K:
        raise argparse.ArgumentTypeError(f"must be in [1, {MAX_K}], got {value}")
    return value


def _vocab_sizes(model) -> tuple[int, int]:
    return model.hp.enc0_vocab_size, model.hp.enc1_vocab_size


# ---- index --------------------------------------------------------------------------------------


def build_index_file(
    model_dir: str | os.PathLike,
    items_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    side: str | None = None,
    metric: str = "cosine",
    device: str | None = None,
) -> NeighborIndex:
    """Embed every item of a records file and save their index to ``output``."""
    model = load(model_dir, device=device)
    items = read_items(items_path, _vocab_sizes(model), side)
    index = model.build_index(items.sequences, side=items.side, metric=metric, ids=items.ids)
    index.save(output)
    return index


def _index_parser(sub) -> None:
    p = sub.add_parser("index", help="embed items and build a nearest-neighbour index of them")
    p.add_argument("--model-dir", required=True, help="model directory or model.tar.gz")
    p.add_argument(
        "--input",
        required=True,
        help='items, JSON Lines: {"in1": [...], "id": ...} (id optional: default the line number)',
    )
    p.add_argument("--output", required=True, help="the index directory to write")
    p.add_argument(
        "--side", choices=SIDES, default=None, help="which input to embed (default: the one the records name)"
    )
    p.add_argument(
        "--metric",
        choices=list(METRICS),
        default="cosine",
        help="cosine (similarity), ip (inner product) or l2 (Euclidean distance)",
    )
    add_device(p)
    p.set_defaults(run=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    index = build_index_file(
        args.model_dir, args.input, args.output, side=args.side, metric=args.metric, device=args.device
    )
    print(
        f"index of {len(index)} {index.side} embeddings ({index.metric}, {index.dim} values) "
        f"written to {args.output}"
    )
    return 0


# ---- neighbors ----------------------------------------------------------------------------------


def find_neighbors(
    index_path: str | os.PathLike,
    queries_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    k: int = 10,
    model_dir: str | os.PathLike | None = None,
    force: bool = False,
    device: str | None = None,
    expansion_search: int | None = None,
) -> int:
    """Answer every query of a file with its ``k`` nearest items; returns the number of queries."""
    index = load_index(index_path)
    where = f"index {index_path}"
    model = None
    if model_dir is not None:
        model = load(model_dir, device=device)
        index.check_compatible(weights_fingerprint(model.model_dir), force=force, where=where)
    queries = read_queries(queries_path, _vocab_sizes(model) if model is not None else None, index.dim)
    check_query_sides(index, queries, force, where)
    if model is not None and model.hp.enc_dim != index.dim:
        raise NeighborIndexError(
            f"{where} holds {index.dim}-dimensional vectors but the model embeds to {model.hp.enc_dim}"
        )
    vectors = query_vectors(queries, model.embed if model is not None else None, index.dim)
    ids, scores = index.search(vectors, k, expansion_search=expansion_search)
    write_json_lines(neighbor_objects(ids, scores), output)
    return len(queries)


def _neighbors_parser(sub) -> None:
    p = sub.add_parser("neighbors", help="the nearest indexed items of each query")
    p.add_argument("--index", required=True, help="an index directory (object2vec index)")
    p.add_argument(
        "--input",
        required=True,
        help='queries, JSON Lines: {"in0": [...]}, {"in1": [...]} or {"embedding": [...]}',
    )
    p.add_argument(
        "--output", required=True, help='JSON Lines, one {"neighbors": [{"id", "score"}, ...]} per query'
    )
    p.add_argument(
        "--model-dir", default=None, help="the model that built the index (needed for in0/in1 queries)"
    )
    p.add_argument("-k", type=_k, default=10, help="neighbours per query")
    p.add_argument(
        "--force", action="store_true", help="search even if the index came from another model or side"
    )
    p.add_argument(
        "--ef",
        type=positive_int,
        default=None,
        help=f"HNSW search depth (default {EXPANSION_SEARCH}): deeper is slower and finds more of the "
        "true neighbours",
    )
    add_device(p)
    p.set_defaults(run=_run_neighbors)


def _run_neighbors(args: argparse.Namespace) -> int:
    count = find_neighbors(
        args.index,
        args.input,
        args.output,
        k=args.k,
        model_dir=args.model_dir,
        force=args.force,
        device=args.device,
        expansion_search=args.ef,
    )
    print(f"{count} queries answered in {args.output}")
    return 0


# ---- recommend ----------------------------------------------------------------------------------


def recommend_files(
    model_dir: str | os.PathLike,
    queries_path: str | os.PathLike,
    items_path: str | os.PathLike,
    *,
    k: int = 10,
    exclude_path: str | os.PathLike | None = None,
    class_index: int | None = None,
    candidates: int | None = None,
    device: str | None = None,
) -> list[dict]:
    """``recommend`` over records files: one ``{"query", "items"}`` object per query."""
    model = load(model_dir, device=device)
    queries = read_items(queries_path, _vocab_sizes(model))
    items = read_items(items_path, _vocab_sizes(model))
    if queries.side == items.side:
        raise RecommendError(
            f"queries and items both name {queries.side}; a pair is one in0 and one in1, so give the "
            "queries as one and the items as the other"
        )
    exclude = read_exclude(exclude_path, queries.ids, items.ids) if exclude_path else None
    found = recommend(
        model.predictor,
        queries.sequences,
        items.sequences,
        k,
        query_side=queries.side,
        exclude=exclude,
        class_index=class_index,
        candidates=candidates,
    )
    return recommendation_objects(found, queries.ids, items.ids)


def _recommend_parser(sub) -> None:
    p = sub.add_parser("recommend", help="the k best items per query by the model's own score")
    p.add_argument("--model-dir", required=True, help="model directory or model.tar.gz")
    p.add_argument(
        "--queries", required=True, help='JSON Lines {"in0": [...], "id": ...} (id optional: line number)'
    )
    p.add_argument("--items", required=True, help='JSON Lines {"in1": [...], "id": ...} (the other side)')
    p.add_argument(
        "--output",
        default=None,
        help='JSON Lines, one {"query", "items": [{"id", "score"}]} per query (default: standard output)',
    )
    p.add_argument("-k", type=_k, default=10, help="items per query")
    p.add_argument(
        "--exclude",
        default=None,
        help='JSON Lines {"query": <query id>, "items": [<item id>, ...]}: '
        "items a query must not get (e.g. already seen)",
    )
    p.add_argument(
        "--class",
        dest="class_index",
        type=int,
        default=None,
        help="softmax models: the class whose probability is the score (default 1)",
    )
    p.add_argument(
        "--candidates",
        type=positive_int,
        default=None,
        help="first take this many candidates by inner product (ANN), then score only those",
    )
    add_device(p)
    p.set_defaults(run=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    objects = recommend_files(
        args.model_dir,
        args.queries,
        args.items,
        k=args.k,
        exclude_path=args.exclude,
        class_index=args.class_index,
        candidates=args.candidates,
        device=args.device,
    )
    if args.output:
        write_json_lines(objects, args.output)
        print(f"{len(objects)} queries answered in {args.output}")
    else:
        sys.stdout.buffer.write(b"".join(orjson.dumps(obj) + b"\n" for obj in objects))
    return 0


# ---- plot ---------------------------------------------------------------------------------------


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="a PNG of the training curves and a 2-D map of item embeddings")
    p.add_argument("--model-dir", required=True, help="model directory (its history.json gives the curves)")
    p.add_argument("--input", default=None, help='items to map, JSON Lines {"in1": [...], "genre": ...}')
    p.add_argument("--label-field", default=None, help="the record field that colours the map")
    p.add_argument("--map", choices=["tsne", "pca"], default="tsne", help="the 2-D projection")
    p.add_argument("--output", required=True, help="the PNG file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from .plots import plot  # matplotlib and scikit-learn only when drawing

    options = dict(items=args.input, label_field=args.label_field, method=args.map, seed=args.seed)
    print(f"plot written to {plot(load(args.model_dir), args.output, **options)}")
    return 0


#: The parsers of these commands, which :mod:`object2vec.cli` registers.
EMBEDDING_COMMANDS = [_index_parser, _neighbors_parser, _recommend_parser, _plot_parser]
