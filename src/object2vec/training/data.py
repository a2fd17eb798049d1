"""JSON Lines pairs -> validated columns -> padded mini-batches.

Records are streamed line by line (never one ``json.load`` of a whole file) from a file, a
``.gz`` file, or a directory of them, validated, truncated to ``max_seq_len`` and stored as flat
token arrays plus offsets, which keeps millions of records cheap. Batches carry the true lengths,
so every encoder masks padding and a result never depends on how much padding a batch has.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

from ..columns import SequenceColumn, token_problem
from ..errors import Object2VecError
from ..hyperparameters import Hyperparameters
from ..inputs import LongLine, read_lines

#: The longest line a training record may take. A valid record is far shorter (a label and two
#: token lists; lists longer than ``encX_max_seq_len`` are truncated once read), so a longer line
#: is a file that is not JSON Lines; it is refused without being held in memory.
MAX_RECORD_BYTES = 16 << 20
UTF8_BOM = b"\xef\xbb\xbf"
FLOAT32_MAX = float(np.finfo(np.float32).max)


class DataError(Object2VecError):
    """A training record is malformed; the message starts with ``file:line:``."""


def list_data_files(path: str | os.PathLike) -> list[Path]:
    """The JSON Lines files a channel path names: the file itself, or a directory's files."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"{root}: no such file or directory")
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{root}: cannot list the directory ({exc.strerror or exc})") from None
    if not files:
        raise DataError(f"{root}: directory holds no data files")
    return files


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[str, int, object]]:
    """Yield ``(file, line_number, parsed_object)`` for every non-blank line under ``path``.

    Lines are streamed (:func:`object2vec.inputs.read_lines`); a line over
    :data:`MAX_RECORD_BYTES`, one that is not UTF-8 or not JSON, or a file that cannot be read to
    its end stops reading with ``file:line: what is wrong``."""
    for file in list_data_files(path):
        for number, line in enumerate(read_lines(file, MAX_RECORD_BYTES), start=1):
            if isinstance(line, LongLine):
                raise DataError(
                    f"{file}:{number}: the line is {line.length} bytes, over the {MAX_RECORD_BYTES >> 20} "
                    "MiB a record may take; is the file JSON Lines (one record per line)?"
                )
            if number == 1 and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM) :]
            if line.strip():
                yield str(file), number, _parse(line, f"{file}:{number}")


def _parse(line: bytes, where: str) -> object:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DataError(f"{where}: {_json_problem(line, exc)}") from None


def _json_problem(line: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why a line is not JSON, in the terms of the mistakes actually made."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not valid UTF-8 (byte 0x{line[bad.start]:02x} at byte {bad.start + 1} of the line)"
    if text[exc.pos :].lstrip("-").startswith(("NaN", "Infinity")):
        return f"not valid JSON: NaN and Infinity are not JSON numbers (column {exc.colno})"
    return f"not valid JSON ({exc})"


@dataclass
class PairDataset:
    """Validated pairs: two token columns and a label per record."""

    in0: SequenceColumn
    in1: SequenceColumn
    labels: np.ndarray  # int64 for softmax, float32 for regression
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_sequences(
        cls,
        in0: Sequence[Sequence[int]],
        in1: Sequence[Sequence[int]],
        labels,
        regression: bool = False,
        source: str = "",
    ) -> PairDataset:
        """Pairs already in memory (token lists and labels), taken as given: no validation, no
        truncation (:func:`load_pairs` does both for files)."""
        dtype = np.float32 if regression else np.int64
        return cls(
            SequenceColumn.from_lists(in0), SequenceColumn.from_lists(in1), np.asarray(labels, dtype), source
        )

    @classmethod
    def from_records(cls, records: Sequence[dict], regression: bool = False) -> PairDataset:
        """Records ``{"label", "in0", "in1"}`` already in memory (see :meth:`from_sequences`)."""
        return cls.from_sequences(
            [r["in0"] for r in records],
            [r["in1"] for r in records],
            [r["label"] for r in records],
            regression,
        )

    def subset(self, indices: np.ndarray) -> PairDataset:
        """The records at ``indices`` (used to give each distributed rank its shard)."""
        return PairDataset(self.in0.take(indices), self.in1.take(indices), self.labels[indices], self.source)


def _check_tokens(value: object, field: str, vocab_size: int, where: str) -> list[int]:
    problem = token_problem(value, vocab_size)
    if problem is not None:
        raise DataError(f"{where}: field '{field}' {problem}")
    return value


def _check_label(value: object, regression: bool, num_classes: int, where: str) -> float | int:
    if regression:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(
                f"{where}: field 'label' must be a finite number for mean_squared_error, got {value!r}"
            )
        if abs(value) > FLOAT32_MAX:  # stored as float32, where it would become infinite
            raise DataError(
                f"{where}: field 'label' {value!r} is outside the float32 range (±{FLOAT32_MAX:.4g})"
            )
        return float(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise DataError(
            f"{where}: field 'label' must be an integer class in [0, {num_classes}), got {value!r}"
        )
    return value


def load_pairs(path: str | os.PathLike, hp: Hyperparameters) -> PairDataset:
    """Read and validate every record of a channel; fail on the first bad one with file:line."""
    regression = hp.regression
    in0: list[list[int]] = []
    in1: list[list[int]] = []
    labels: list[float | int] = []
    for file, number, record in iter_json_lines(path):
        where = f"{file}:{number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with 'label', 'in0' and 'in1'")
        for field in ("label", "in0", "in1"):
            if field not in record:
                raise DataError(f"{where}: missing field '{field}'")
        in0.append(_check_tokens(record["in0"], "in0", hp.enc0_vocab_size, where)[: hp.enc0_max_seq_len])
        in1.append(_check_tokens(record["in1"], "in1", hp.enc1_vocab_size, where)[: hp.enc1_max_seq_len])
        labels.append(_check_label(record["label"], regression, hp.num_classes, where))
    if not labels:
        raise DataError(f"{path}: no records")
    return PairDataset.from_sequences(in0, in1, labels, regression, str(path))


@dataclass
class Batch:
    """One padded mini-batch, ready for the network."""

    in0: torch.Tensor
    len0: torch.Tensor
    in1: torch.Tensor
    len1: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.in0), move(self.len0), move(self.in1), move(self.len1), move(self.labels))

    def __len__(self) -> int:
        return len(self.labels)


def epoch_pairs(
    data: PairDataset, negative_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (in0 index, in1 index, label) triples of one epoch.

    With ``negative_rate = k`` each positive record (label != 0) also yields k negatives: its in0
    paired with the in1 of another record drawn at random, labelled 0, as the reference's
    negative sampling does ("r negative pairs per positive"). Records already labelled 0 get none.
    """
    n = len(data)
    idx0 = np.arange(n)
    idx1 = np.arange(n)
    labels = data.labels
    if negative_rate > 0 and n > 1:
        neg0 = np.repeat(idx0[labels != 0], negative_rate)
        offset = rng.integers(1, n, size=len(neg0))  # never 0, so never the record itself
        neg1 = (neg0 + offset) % n
        idx0 = np.concatenate([idx0, neg0])
        idx1 = np.concatenate([idx1, neg1])
        labels = np.concatenate([labels, np.zeros(len(neg0), dtype=labels.dtype)])
    return idx0, idx1, labels


def batch_order(
    lengths0: np.ndarray,
    lengths1: np.ndarray,
    batch_size: int,
    bucket_width: int,
    rng: np.random.Generator | None,
) -> list[np.ndarray]:
    """Split positions ``0..n-1`` into mini-batches.

    Without bucketing: a shuffled (or, with ``rng=None``, sequential) split. With
    ``bucket_width = w``: records whose in0 and in1 lengths fall in the same width-``w`` bins
    share batches, so little compute goes to padding; batch order is shuffled.
    """
    n = len(lengths0)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if bucket_width <= 0:
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    keys = (lengths0[order] - 1) // bucket_width * 100_003 + (lengths1[order] - 1) // bucket_width
    order = order[np.argsort(keys, kind="stable")]
    sorted_keys = np.sort(keys, kind="stable")
    batches: list[np.ndarray] = []
    for bucket in np.split(order, np.flatnonzero(np.diff(sorted_keys)) + 1):
        batches.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def iterate_batches(
    data: PairDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    negative_rate: int = 0,
    bucket_width: int = 0,
    rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """Yield the padded mini-batches of one pass over ``data``."""
    rng = rng if rng is not None else np.random.default_rng()
    idx0, idx1, labels = epoch_pairs(data, negative_rate, rng)
    lengths0, lengths1 = data.in0.lengths[idx0], data.in1.lengths[idx1]
    for positions in batch_order(lengths0, lengths1, batch_size, bucket_width, rng if shuffle else None):
        in0, len0 = data.in0.padded(idx0[positions])
        in1, len1 = data.in1.padded(idx1[positions])
        yield Batch(in0, len0, in1, len1, torch.from_numpy(labels[positions]))


def epoch_size(data: PairDataset, negative_rate: int) -> int:
    """Training samples per epoch: the records plus their negatives (for progress bars)."""
    return len(data) + negative_rate * int(np.count_nonzero(data.labels != 0))
