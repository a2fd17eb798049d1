"""``object2vec/_jsonrows.c``: the writer of answers (orjson's bytes for every float32, on one
thread or several; what it refuses) and the reader of request bodies (the request Python's decoder
makes of the same body, or the body left to it). ``tests/test_inference.py`` checks
``encode_rows`` both ways."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from conftest import needs_json_rows

from object2vec import native
from object2vec.serving import protocol

pytestmark = needs_json_rows

JSON_PIECES = (b'{"predictions":[', b'{"embeddings":[', b"]}", b",", b"]}")
LINES_PIECES = (b"", b'{"scores":[', b"]}\n", b"", b"")


NUMPY = orjson.OPT_SERIALIZE_NUMPY


def orjson_answer(rows: np.ndarray, lines: bool) -> bytes:
    if lines:
        return b"".join(orjson.dumps({"scores": row}, option=NUMPY) + b"\n" for row in rows)
    return orjson.dumps({"predictions": [{"embeddings": row} for row in rows]}, option=NUMPY)


def every_kind_of_float32(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """Random bit patterns (every exponent, subnormals, NaNs with payloads, infinities), powers of
    ten and their neighbours (where decimal and exponent notation meet), and edge values."""
    bits = rng.integers(0, 2**32, size=rows * width, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    tens = np.array([10.0**e for e in range(-45, 39)]).astype(np.float32)
    edges = np.array(
        [0.0, -0.0, 1e-6, 9.999999e-7, 1e13, 9.999999e12, 1.4e-45, 1.1754944e-38, 3.4028235e38]
        + [np.nan, -np.inf],
        dtype=np.float32,
    )
    special = np.concatenate(
        [tens, np.nextafter(tens, np.float32(np.inf)), np.nextafter(tens, np.float32(0)), -tens, edges]
    )
    values[: len(special)] = special
    return values.reshape(rows, width)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("lines", [False, True])
def test_the_bytes_are_orjsons_for_every_kind_of_float32(threads, lines):
    """The whole range of float32 at once, split over threads; enough numbers (over 16,384) that
    several threads do write."""
    rows = every_kind_of_float32(np.random.default_rng(threads), 700, 40)
    pieces = LINES_PIECES if lines else JSON_PIECES
    assert native.json_rows.write_rows(rows, *pieces, threads) == orjson_answer(rows, lines)


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (1, 0), (1, 1), (3, 0), (2, 40000)])
def test_empty_and_lopsided_shapes(shape):
    rows = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for lines in (False, True):
        pieces = LINES_PIECES if lines else JSON_PIECES
        assert native.json_rows.write_rows(rows, *pieces, 2) == orjson_answer(rows, lines)


def test_what_it_refuses():
    write = native.json_rows.write_rows
    good = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="2-D float32"):
        write(np.zeros(3, np.float32), *JSON_PIECES, 1)
    with pytest.raises(ValueError, match="2-D float32"):
        write(good.astype(np.float64), *JSON_PIECES, 1)
    with pytest.raises((ValueError, BufferError)):
        write(np.zeros((3, 4), np.float32)[:, ::2], *JSON_PIECES, 1)  # not contiguous
    with pytest.raises(TypeError, match="row_open must be bytes"):
        write(good, b"", "text", b"", b"", b"", 1)
    assert write(good, *JSON_PIECES, 0) == write(good, *JSON_PIECES, 1)  # fewer than one thread: one


# --- read_instances: request bodies straight to columns -----------------------------------------

VOCABS = (50, 40)


def decoded(body: bytes, fmt: protocol.BodyFormat) -> tuple:
    """What ``decode_request`` makes of a body: the request's content, or its error."""
    try:
        request = protocol.decode_request(body, fmt, VOCABS)
    except protocol.RequestError as exc:
        return ("error", exc.status, str(exc))
    rows = [None if r is None else r.tolist() for r in request.rows]
    return (request.mode, request.size, request.in0, request.in1, rows)


def decoded_in_python(body: bytes, fmt: protocol.BodyFormat, monkeypatch) -> tuple:
    with monkeypatch.context() as patch:
        patch.setattr(native, "json_rows", None)
        return decoded(body, fmt)


def plain_bodies(rng: np.random.Generator) -> list[tuple[bytes, protocol.BodyFormat]]:
    """Bodies the C reader takes: pairs, one side, mixed sides, nulls, any JSON whitespace, JSON
    Lines with blank lines and CRLF, length caps."""

    def sequence(side: int) -> list[int]:
        return rng.integers(0, VOCABS[side], size=rng.integers(1, 7)).tolist()

    def instance(kind: str) -> dict:
        if kind == "pairs":
            return {"in0": sequence(0), "in1": sequence(1)}
        side = {"in0": 0, "in1": 1}.get(kind, int(rng.integers(2)))
        other = {} if rng.random() < 0.7 else {f"in{1 - side}": None}
        return {f"in{side}": sequence(side), **other}

    def spaced(text: bytes, lines: bool) -> bytes:
        spaces = [b"", b" ", b"\t", b"\r"] + ([] if lines else [b"\n", b" \n "])
        out = b""
        for byte in text:
            char = bytes([byte])
            out += char + (spaces[int(rng.integers(len(spaces)))] if char in b",:[]{}" else b"")
        return out

    bodies = []
    for kind in ("pairs", "in0", "in1", "mixed"):
        for n in (1, 3, 40):
            objects = [instance(kind) for _ in range(n)]
            document = orjson.dumps({"instances": objects})
            for caps in ((None, None), (2, 1)):
                bodies.append((document, protocol.BodyFormat(False, *caps)))
                bodies.append((b" \n" + spaced(document, False) + b"\n", protocol.BodyFormat(False, *caps)))
                lines = [spaced(orjson.dumps(o), True) for o in objects]
                bodies.append((b"\n".join(lines), protocol.BodyFormat(True, *caps)))
                bodies.append((b"\r\n\n".join(lines) + b"\r\n \n", protocol.BodyFormat(True, *caps)))
    return bodies


def test_plain_bodies_are_read_in_c_as_python_reads_them(monkeypatch):
    for body, fmt in plain_bodies(np.random.default_rng(0)):
        assert native.json_rows.read_instances(body, fmt.lines, *VOCABS) is not None, body
        assert decoded(body, fmt) == decoded_in_python(body, fmt, monkeypatch), body


def test_any_body_decodes_as_in_python(monkeypatch):
    """Bodies cut, stretched and bent a byte at a time (floats, signs, leading zeros, escapes,
    other keys, duplicates, tokens past the vocabulary, broken JSON): the C reader either gives
    the request Python gives, or leaves the body to Python, whose answer or error stands."""
    rng = np.random.default_rng(1)
    bodies = plain_bodies(rng)
    pieces = [b"-", b".", b"e", b"0", b"9", b"99", b",", b"[", b"]", b"{", b"}", b'"', b" ", b"\n", b"\\"]
    pieces += [b"null", b"true", b'"x":1', b'"in0":[1]', b"\xff", b"1.0", b"\x0b"]
    taken = 0
    for _ in range(3000):
        body, fmt = bodies[int(rng.integers(len(bodies)))]
        at = int(rng.integers(len(body) + 1))
        cut = int(rng.integers(0, 3))
        piece = pieces[int(rng.integers(len(pieces)))] if rng.random() < 0.8 else b""
        bent = body[:at] + piece + body[at + cut :]
        taken += native.json_rows.read_instances(bent, fmt.lines, *VOCABS) is not None
        assert decoded(bent, fmt) == decoded_in_python(bent, fmt, monkeypatch), bent
    assert taken > 300  # many bent bodies are still plain ones, and the C reader took them


def test_the_reader_leaves_to_python_what_is_not_plain():
    read = native.json_rows.read_instances
    for body in [
        b'{"instances": []}',
        b'{"instances": [{"in0": [1], "label": 2}]}',
        b'{"instances": [{"in0": [1]}], "other": 1}',
        b'{"instances": [{"in0": [1], "in0": [2]}]}',
        b'{"instances": [{"in0": []}]}',
        b'{"instances": [{"in0": [1.0]}]}',
        b'{"instances": [{"in0": [-1]}]}',
        b'{"instances": [{"in0": [01]}]}',
        b'{"instances": [{"in0": [50]}]}',  # in0's vocabulary holds 50 tokens
        b'{"instances": [{"in1": [40]}]}',
        b'{"instances": [{}]}',
        b'{"instances": [{"in0": null}]}',
        b'{"instances": [{"\\u0069n0": [1]}]}',
        b'{"instances": [{"in0": [1]}]} x',
        b'{"instances": [{"in0": [1234567890123456789]}]}',
    ]:
        assert read(body, False, *VOCABS) is None, body
    assert read(b'{"in0": [1]}\n{"in0": [2]} {"in0": [3]}\n', True, *VOCABS) is None
    assert read(b'{"in0": [1,\n2]}', True, *VOCABS) is None  # an instance split over two lines
    assert read(b"\n \n", True, *VOCABS) is None


def test_columns_read_in_c_are_writable_arrays():
    """torch.from_numpy warns of read-only arrays, as the pooled pass off the CPU hands them over."""
    request = protocol.decode_request(
        b'{"instances": [{"in0": [1, 2]}, {"in1": [3]}]}', protocol.BodyFormat(), VOCABS
    )
    arrays = [request.columns[0].tokens, request.columns[0].offsets, request.rows[0], request.rows[1]]
    assert all(array.flags.writeable for array in arrays)
