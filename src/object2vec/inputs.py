"""Reading JSON Lines input files, for training channels and batch transform alike.

A ``.gz`` file is decompressed on the fly; lines are streamed with a bound on their length (a
line over the bound is read through in chunks and reported by its length, never held in memory);
a file that cannot be read to its end (unreadable, truncated or corrupt gzip data) is a
:class:`ReadError` naming the file and the line where reading stopped. Lines are split on
``\\n`` exactly as ``bytes.split`` would, a final newline not starting another line.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import Object2VecError

CHUNK = 1 << 20
#: What reading a file can fail with: gzip data ending early (EOFError), corrupt gzip data
#: (BadGzipFile is an OSError, zlib.error), or the system refusing to read (OSError).
READ_FAILURES = (EOFError, OSError, zlib.error)


class ReadError(Object2VecError):
    """An input file cannot be read to its end; the message starts with ``file:`` or ``file:line:``."""


@dataclass(frozen=True)
class LongLine:
    """A line longer than the reader's bound, skipped; ``length`` is its size in bytes without
    the newline."""

    length: int


def open_input(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(path, "rb") if Path(path).suffix == ".gz" else open(path, "rb")


def read_lines(path: str | os.PathLike, max_bytes: int) -> Iterator[bytes | LongLine]:
    """Every line of ``path`` without its newline, or a :class:`LongLine` for one over
    ``max_bytes``, in order; memory stays within ``max_bytes`` plus a chunk."""
    number = 0
    try:
        with open_input(path) as handle:
            while line := handle.readline(max_bytes + 1):
                number += 1
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    yield LongLine(len(line) + _skip_rest_of_line(handle))
                else:
                    yield line[:-1] if line.endswith(b"\n") else line
    except READ_FAILURES as exc:
        raise _read_error(path, exc, number + 1) from None


def _skip_rest_of_line(handle: BinaryIO) -> int:
    """Read up to and including the next newline; the bytes before it."""
    skipped = 0
    while chunk := handle.readline(CHUNK):
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)
    return skipped


def count_lines(path: str | os.PathLike) -> int:
    """How many lines :func:`read_lines` yields for ``path``, counted in large chunks."""
    count, last = 0, b"\n"
    try:
        with open_input(path) as handle:
            while chunk := handle.read(CHUNK):
                count += chunk.count(b"\n")
                last = chunk[-1:]
    except READ_FAILURES as exc:
        raise _read_error(path, exc) from None
    return count + (last != b"\n")


def _read_error(path: str | os.PathLike, exc: BaseException, line: int | None = None) -> ReadError:
    where = f"{path}:{line}" if line else str(path)
    if isinstance(exc, EOFError):
        return ReadError(f"{where}: the gzip data ends early; the file is truncated")
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return ReadError(f"{where}: not valid gzip data ({exc})")
    return ReadError(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})")
