"""Top-k items per query by the model's own score (the comparator and MLP, not a distance).

Each query and each item is embedded once; then blocks of queries x all items go through
``net.score_encodings`` together, so scoring n queries against m items costs n + m encoder
passes and n x m cheap head evaluations. For softmax models the score is the probability of
one class.

``candidates=N`` first takes N candidates from an inner-product index (faiss HNSW) of the item
encodings, then scores only those exactly. The model's score is no inner product of the two
encodings (its MLP may even reverse one), so the query vector searched with is the gradient of
the query's score with respect to the item encoding, taken at the mean item encoding: a
first-order expansion score(q, b) ~ score(q, mean) + grad . (b - mean), exact for a linear MLP
over hadamard/concat comparators, close for a mildly non-linear one. Much less work for large
catalogues, at the price of missing items that the expansion ranks low.

The exclude file says which items a query must not get (what a user has already seen): one
line per query, ``{"query": <query id>, "items": [<item id>, ...]}``; a query may have several
lines. Ids are those of the query and item records (default: their line numbers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import Object2VecError
from .index import Id, NeighborIndex
from .runtime import Logger
from .serving.predictor import Predictor
from .training.data import DataError, iter_json_lines

#: Pairs scored per pass of the head (queries per block = this // items).
PAIRS_PER_BLOCK = 1 << 17


class RecommendError(Object2VecError):
    """The request cannot be answered as given (sides, class, k)."""


@dataclass
class Recommendations:
    """Per query: the positions of its best items (into the item list) and their scores."""

    items: list[np.ndarray]
    scores: list[np.ndarray]


def score_column(predictor: Predictor, class_index: int | None) -> int | None:
    """Which output is the score: None for regression, else a valid class."""
    if predictor.net.regression:
        return None
    classes = predictor.hp.num_classes
    index = 1 if class_index is None else class_index
    if not 0 <= index < classes:
        raise RecommendError(f"--class {index} is outside [0, {classes}) for this softmax model")
    return index


@torch.inference_mode()
def pair_scores(
    predictor: Predictor,
    query_codes: torch.Tensor,
    item_codes: torch.Tensor,
    query_side: str,
    column: int | None,
) -> torch.Tensor:
    """Scores ``[q, m]`` of q query encodings against m item encodings (row-aligned pairs
    expanded without copying the encoders' work)."""
    q, m = len(query_codes), len(item_codes)
    a = query_codes.repeat_interleave(m, dim=0)
    b = item_codes.repeat(q, 1)
    if query_side == "in1":
        a, b = b, a
    scores = predictor.net.score_encodings(a, b).float()
    if column is not None:
        scores = scores[:, column]
    return scores.reshape(q, m)


def _encodings(predictor: Predictor, side: str, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    return torch.from_numpy(predictor.embed(**{side: sequences})).to(predictor.head_device)


def _top(
    scores: torch.Tensor, positions: np.ndarray, banned: set[int] | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of one query's scored positions, banned positions left out."""
    if banned:
        keep = torch.from_numpy(~np.isin(positions, list(banned)))
        scores, positions = scores[keep], positions[keep.numpy()]
    best = torch.topk(scores, min(k, len(scores)))
    return positions[best.indices.numpy()], best.values.numpy()


def recommend(
    predictor: Predictor,
    queries: Sequence[Sequence[int]],
    items: Sequence[Sequence[int]],
    k: int = 10,
    *,
    query_side: str = "in0",
    exclude: Sequence[set[int] | None] | None = None,
    class_index: int | None = None,
    candidates: int | None = None,
) -> Recommendations:
    """The ``k`` best items for each query by the model's score. ``queries`` are inputs of
    ``query_side`` (in0 or in1) and ``items`` of the other side; ``exclude[i]`` holds item
    positions query i must not get."""
    if query_side not in ("in0", "in1"):
        raise RecommendError(f"query_side={query_side!r}; valid: in0, in1")
    if k < 1:
        raise RecommendError(f"k must be at least 1, got {k}")
    item_side = "in1" if query_side == "in0" else "in0"
    column = score_column(predictor, class_index)
    exclude = list(exclude) if exclude is not None else [None] * len(queries)
    query_codes = _encodings(predictor, query_side, queries)
    item_codes = _encodings(predictor, item_side, items)
    if candidates is not None and candidates < len(items):
        return _rescored(predictor, query_codes, item_codes, query_side, column, exclude, k, candidates)
    return _exhaustive(predictor, query_codes, item_codes, query_side, column, exclude, k)


def _exhaustive(predictor, query_codes, item_codes, query_side, column, exclude, k) -> Recommendations:
    block = max(1, PAIRS_PER_BLOCK // len(item_codes))
    positions = np.arange(len(item_codes))
    found: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for start in range(0, len(query_codes), block):
        scores = pair_scores(predictor, query_codes[start : start + block], item_codes, query_side, column)
        for offset, row in enumerate(scores):
            best, best_scores = _top(row, positions, exclude[start + offset], k)
            found.append(best)
            values.append(best_scores)
    return Recommendations(found, values)


def score_gradients(
    predictor: Predictor,
    query_codes: torch.Tensor,
    item_codes: torch.Tensor,
    query_side: str,
    column: int | None,
) -> torch.Tensor:
    """d score(query, b) / d b at b = the mean item encoding, one row per query: the direction
    in item space along which each query's score rises fastest."""
    mean_item = item_codes.mean(0, keepdim=True).expand(len(query_codes), -1).clone().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        a, b = (query_codes.clone(), mean_item) if query_side == "in0" else (mean_item, query_codes.clone())
        scores = predictor.net.score_encodings(a, b).float()
        if column is not None:
            scores = scores[:, column]
        (gradient,) = torch.autograd.grad(scores.sum(), mean_item)
    return gradient


def _rescored(
    predictor, query_codes, item_codes, query_side, column, exclude, k, candidates
) -> Recommendations:
    """ANN candidates by the linearised score, then the model's exact scores."""
    index = NeighborIndex.build(item_codes.cpu().numpy(), metric="ip")
    most_banned = max((len(banned) for banned in exclude if banned), default=0)
    directions = score_gradients(predictor, query_codes, item_codes, query_side, column)
    positions, _ = index.search(directions.cpu().numpy(), candidates + most_banned)
    found: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for row, (code, picked) in enumerate(zip(query_codes, positions)):
        picked = np.asarray(picked, dtype=np.int64)
        scores = pair_scores(predictor, code[None], item_codes[torch.from_numpy(picked)], query_side, column)[
            0
        ]
        best, best_scores = _top(scores, picked, exclude[row], k)
        found.append(best)
        values.append(best_scores)
    return Recommendations(found, values)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_exclude(
    path: str | os.PathLike, query_ids: Sequence[Id], item_ids: Sequence[Id], log: Logger = _to_stderr
) -> list[set[int]]:
    """Per query (in ``query_ids`` order): the item positions it must not get. Ids the query or
    item files do not hold are counted and reported through ``log`` (stderr), not fatal (an
    exclude file of all users may serve a run over some of them)."""
    query_at = {query_id: position for position, query_id in enumerate(query_ids)}
    item_at = {item_id: position for position, item_id in enumerate(item_ids)}
    banned: list[set[int]] = [set() for _ in query_ids]
    unknown_queries = unknown_items = 0
    for file, line, obj in iter_json_lines(path):
        query, items = _exclude_record(obj, file, line)
        if query not in query_at:
            unknown_queries += 1
            continue
        known = [item_at[item] for item in items if item in item_at]
        unknown_items += len(items) - len(known)
        banned[query_at[query]].update(known)
    if unknown_queries or unknown_items:
        log(
            f"recommend: {path}: {unknown_queries} lines name a query and {unknown_items} entries an item "
            "not in the inputs; ignored"
        )
    return banned


def _exclude_record(obj: Any, file: str, line: int) -> tuple[Id, list[Id]]:
    where = f"{file}: line {line}"
    if not isinstance(obj, dict) or "query" not in obj or not isinstance(obj.get("items"), list):
        raise DataError(f'{where}: expected {{"query": <query id>, "items": [<item id>, ...]}}')
    for value in (obj["query"], *obj["items"]):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(f"{where}: ids must be integers or strings, got {value!r}")
    return obj["query"], obj["items"]


def recommendation_objects(
    recommendations: Recommendations, query_ids: Sequence[Id], item_ids: Sequence[Id]
) -> list[dict]:
    """``{"query": <id>, "items": [{"id": ..., "score": ...}, ...]}`` per query, best first."""
    return [
        {"query": query_id, "items": [{"id": item_ids[p], "score": float(s)} for p, s in zip(best, scores)]}
        for query_id, best, scores in zip(query_ids, recommendations.items, recommendations.scores)
    ]
