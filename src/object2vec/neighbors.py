"""Items and queries as records: JSON Lines files for ``object2vec index``, ``neighbors`` and
``recommend``, and the instances of a ``POST /neighbors`` request (decoded by
:mod:`object2vec.serving.neighbors`).

An item is ``{"in1": [...], "id": ...}`` (or ``in0``): one input of one side, and an optional
id (an integer or a string; default: its line number in the file). A query is one input to
embed (``{"in0": [...]}`` or ``{"in1": [...]}``) or a vector (``{"embedding": [...]}``).
Validation reuses :mod:`object2vec.serving.protocol` (the token rule and the wording of where a
mistake sits), so a file names ``file: line N: 'in1' ...`` and a request names
``instance i: 'in1' ...`` for the same mistakes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .artifact import atomic_write_bytes
from .columns import short_repr
from .index import SIDES, Id, NeighborIndex, NeighborIndexError
from .serving.protocol import RequestError, check_sequence
from .serving.protocol import describe_instance as where_is
from .training.data import DataError, iter_json_lines

#: The most neighbours one query may ask for.
MAX_K = 1000
DEFAULT_K = 10
QUERY_FIELDS = (*SIDES, "embedding")


@dataclass
class Items:
    """Inputs of one side with their ids, in file order."""

    side: str
    sequences: list[list[int]] = field(default_factory=list)
    ids: list[Id] = field(default_factory=list)


@dataclass
class Query:
    """One query: an input of ``side`` to embed, or a ready ``vector`` (``side`` None)."""

    side: str | None
    tokens: list[int] | None = None
    vector: list[float] | None = None
    id: Id | None = None


def check_id(obj: dict, default: Id, index: int | None, line: int | None) -> Id:
    value = obj.get("id", default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RequestError(
            f"{where_is(index, line)}: 'id' must be an integer or a string, got {value!r}",
            index=index,
            field="id",
        )
    return value


def check_vector(value: Any, dim: int | None, index: int | None, line: int | None) -> list[float]:
    """A list of ``dim`` finite numbers; else a 400 naming the instance."""
    where = f"{where_is(index, line)}: 'embedding'"
    if not isinstance(value, list) or not value:
        raise RequestError(f"{where} must be a non-empty list of numbers", index=index, field="embedding")
    for number in value:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise RequestError(
                f"{where} holds {number!r}, not a finite number", index=index, field="embedding"
            )
    if dim is not None and len(value) != dim:
        raise RequestError(
            f"{where} has {len(value)} values; the index holds {dim}-dimensional vectors",
            index=index,
            field="embedding",
        )
    return value


def check_query(
    obj: Any,
    index: int | None,
    vocab_sizes: Sequence[int] | None,
    dim: int | None,
    caps: Sequence[int | None] = (None, None),
    line: int | None = None,
) -> Query:
    """One query object -> :class:`Query`, validated; exactly one of in0, in1, embedding.
    ``vocab_sizes`` None: there is no model, so only embeddings are accepted."""
    where = where_is(index, line)
    if not isinstance(obj, dict):
        raise RequestError(
            f"{where} must be an object with 'in0', 'in1' or 'embedding', got {short_repr(obj)}", index=index
        )
    given = [name for name in QUERY_FIELDS if obj.get(name) is not None]
    if len(given) != 1:
        problem = "has none of" if not given else f"has {' and '.join(repr(g) for g in given)}; give one of"
        raise RequestError(f"{where} {problem} 'in0', 'in1', 'embedding'", index=index)
    name = given[0]
    query_id = check_id(obj, index if line is None else line, index, line)
    if name == "embedding":
        return Query(None, vector=check_vector(obj[name], dim, index, line), id=query_id)
    if vocab_sizes is None:
        raise RequestError(
            f"{where}: '{name}' needs a model to embed it (--model-dir)", index=index, field=name
        )
    side = SIDES.index(name)
    tokens = check_sequence(obj[name], index, name, vocab_sizes[side], caps[side], line)
    return Query(name, tokens=tokens, id=query_id)


def _file_error(file: str, exc: RequestError) -> DataError:
    return DataError(f"{file}: {exc}")


def read_items(path: str | os.PathLike, vocab_sizes: Sequence[int], side: str | None = None) -> Items:
    """Every record of an items file (``{"in1": [...], "id": ...}``): one side for all records,
    ``side`` or else the one field the records name; ids unique, default the line number."""
    items: Items | None = None
    seen: dict[Id, int] = {}
    for file, line, obj in iter_json_lines(path):
        if not isinstance(obj, dict):
            raise DataError(f'{file}: line {line}: expected an object such as {{"in1": [...], "id": ...}}')
        record_side = side or _record_side(obj, file, line)
        if items is None:
            items = Items(record_side)
        elif record_side != items.side:
            raise DataError(
                f"{file}: line {line}: names {record_side} but earlier records name {items.side}; one "
                "index holds one side (or pass --side)"
            )
        try:
            tokens = check_sequence(
                obj.get(record_side), None, record_side, vocab_sizes[SIDES.index(record_side)], line=line
            )
            item_id = check_id(obj, line, None, line)
        except RequestError as exc:
            raise _file_error(file, exc) from None
        if item_id in seen:
            raise DataError(f"{file}: line {line}: id {item_id!r} was already given on line {seen[item_id]}")
        seen[item_id] = line
        items.sequences.append(tokens)
        items.ids.append(item_id)
    if items is None:
        raise DataError(f"{path}: no records")
    return items


def _record_side(obj: dict, file: str, line: int) -> str:
    named = [side for side in SIDES if obj.get(side) is not None]
    if len(named) != 1:
        problem = "names neither 'in0' nor 'in1'" if not named else "names both 'in0' and 'in1'"
        raise DataError(f"{file}: line {line}: {problem}; say which side to use with --side")
    return named[0]


def read_queries(path: str | os.PathLike, vocab_sizes: Sequence[int] | None, dim: int | None) -> list[Query]:
    """Every query of a JSON Lines file, validated (``file: line N: ...`` on the first bad one)."""
    queries = []
    for file, line, obj in iter_json_lines(path):
        try:
            queries.append(check_query(obj, None, vocab_sizes, dim, line=line))
        except RequestError as exc:
            raise _file_error(file, exc) from None
    if not queries:
        raise DataError(f"{path}: no records")
    return queries


def query_vectors(queries: Sequence[Query], embed: Callable[..., np.ndarray] | None, dim: int) -> np.ndarray:
    """The vectors of ``queries`` in order: their own, or ``embed(in0=[...])`` / ``embed(in1=[...])``
    of their inputs (one batched call per side)."""
    out = np.empty((len(queries), dim), dtype=np.float32)
    for side in (None, *SIDES):
        rows = [i for i, q in enumerate(queries) if q.side == side]
        if not rows:
            continue
        if side is None:
            out[rows] = np.asarray([queries[i].vector for i in rows], dtype=np.float32)
        else:
            out[rows] = embed(**{side: [queries[i].tokens for i in rows]})
    return out


def check_query_sides(
    index: NeighborIndex, queries: Sequence[Query], force: bool, where: str = "the index"
) -> None:
    """Every embedded query must come from the encoder the index was built with."""
    for position, query in enumerate(queries):
        if query.side is not None:
            try:
                index.check_compatible(side=query.side, force=force, where=where)
            except NeighborIndexError as exc:
                raise NeighborIndexError(
                    f"query {query.id if query.id is not None else position}: {exc}"
                ) from None


def neighbor_objects(ids: Sequence[Sequence[Id]], scores: np.ndarray) -> list[dict]:
    """``{"neighbors": [{"id": ..., "score": ...}, ...]}`` per query."""
    return [
        {"neighbors": [{"id": i, "score": float(s)} for i, s in zip(row_ids, row_scores)]}
        for row_ids, row_scores in zip(ids, scores)
    ]


def write_json_lines(objects: Sequence[Any], path: str | os.PathLike) -> Path:
    """One JSON object per line, written beside the target and renamed when complete."""
    atomic_write_bytes(path, b"".join(orjson.dumps(obj) + b"\n" for obj in objects))
    return Path(path)
