"""HTTP bodies <-> instances, exactly as the hosted Object2Vec endpoint speaks them.

Requests: ``Content-Type: application/json`` (``{"instances": [{"in0": [...], "in1": [...]}, ...]}``)
or ``application/jsonlines`` (one instance object per line), with an optional
``infer_max_seqlens=<FWD>,<BCK>`` parameter capping the in0 and in1 lengths. Responses follow
``Accept``: ``application/json`` -> ``{"predictions": [...]}``, ``application/jsonlines`` -> one
object per line; a missing or wildcard Accept gets the container's default type, else the
request's own (:func:`parse_accept`).

The kind of inference comes from the data: every instance with both ``in0`` and ``in1`` -> pair
scores; every instance with exactly one of them -> that encoder's embedding. An embedding request
may mix in0-only and in1-only instances (each is embedded by its own encoder, answers keep the
request's order); mixing pairs with single inputs is refused, because the answer would mix two
kinds of vector under one key.

Everything here is a pure function of bytes and headers (no model): errors are
:class:`RequestError` with the HTTP status the client should get and a message naming the
instance index and field.

Speed: a 1,000-instance request holds about 18,000 token IDs, so nothing here touches tokens one
by one in Python. Where the C extension was built, a body of plain instances is read by it straight
into one flat int64 column per side (``_jsonrows.c``, :func:`_decode_in_c`); any other body, and
every body without the extension, is parsed by orjson, each side's sequences become one flat int64
column checked with one numpy min/max (:meth:`SequenceColumn.checked`), and only a request that
fails that check is walked instance by instance to name the first mistake (:func:`check_instance`,
the one source of error messages). Answers are written from the float32 result by a C loop on several
threads (``_jsonrows.c``), else by ``orjson.dumps`` (:func:`encode_rows`), with the same bytes as
orjson's for one object per row.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .. import native
from ..columns import Instances, InvalidSequence, SequenceColumn, short_repr, token_problem
from ..errors import Object2VecError

JSON = "application/json"
JSONLINES = "application/jsonlines"
#: Media types read as one instance (or one result) per line.
JSONLINES_ALIASES = frozenset(
    {JSONLINES, "application/x-jsonlines", "application/jsonl", "application/x-ndjson"}
)
SUPPORTED = f"{JSON} or {JSONLINES}"
#: Accept ranges that leave the answer's type to the server.
WILDCARDS = frozenset({"*/*", "application/*"})
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
class Request(Instances):
    """Decoded, validated instances as columns (see :class:`~object2vec.columns.Instances`),
    already cut to ``infer_max_seqlens``."""

    @property
    def mode(self) -> str:
        return SCORES if self.pairs else EMBEDDINGS

    @property
    def in0(self) -> list[TokenIds | None]:
        """in0 of each instance as a token list, or ``None`` where not given."""
        return self._lists(0)

    @property
    def in1(self) -> list[TokenIds | None]:
        return self._lists(1)

    def _lists(self, side: int) -> list[TokenIds | None]:
        column, rows = self.columns[side], self.rows[side]
        sequences = np.split(column.tokens, column.offsets[1:-1]) if len(column) else []
        if rows is None:
            return [s.tolist() for s in sequences]
        out: list[TokenIds | None] = [None] * self.size
        for row, sequence in zip(rows.tolist(), sequences):
            out[row] = sequence.tolist()
        return out


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


def parse_accept(header: str | None, default: str = JSON) -> str:
    """The response type from ``Accept``: JSON or JSON Lines when named (the highest ``q``
    first), ``default`` when the header is missing or its best choice a wildcard (``*/*``,
    ``application/*``); anything else is a 406.

    SageMaker's batch transform sends no Accept unless the job sets one, and SageMaker's own
    containers then answer in ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``, else in the request's
    own type: the caller passes that as ``default`` (see :func:`default_accept`)."""
    if not header or not header.strip():
        return default
    ranges = [parse_media_type(part) for part in header.split(",") if part.strip()]
    ranges = sorted(((mime, _accept_quality(params)) for mime, params in ranges), key=lambda r: -r[1])
    for mime, quality in ranges:
        if quality <= 0:
            continue
        if mime in WILDCARDS:
            return default
        if mime == JSON:
            return JSON
        if mime in JSONLINES_ALIASES:
            return JSONLINES
    raise RequestError(f"Accept {header!r} is not supported; use {SUPPORTED}", status=406)


def default_accept(body: BodyFormat, configured: str = "") -> str:
    """The answer's type when Accept names none: ``configured`` (the container's
    ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``) when set, else the request's own type, so JSON
    Lines in gives JSON Lines out (one answer line per instance line) and JSON gives JSON."""
    return configured or (JSONLINES if body.lines else JSON)


@functools.lru_cache(maxsize=256)
def parse_formats(
    content_type: str | None, accept: str | None, configured_accept: str = ""
) -> tuple[BodyFormat, str]:
    """The body's layout and the answer's type from a request's ``Content-Type`` and ``Accept``
    (:func:`parse_content_type`, :func:`parse_accept` with :func:`default_accept`), in one step
    that is remembered for the last 256 combinations: clients send the same few again and again,
    and the server asks on every request."""
    body = parse_content_type(content_type)
    return body, parse_accept(accept, default_accept(body, configured_accept))


def describe_instance(index: int | None, line: int | None) -> str:
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
        raise RequestError(f"{describe_instance(index, line)}: '{field}' {problem}", index=index, field=field)
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
            f"{describe_instance(index, line)} must be an object with 'in0' and/or 'in1', "
            f"got {short_repr(obj)}",
            index=index,
        )
    present = [obj.get(field) is not None for field in FIELDS]
    if not any(present):
        raise RequestError(f"{describe_instance(index, line)} has neither 'in0' nor 'in1'", index=index)
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


def decode_objects(body: bytes, fmt: BodyFormat) -> tuple[list[Any], list[int] | None]:
    """The raw instance objects of a body, and their line numbers (JSON Lines) or None."""
    if fmt.lines:
        numbered = split_lines(body)
        try:
            objects = list(map(orjson.loads, (line for _, line in numbered)))
        except orjson.JSONDecodeError:  # find the line, for the message
            objects = [load_json(line, f"line {number}: ") for number, line in numbered]
        lines: list[int] | None = [number for number, _ in numbered]
    else:
        document = load_json(body, "")
        if not isinstance(document, dict) or "instances" not in document:
            raise RequestError('the body must be a JSON object {"instances": [...]}; "instances" is missing')
        if not isinstance(document["instances"], list):
            raise RequestError(
                f'"instances" must be a list of objects, got {short_repr(document["instances"])}'
            )
        objects, lines = document["instances"], None
    if not objects:
        raise RequestError("the request holds no instances")
    return objects, lines


def decode_request(body: bytes, fmt: BodyFormat, vocab_sizes: Sequence[int]) -> Request:
    """A request body -> validated :class:`Request`; every client mistake is a :class:`RequestError`.

    The columnar check decides for the whole request at once; a request it refuses is decoded
    again instance by instance, which raises the error for the first mistake (or, for input the
    columnar check does not take, such as a boolean somewhere in the body, gives the same request).
    """
    if native.json_rows is not None:
        request = _decode_in_c(body, fmt, vocab_sizes)
        if request is not None:
            return request
    objects, lines = decode_objects(body, fmt)
    # orjson makes booleans only from the literals true/false: without their letters "u" and "f"
    # no token can be one (one-byte searches are memchr: 4 us for 1,000 instances, against 140 us
    # for the two words)
    may_hold_bools = b"u" in body or b"f" in body
    request = _decode_columns(objects, fmt, vocab_sizes, may_hold_bools)
    return request if request is not None else _decode_each(objects, lines, fmt, vocab_sizes)


#: An embedding request's other side, which no instance gives (read-only, shared).
_NO_ROWS = np.frombuffer(b"", np.int64)
_NO_SEQUENCES = SequenceColumn(_NO_ROWS, np.frombuffer(bytes(8), np.int64))


def _decode_in_c(body: bytes, fmt: BodyFormat, vocab_sizes: Sequence[int]) -> Request | None:
    """The request as ``_jsonrows.c`` reads it, straight from the bytes to the columns, when every
    instance gives only ``in0`` and/or ``in1`` as valid token lists (or null) and all are pairs or
    all single inputs; None for anything else, which the Python decoder then reads or refuses."""
    read = native.json_rows.read_instances(body, fmt.lines, vocab_sizes[0], vocab_sizes[1])
    if read is None:
        return None
    size, tokens0, offsets0, given0, tokens1, offsets1, given1 = read
    # no tokens: no instance gives the side (the reader refuses empty lists)
    count0 = len(offsets0) // 8 - 1 if tokens0 else 0
    count1 = len(offsets1) // 8 - 1 if tokens1 else 0
    if count0 + count1 != size and not count0 == count1 == size:  # pairs mixed with single inputs
        return None
    columns = (_read_column(tokens0, offsets0, fmt.max_len0), _read_column(tokens1, offsets1, fmt.max_len1))
    rows = (_read_rows(given0, count0, size), _read_rows(given1, count1, size))
    return Request(size, count0 == count1 == size, columns, rows)


def _read_column(tokens: bytearray, offsets: bytearray, cap: int | None) -> SequenceColumn:
    if not tokens:
        return _NO_SEQUENCES
    return SequenceColumn(np.frombuffer(tokens, np.int64), np.frombuffer(offsets, np.int64)).truncated(cap)


def _read_rows(given: bytearray, count: int, size: int) -> np.ndarray | None:
    """The instances giving a side (None: all of them)."""
    if count == size:
        return None
    return np.frombuffer(given, np.int64) if count else _NO_ROWS


def _decode_columns(
    objects: list[Any], fmt: BodyFormat, vocab_sizes: Sequence[int], may_hold_bools: bool
) -> Request | None:
    """The request when it is valid as a whole by columnar checks; None when any check fails."""
    if not all(type(obj) is dict for obj in objects):
        return None
    given = [[obj.get(field) for obj in objects] for field in FIELDS]
    size = len(objects)
    missing = [sequences.count(None) for sequences in given]
    if missing == [0, 0]:
        pairs, rows = True, (None, None)
    elif missing[0] + missing[1] == size and size in missing:  # all one side: in0-only or in1-only
        none = np.zeros(0, dtype=np.int64)
        pairs, rows = False, (none, None) if missing[0] else (None, none)
    elif missing[0] + missing[1] == size:  # each gives exactly one only if none gives both
        has0 = np.fromiter((s is not None for s in given[0]), dtype=bool, count=size)
        has1 = np.fromiter((s is not None for s in given[1]), dtype=bool, count=size)
        if (has0 == has1).any():
            return None
        pairs, rows = False, (np.flatnonzero(has0), np.flatnonzero(has1))
    else:
        return None
    columns = []
    for side in (0, 1):
        sequences = given[side] if missing[side] == 0 else [s for s in given[side] if s is not None]
        if not sequences:  # the side no instance gives (an embedding request's other encoder)
            columns.append(SequenceColumn.from_lengths(np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        try:
            column = SequenceColumn.checked(sequences, vocab_sizes[side], may_hold_bools)
        except InvalidSequence:
            return None
        columns.append(column.truncated(fmt.caps[side]))
    return Request(size, pairs, (columns[0], columns[1]), rows)


def _decode_each(
    objects: list[Any], lines: list[int] | None, fmt: BodyFormat, vocab_sizes: Sequence[int]
) -> Request:
    """Instance by instance, in order: the first mistake is the error the client gets."""
    instances = [
        check_instance(obj, i, vocab_sizes, fmt.caps, None if lines is None else lines[i])
        for i, obj in enumerate(objects)
    ]
    pairs = request_mode(instances) == SCORES
    side_rows = [[i for i, instance in enumerate(instances) if instance[s] is not None] for s in (0, 1)]
    columns = tuple(SequenceColumn.from_lists([instances[i][s] for i in side_rows[s]]) for s in (0, 1))
    rows = tuple(None if len(r) == len(instances) else np.array(r, dtype=np.int64) for r in side_rows)
    return Request(len(instances), pairs, columns, rows)  # type: ignore[arg-type]


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


#: From this many values a row, answers are written from numpy row views (:func:`encode_rows`).
#: Measured in one in-process run per 1,000 rows, pieces -> views (orjson 3.13, 2-core AMD EPYC):
#: JSON 8.2 -> 7.7 ms at 256 values, even at 128, 0.15 -> 0.47 ms at 3; JSON Lines 13.0 -> 8.3 ms
#: at 256, 3.2 -> 2.5 at 64, even at 32 (within noise), 0.25 -> 0.60 at 3.
ROW_VIEWS_FROM = {JSON: 192, JSONLINES: 64}

#: Narrower answers are written this many numbers at a time (256 KB of float32), so that each
#: piece's text is still in cache for its bracket replacements and the pieces are copied once,
#: when joined.
ENCODE_CHUNK_VALUES = 1 << 16

#: orjson options of one JSON Lines answer row.
ROW_PER_LINE = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


def encode_rows(rows: np.ndarray, key: str, accept: str, threads: int = 1) -> bytes:
    """A 2-D float32 result (one row per instance) -> the response body for ``accept`` (JSON
    Lines, else JSON): the bytes of one object per row written by :func:`encode_object`.

    Where the C extension was built, it writes the whole answer, on up to ``threads`` threads for
    a large one (:func:`_rows_in_c`). Else wide rows (embeddings) are written by orjson from numpy
    row views, with no pass over the text afterwards; narrow rows (scores) cost more as views
    (about 0.35 us each) than the text they make, so they are written as a 2-D array whose
    brackets are then widened into objects.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    lines = accept == JSONLINES
    if native.json_rows is not None:
        return _rows_in_c(rows, key, lines, threads)
    if rows.shape[1] >= ROW_VIEWS_FROM[JSONLINES if lines else JSON]:
        return _rows_from_views(rows, key, lines)
    return _rows_in_pieces(rows, key, lines)


def _rows_in_c(rows: np.ndarray, key: str, lines: bool, threads: int) -> bytes:
    """The answer written by ``_jsonrows.c`` (orjson's bytes; a large one on ``threads`` threads,
    without the GIL)."""
    opening = b'{"' + key.encode() + b'":['
    if lines:
        return native.json_rows.write_rows(rows, b"", opening, b"]}\n", b"", b"", threads)
    return native.json_rows.write_rows(rows, b'{"predictions":[', opening, b"]}", b",", b"]}", threads)


def _rows_from_views(rows: np.ndarray, key: str, lines: bool) -> bytes:
    """One ``orjson.dumps`` of ``{"predictions": [{key: row}, ...]}`` (JSON), or one per row, each
    ending its line (JSON Lines)."""
    if lines:
        return b"".join([orjson.dumps({key: row}, option=ROW_PER_LINE) for row in rows])
    return orjson.dumps({"predictions": [{key: row} for row in rows]}, option=orjson.OPT_SERIALIZE_NUMPY)


def _rows_in_pieces(rows: np.ndarray, key: str, lines: bool) -> bytes:
    """``orjson.dumps`` of pieces of rows as 2-D arrays (``[[r0...],[r1...]]``), each row's brackets
    widened into ``{"key":[...]}`` by single-byte replacements (numbers never contain brackets),
    the pieces joined once."""
    step = max(1, ENCODE_CHUNK_VALUES // max(1, rows.shape[1]))
    close = b"]}\n" if lines else b"]}"
    opening = b'{"' + key.encode() + b'":['
    parts = [] if lines else [b'{"predictions":[']
    for start in range(0, len(rows), step):
        matrix = orjson.dumps(rows[start : start + step], option=orjson.OPT_SERIALIZE_NUMPY)
        objects = matrix[1:-1].replace(b"]", close).replace(b"[", opening)
        if lines:
            parts.append(objects.replace(b"\n,{", b"\n{"))
        else:
            parts += [b",", objects] if start else [objects]
    if not lines:
        parts.append(b"]}")
    return b"".join(parts)


def encode_predictions(rows: Sequence[np.ndarray], key: str, accept: str) -> bytes:
    """Result rows (float32 vectors of one length) -> the response body for ``accept``."""
    return encode_rows(np.stack(rows) if len(rows) else np.zeros((0, 0), np.float32), key, accept)


def encode_object(obj: Any) -> bytes:
    """One JSON value, float32 arrays written with float32 precision (shortest round-trip form)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})
