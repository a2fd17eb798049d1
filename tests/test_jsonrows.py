"""The C writer of answers (``object2vec/_jsonrows.c``): orjson's bytes for every float32, on one
thread or several; what it refuses. ``tests/test_inference.py`` checks ``encode_rows`` both ways."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from conftest import needs_json_rows

from object2vec import native

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
