"""HTTP bodies <-> instances, exactly as the hosted Object2Vec endpoint speaks them.

Requests: ``Content-Type: application/json`` (``{"instances": [{"in0": [...], "in1": [...]}, ...]}``)
or ``application/jsonlines`` (one instance object per line), with an optional
``infer_max_seqlens=<FWD>,<BCK>`` parameter capping the in0 and in1 lengths. Responses follow
``Accept``: ``application/json`` -> ``{"predictions": [...]}``, ``application/jsonlines`` -> one
object per line.

The kind of inference comes from the data: every instance with both ``in0`` and ``in1`` -> pair
scores; every instance with exactly one of them -> that encoder's embedding. An embedding request
may mix in0-only and in1-only instances (each is embedded by its own encoder, answers keep the
request's order); mixing pairs with single inputs is refused, because the answer would mix two
kinds of vector under one key.

Everything here is a pure function of bytes and headers (no torch, no model): errors are
:class:`RequestError` with the HTTP status the client should get and a message naming the
instance index and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ..columns import short_repr, token_problem
from ..errors import Object2VecError

JSON = "application/json"
JSONLINES = "application/jsonlines"
#: Media types read as one instance (or one result) per line.
JSONLINES_ALIASES = frozenset(
    {JSONLINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson"}
)
SUPPORTED = f"{JSON} or {JSONLINES}"
MAX_SEQLEN_RANGE = (1, 5000)
SCORES, EMBEDDINGS = "scores", "embeddings"
FIELDS = ("in0", "in1")

TokenIds = list[int]
Instance = tuple[TokenIds | None, TokenIds | None]


class RequestError(Object2VecError):
    """A client mistake: ``status`` is the HTTP code to answer (400, 406, 413, 415)."""

    def __init__(self, message: str, status: int = 400, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.index = index
        self.field = field


@dataclass(frozen=True)
class BodyFormat:
    """How a request body is laid out: one JSON document or JSON Lines, and the length caps."""

    lines: bool = False
    max_len0: int | None = None
    max_len1: int | None = None

    @property
    def caps(self) -> tuple[int | None, int | None]:
        return self.max_len0, self.max_len1


@dataclass
class Request:
    """Decoded, validated instances: ``in0[i]``/``in1[i]`` are token lists or ``None``."""

    mode: str  # SCORES or EMBEDDINGS
    in0: list[TokenIds | None]
    in1: list[TokenIds | None]

    def __len__(self) -> int:
        return len(self.in0)


def parse_media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``"application/json; charset=utf-8"`` -> ``("application/json", {"charset": "utf-8"})``."""
    if not header:
        return "", {}
    mime, *params = header.split(";")
    values = {}
    for param in params:
        key, _, value = param.partition("=")
        if key.strip():
            values[key.strip().lower()] = value.strip().strip('"').strip()
    return mime.strip().lower(), values


def parse_max_seqlens(value: str) -> tuple[int, int]:
    """``"<FWD>,<BCK>"`` -> two integers in [1, 5000] (in0 cap, in1 cap); else a 400."""
    low, high = MAX_SEQLEN_RANGE
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise RequestError(f"infer_max_seqlens={value!r}: expected two integers <FWD>,<BCK>, e.g. 20,20")
    fwd, bck = int(parts[0]), int(parts[1])
    if not (low <= fwd <= high and low <= bck <= high):
        raise RequestError(f"infer_max_seqlens={value!r}: both lengths must be integers in [{low}, {high}]")
    return fwd, bck


def parse_content_type(header: str | None) -> BodyFormat:
    """The body layout from ``Content-Type`` (missing -> JSON); unsupported types are a 415."""
    mime, params = parse_media_type(header)
    if mime in ("", JSON):
        lines = False
    elif mime in JSONLINES_ALIASES:
        lines = True
    else:
        raise RequestError(f"Content-Type {header!r} is not supported; use {SUPPORTED}", status=415)
    caps = parse_max_seqlens(params["infer_max_seqlens"]) if "infer_max_seqlens" in params else (None, None)
    return BodyFormat(lines, *caps)


def _accept_quality(params: dict[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 0.0


def parse_accept(header: str | None) -> str:
    """The response type from ``Accept``: JSON when missing or a wildcard, JSON Lines when asked;
    anything else is a 406."""
    if not header or not header.strip():
        return JSON
    ranges = [parse_media_type(part) for part in header.split(",") if part.strip()]
    ranges = sorted(((mime, _accept_quality(params)) for mime, params in ranges), key=lambda r: -r[1])
    for mime, quality in ranges:
        if quality <= 0:
            continue
        if mime in (JSON, "*/*", "application/*"):
            return JSON
        if mime in JSONLINES_ALIASES:
            return JSONLINES
    raise RequestError(f"Accept {header!r} is not supported; use {SUPPORTED}", status=406)


def _describe(index: int | None, line: int | None) -> str:
    """Where an instance sits: ``instance 3``, ``instance 3 (line 4)`` or, for a file read line
    by line, ``line 4``."""
    if index is None:
        return f"line {line}"
    return f"instance {index}" if line is None else f"instance {index} (line {line})"


def check_sequence(
    value: Any,
    index: int | None,
    field: str,
    vocab_size: int,
    cap: int | None = None,
    line: int | None = None,
) -> TokenIds:
    """A non-empty list of integer token IDs in ``[0, vocab_size)``, cut to ``cap``; else a 400
    naming the instance and field."""
    problem = token_problem(value, vocab_size)
    if problem is not None:
        raise RequestError(f"{_describe(index, line)}: '{field}' {problem}", index=index, field=field)
    return value if cap is None else value[:cap]


def check_instance(
    obj: Any,
    index: int | None,
    vocab_sizes: Sequence[int],
    caps: Sequence[int | None] = (None, None),
    line: int | None = None,
) -> Instance:
    """One instance object -> ``(in0 or None, in1 or None)``, validated. Other keys (a ``label``
    left in a batch-transform file) are ignored."""
    if not isinstance(obj, dict):
        raise RequestError(
            f"{_describe(index, line)} must be an object with 'in0' and/or 'in1', got {short_repr(obj)}",
            index=index,
        )
    present = [obj.get(field) is not None for field in FIELDS]
    if not any(present):
        raise RequestError(f"{_describe(index, line)} has neither 'in0' nor 'in1'", index=index)
    in0, in1 = (
        check_sequence(obj[f], index, f, vocab_sizes[s], caps[s], line) if present[s] else None
        for s, f in enumerate(FIELDS)
    )
    return in0, in1


def instance_mode(instance: Instance) -> str:
    return SCORES if instance[0] is not None and instance[1] is not None else EMBEDDINGS


def load_json(data: bytes, where: str = "") -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"{where}invalid JSON: {exc}") from None


def split_lines(body: bytes) -> list[tuple[int, bytes]]:
    """Non-blank lines of a JSON Lines body with their 1-based line numbers."""
    return [(number, line) for number, line in enumerate(body.split(b"\n"), 1) if line.strip()]


def decode_objects(body: bytes, fmt: BodyFormat) -> list[tuple[Any, int | None]]:
    """The raw instance objects of a body, each with its line number (JSON Lines) or None."""
    if fmt.lines:
        objects = [(load_json(line, f"line {number}: "), number) for number, line in split_lines(body)]
    else:
        document = load_json(body, "")
        if not isinstance(document, dict) or "instances" not in document:
            raise RequestError('the body must be a JSON object {"instances": [...]}; "instances" is missing')
        if not isinstance(document["instances"], list):
            raise RequestError(
                f'"instances" must be a list of objects, got {short_repr(document["instances"])}'
            )
        objects = [(obj, None) for obj in document["instances"]]
    if not objects:
        raise RequestError("the request holds no instances")
    return objects


def decode_request(body: bytes, fmt: BodyFormat, vocab_sizes: Sequence[int]) -> Request:
    """A request body -> validated :class:`Request`; every client mistake is a :class:`RequestError`."""
    instances = [
        check_instance(obj, i, vocab_sizes, fmt.caps, line)
        for i, (obj, line) in enumerate(decode_objects(body, fmt))
    ]
    return Request(request_mode(instances), [i[0] for i in instances], [i[1] for i in instances])


def request_mode(instances: Sequence[Instance]) -> str:
    """SCORES when every instance is a pair, EMBEDDINGS when none is; mixing them is a 400."""
    modes = [instance_mode(instance) for instance in instances]
    if all(mode == modes[0] for mode in modes):
        return modes[0]
    first_pair, first_single = modes.index(SCORES), modes.index(EMBEDDINGS)
    raise RequestError(
        f"instance {first_pair} has both in0 and in1 (pair scores) but instance {first_single} has only one "
        "(an embedding); one request must be all pairs or all single inputs, send them separately",
        index=max(first_pair, first_single),
    )


def encode_predictions(rows: Sequence[np.ndarray], key: str, accept: str) -> bytes:
    """Result rows (float32 vectors) -> the response body for ``accept``."""
    objects = [{key: row} for row in rows]
    if accept == JSONLINES:
        return b"".join(encode_object(obj) + b"\n" for obj in objects)
    return orjson.dumps({"predictions": objects}, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_object(obj: Any) -> bytes:
    """One JSON value, float32 arrays written with float32 precision (shortest round-trip form)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
