"""Nearest neighbours over embeddings: an HNSW graph (faiss) and what it was built from.

An index is a directory: ``index.faiss`` (faiss's own binary format, read without running any
code) and ``index.json``, which records the metric, the vector length, the ids of the rows,
the side the vectors came from (``in0``/``in1``, or none for vectors given directly) and the
fingerprint of the model that made them (the SHA-256 of its ``model.safetensors``). Searching
with another model's embeddings, or the other encoder's, returns confident nonsense, so
:meth:`NeighborIndex.check_compatible` refuses it unless forced.

Scores depend on the metric: ``cosine`` gives the cosine similarity (higher is nearer), ``ip``
the inner product (higher is nearer), ``l2`` the Euclidean distance (lower is nearer). Cosine
is the inner product of vectors normalised to unit length (faiss has no cosine metric of its
own), so stored vectors are unit vectors for that metric.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import WEIGHTS_FILE, replaced_directory, resolve_model_dir, write_weights
from .errors import Object2VecError

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
FORMAT_VERSION = 1
METRICS = ("cosine", "ip", "l2")
SIDES = ("in0", "in1")
#: HNSW shape: links per node (M) and candidates kept while inserting (efConstruction).
CONNECTIVITY, EXPANSION_ADD = 16, 128
#: Candidates kept while searching (efSearch); see benchmarks/ann.py for recall against speed.
EXPANSION_SEARCH = 128

Id = int | str


class NeighborIndexError(Object2VecError):
    """An index directory is missing, unreadable, or does not fit the model or query."""


def weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a model directory's ``model.safetensors`` (or of the one inside a
    ``model.tar.gz``): the same digest ``sha256sum model.safetensors`` prints."""
    return file_fingerprint(resolve_model_dir(model_dir) / WEIGHTS_FILE)


def file_fingerprint(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def model_fingerprint(model: Any) -> str:
    """The fingerprint of an :class:`~object2vec.Object2Vec`: of the weights file it was loaded
    from or saved to, else of the file ``save`` would write now."""
    if getattr(model, "model_dir", None) is not None:
        return weights_fingerprint(model.model_dir)
    with tempfile.TemporaryDirectory(prefix="object2vec-fingerprint-") as tmp:
        return file_fingerprint(write_weights(model.predictor.net, tmp))


def short(fingerprint: str | None) -> str:
    return "none" if fingerprint is None else fingerprint.removeprefix("sha256:")[:12]


def check_ids(ids: Sequence[Any] | None, count: int) -> list[Id]:
    """Row ids: given (one per vector, unique, each an integer or a string) or 0 .. count-1."""
    if ids is None:
        return list(range(count))
    ids = list(ids.tolist() if isinstance(ids, np.ndarray) else ids)
    if len(ids) != count:
        raise NeighborIndexError(f"{len(ids)} ids for {count} vectors; give one id per vector")
    for position, value in enumerate(ids):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise NeighborIndexError(f"id {position} is {value!r}; ids must be integers or strings")
    if len(set(ids)) != count:
        seen: set = set()
        duplicate = next(value for value in ids if value in seen or seen.add(value))
        raise NeighborIndexError(f"id {duplicate!r} is given twice; ids must be unique")
    return ids


def as_matrix(vectors: Any, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """A float32 ``[n, dim]`` array of finite values (one vector may be given as 1-D)."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise NeighborIndexError(f"{what} must be an array of numbers") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] == 0:
        raise NeighborIndexError(f"{what} must be a 2-D array [n, dim], got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise NeighborIndexError(
            f"{what} have {array.shape[1]} values each; this index holds {dim}-dimensional vectors"
        )
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise NeighborIndexError(f"{what} row {bad[0]} holds a value that is not finite")
    return array


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise NeighborIndexError(f"metric={metric!r}; valid: {', '.join(METRICS)}")
    return metric


def _faiss():
    import faiss

    return faiss


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@dataclass
class NeighborIndex:
    """An HNSW index over vectors, with the ids of its rows and where the vectors came from."""

    ann: Any  # faiss.IndexHNSWFlat; its labels are row positions into ``ids``
    ids: list[Id]
    metric: str
    side: str | None = None
    model_fingerprint: str | None = None
    expansion_search: int = EXPANSION_SEARCH

    @classmethod
    def build(
        cls,
        vectors: Any,
        ids: Sequence[Any] | None = None,
        *,
        metric: str = "cosine",
        side: str | None = None,
        model_fingerprint: str | None = None,
        connectivity: int = CONNECTIVITY,
        expansion_add: int = EXPANSION_ADD,
        expansion_search: int = EXPANSION_SEARCH,
    ) -> NeighborIndex:
        """Index ``vectors`` ``[n, dim]``; ``ids`` name the rows (default 0 .. n-1)."""
        faiss = _faiss()
        matrix = as_matrix(vectors)
        check_metric(metric)
        if side is not None and side not in SIDES:
            raise NeighborIndexError(f"side={side!r}; valid: in0, in1")
        if metric == "cosine":
            if (zero := np.flatnonzero(~np.any(matrix, axis=1))).size:
                raise NeighborIndexError(f"vector {zero[0]} is all zeros: its cosine similarity is undefined")
            matrix = unit_rows(matrix)
        row_ids = check_ids(ids, len(matrix))
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        ann = faiss.IndexHNSWFlat(matrix.shape[1], connectivity, faiss_metric)
        ann.hnsw.efConstruction = expansion_add
        ann.add(np.ascontiguousarray(matrix, dtype=np.float32))
        return cls(ann, row_ids, metric, side, model_fingerprint, expansion_search)

    @property
    def dim(self) -> int:
        return int(self.ann.d)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, queries: Any, k: int = 10, *, expansion_search: int | None = None
    ) -> tuple[list[list[Id]], np.ndarray]:
        """The ``k`` nearest rows of each query: (ids ``[n][k]``, scores float32 ``[n, k]``),
        best first; ``k`` larger than the index gives every row. Scores: cosine similarity,
        inner product, or L2 distance, by the metric. Safe to call from several threads."""
        matrix = as_matrix(queries, self.dim, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise NeighborIndexError(f"k must be a positive integer, got {k!r}")
        if self.metric == "cosine":
            if (zero := np.flatnonzero(~np.any(matrix, axis=1))).size:
                raise NeighborIndexError(f"query {zero[0]} is all zeros: its cosine similarity is undefined")
            matrix = unit_rows(matrix)
        k = min(int(k), len(self))
        params = _faiss().SearchParametersHNSW()
        params.efSearch = max(expansion_search or self.expansion_search, k)
        distances, labels = self.ann.search(np.ascontiguousarray(matrix, dtype=np.float32), k, params=params)
        short_rows = np.flatnonzero((labels < 0).any(axis=1))
        if short_rows.size:  # the graph walk found fewer than k: answer those queries exactly
            exact = _faiss().downcast_index(self.ann.storage)
            distances[short_rows], labels[short_rows] = exact.search(matrix[short_rows], k)
        ids = np.asarray(self.ids, dtype=object)[labels]
        return ids.tolist(), self._scores(distances)

    def _scores(self, distances: np.ndarray) -> np.ndarray:
        """faiss's answers -> our scores: inner products as they are, squared L2 -> L2."""
        if self.metric == "l2":
            return np.sqrt(np.maximum(distances, 0)).astype(np.float32)
        return distances.astype(np.float32)

    def check_compatible(
        self,
        model_fingerprint: str | None = None,
        side: str | None = None,
        force: bool = False,
        where: str = "the index",
    ) -> None:
        """Refuse queries embedded by another model, or by the other encoder, unless ``force``."""
        if force:
            return
        if model_fingerprint is not None and self.model_fingerprint not in (None, model_fingerprint):
            raise NeighborIndexError(
                f"{where} was built from model {short(self.model_fingerprint)} but the model given is "
                f"{short(model_fingerprint)} (fingerprints of model.safetensors); "
                "rebuild the index or use --force"
            )
        if side is not None and self.side not in (None, side):
            raise NeighborIndexError(
                f"{where} holds {self.side} embeddings but the query is an {side} input; "
                "embeddings of the other "
                f"encoder are not comparable (use --force to search anyway)"
            )

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "library": "faiss",
            "metric": self.metric,
            "dim": self.dim,
            "count": len(self),
            "side": self.side,
            "model_fingerprint": self.model_fingerprint,
            "expansion_search": self.expansion_search,
            "ids": self.ids,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index directory atomically (replacing one already there whole); returns its path."""
        target = Path(path)
        replaceable = target.is_dir() and ((target / META_FILE).is_file() or not any(target.iterdir()))
        if target.exists() and not replaceable:
            raise NeighborIndexError(f"{target} exists and is not an index directory; refusing to replace it")
        with replaced_directory(target) as staging:  # readers see the old index or the new one
            _faiss().write_index(self.ann, str(staging / INDEX_FILE))
            (staging / META_FILE).write_text(json.dumps(self.metadata()) + "\n", encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = False) -> NeighborIndex:
        """Read an index directory; ``mmap=True`` maps the stored vectors from the file instead of
        reading them (server workers then share one copy in the page cache)."""
        faiss = _faiss()
        root = Path(path)
        meta = read_metadata(root)
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            ann = faiss.read_index(str(root / INDEX_FILE), flags)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise NeighborIndexError(f"{root / INDEX_FILE}: not a faiss index file ({detail})") from None
        if ann.ntotal != meta["count"] or ann.d != meta["dim"]:
            raise NeighborIndexError(
                f"{root}: {INDEX_FILE} holds {ann.ntotal} vectors of {ann.d} values but "
                f"{META_FILE} says {meta['count']} of {meta['dim']}"
            )
        return cls(
            ann,
            meta["ids"],
            meta["metric"],
            meta["side"],
            meta["model_fingerprint"],
            int(meta.get("expansion_search", EXPANSION_SEARCH)),
        )


def read_metadata(root: Path) -> dict:
    """``index.json`` of an index directory, checked field by field."""
    if not (root / META_FILE).is_file() or not (root / INDEX_FILE).is_file():
        raise NeighborIndexError(f"{root}: not an index directory (needs {INDEX_FILE} and {META_FILE})")
    try:
        meta = json.loads((root / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeighborIndexError(f"{root / META_FILE}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise NeighborIndexError(f"{root / META_FILE}: not an index description of format {FORMAT_VERSION}")
    for key, valid in (
        ("metric", lambda v: v in METRICS),
        ("side", lambda v: v is None or v in SIDES),
        ("dim", lambda v: isinstance(v, int) and v > 0),
        ("count", lambda v: isinstance(v, int)),
        ("ids", lambda v: isinstance(v, list) and len(v) == meta.get("count")),
        ("model_fingerprint", lambda v: v is None or isinstance(v, str)),
    ):
        if key not in meta or not valid(meta[key]):
            raise NeighborIndexError(f"{root / META_FILE}: field {key!r} is missing or invalid")
    return meta


def load_index(path: str | os.PathLike, *, mmap: bool = False) -> NeighborIndex:
    """Open an index directory written by ``object2vec index`` or :meth:`NeighborIndex.save`."""
    return NeighborIndex.load(path, mmap=mmap)


def build_model_index(
    model: Any,
    items: Sequence[Sequence[int]],
    *,
    side: str = "in1",
    metric: str = "cosine",
    ids: Sequence[Any] | None = None,
    **options: Any,
) -> NeighborIndex:
    """Embed ``items`` with ``model``'s ``side`` encoder and index them, recording the model's
    fingerprint and the side (what :meth:`Object2Vec.build_index` does)."""
    if side not in SIDES:
        raise NeighborIndexError(f"side={side!r}; valid: in0, in1")
    vectors = model.embed(**{side: items})
    return NeighborIndex.build(
        vectors, ids, metric=metric, side=side, model_fingerprint=model_fingerprint(model), **options
    )
