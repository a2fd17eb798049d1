"""``POST /neighbors``: the nearest indexed items of each instance, served beside /invocations.

``{"instances": [{"in0": [...]}, {"embedding": [...]}, ...], "k": 10}`` (or JSON Lines instances
with ``?k=10``) -> ``{"predictions": [{"neighbors": [{"id": ..., "score": ...}, ...]}, ...]}``.
The route itself sits in :func:`object2vec.serving.server.create_app` beside /invocations, with
the same rules: Content-Type and Accept, the payload limit (413), a 4xx ``{"error": "..."}``
naming the instance for every client mistake. This module decodes a body into queries
(:class:`NeighborSearch`), hands the inputs to embed to the server's micro-batcher as one
:class:`~object2vec.columns.Instances` (so they share forward passes with /invocations traffic)
and searches the index with the vectors that come back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..columns import Instances, SequenceColumn, short_repr
from ..index import SIDES, Id, NeighborIndex, NeighborIndexError, load_index, weights_fingerprint
from ..neighbors import DEFAULT_K, MAX_K, Query, check_query, neighbor_objects
from .protocol import JSONLINES, BodyFormat, RequestError, decode_objects


def open_served_index(
    path: str | os.PathLike, model_dir: str | os.PathLike, enc_dim: int | None = None
) -> NeighborIndex:
    """The index to serve, mapped from disk (workers share its pages); refused when another
    model built it or its vectors are not this model's length (serving has no ``--force``)."""
    index = load_index(path, mmap=True)
    index.check_compatible(weights_fingerprint(model_dir), where=f"index {path}")
    if enc_dim is not None and index.dim != enc_dim:
        raise NeighborIndexError(
            f"index {path} holds {index.dim}-dimensional vectors but the model embeds to {enc_dim}"
        )
    return index


def check_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise RequestError(f'"k" must be an integer in [1, {MAX_K}], got {short_repr(value)}')
    return value


@dataclass
class NeighborRequest:
    """A decoded ``/neighbors`` body: its queries, in order, and how many neighbours each gets."""

    queries: list[Query]
    k: int

    @property
    def embedded(self) -> list[int]:
        """Positions of the queries given as inputs (the others are vectors)."""
        return [i for i, query in enumerate(self.queries) if query.side is not None]

    def instances(self) -> Instances | None:
        """The inputs to embed as one embedding request for the micro-batcher (each by its own
        encoder); None when every query is a vector."""
        embedded = [self.queries[i] for i in self.embedded]
        if not embedded:
            return None
        rows = [np.array([j for j, q in enumerate(embedded) if q.side == side], np.int64) for side in SIDES]
        columns = [SequenceColumn.from_lists([embedded[j].tokens for j in r]) for r in rows]
        every = [None if len(r) == len(embedded) else r for r in rows]
        return Instances(len(embedded), False, (columns[0], columns[1]), (every[0], every[1]))

    def vectors(self, embeddings: np.ndarray | None, dim: int) -> np.ndarray:
        """``[n, dim]`` query vectors in order: the given ones, and ``embeddings`` (the answer
        rows of :meth:`instances`) for the inputs."""
        out = np.empty((len(self.queries), dim), dtype=np.float32)
        for i, query in enumerate(self.queries):
            if query.side is None:
                out[i] = query.vector
        if embeddings is not None:
            out[self.embedded] = embeddings
        return out


@dataclass
class NeighborSearch:
    """An index served with a model: decodes requests against both and answers them."""

    index: NeighborIndex
    vocab_sizes: Sequence[int]

    def decode(self, body: bytes, fmt: BodyFormat, k_param: str | None = None) -> NeighborRequest:
        """``{"instances": [...], "k": 10}`` (or JSON Lines instances with ``?k=10``) -> validated
        queries; every client mistake is a :class:`~object2vec.serving.protocol.RequestError`."""
        k: Any = DEFAULT_K
        if k_param is not None:
            k = int(k_param) if k_param.strip().isdigit() else k_param
        objects, lines = decode_objects(body, fmt)  # the /invocations rules for the body
        if not fmt.lines and b'"k"' in body:  # a second parse only when the document may name k
            k = orjson.loads(body).get("k", k)
        queries = [
            check_query(
                obj, i, self.vocab_sizes, self.index.dim, fmt.caps, None if lines is None else lines[i]
            )
            for i, obj in enumerate(objects)
        ]
        self._check_sides(queries)
        return NeighborRequest(queries, check_k(k))

    def _check_sides(self, queries: Sequence[Query]) -> None:
        """Inputs must be of the side the index holds: the other encoder's space is another one."""
        for position, query in enumerate(queries):
            if query.side is not None and self.index.side not in (None, query.side):
                raise RequestError(
                    f"instance {position}: the index holds {self.index.side} embeddings, so "
                    f"queries must be {self.index.side} inputs or embeddings, not {query.side}",
                    index=position,
                    field=query.side,
                )

    def answer(self, request: NeighborRequest, embeddings: np.ndarray | None, accept: str) -> bytes:
        """The response body: each query's ``k`` nearest items, best first (safe on any thread)."""
        vectors = request.vectors(embeddings, self.index.dim)
        try:
            ids, scores = self.index.search(vectors, request.k)
        except NeighborIndexError as exc:  # a query the metric cannot answer (a zero vector for cosine)
            raise RequestError(str(exc)) from None
        return encode_neighbors(neighbor_objects(ids, scores), accept)


def encode_neighbors(objects: Sequence[dict[str, list[dict[str, Id | float]]]], accept: str) -> bytes:
    if accept == JSONLINES:
        return b"".join(orjson.dumps(obj) + b"\n" for obj in objects)
    return orjson.dumps({"predictions": list(objects)})
