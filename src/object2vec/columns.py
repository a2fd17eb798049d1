"""Token sequences as flat columns, and the one rule for what a valid token sequence is.

Training records, inference calls and HTTP bodies all carry token sequences; each caller checks
them with :func:`token_problem` and wraps the answer in its own error (``file:line:`` for
training data, the instance index for inference, an HTTP status for requests), so the rule is the
same everywhere and only the message's prefix differs.

A :class:`SequenceColumn` stores many variable-length sequences back to back in one int64 array
with offsets, which keeps millions of records cheap and lets padded batches be built with numpy
alone. :meth:`SequenceColumn.checked` applies the same rule to a whole column at once (one numpy
check instead of one Python comparison per token), and asks :func:`token_problem` only when that
check fails, to name the first offending sequence.
"""

from __future__ import annotations

import array
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to 40 characters, for error messages that quote what was sent."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_token(value: Any) -> bool:
    return (type(value) is int) or (isinstance(value, np.integer) and not isinstance(value, np.bool_))


def token_problem(value: Any, vocab_size: int) -> str | None:
    """What is wrong with ``value`` as a token sequence, or ``None`` when it is valid.

    Valid: a non-empty list (or tuple, or 1-D integer array) of integers in ``[0, vocab_size)``;
    booleans and floats (even ``2.0``) are not token IDs. The answer completes a sentence whose
    subject the caller names, e.g. ``"'in0' " + problem``.
    """
    if type(value) is list and value and all(type(t) is int for t in value):  # the common case, fast
        if min(value) >= 0 and max(value) < vocab_size:
            return None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return f"must be a list of integer token IDs, got {short_repr(value)}"
    if not value:
        return "is empty; it needs at least one token ID"
    for token in value:
        if not _is_token(token):
            return f"holds {short_repr(token)}, not an integer token ID"
        if not 0 <= token < vocab_size:
            return f"token ID {token} is outside [0, {vocab_size})"
    return None


class InvalidSequence(ValueError):
    """Sequence ``index`` of a column breaks the token rule; ``problem`` is :func:`token_problem`'s
    answer, which the caller prefixes with its own idea of where the sequence sits."""

    def __init__(self, index: int, problem: str):
        super().__init__(f"sequence {index} {problem}")
        self.index = index
        self.problem = problem


#: Below this many tokens Python's own min/max is cheaper than numpy's per-call overhead.
SMALL_COLUMN = 512


def _valid_int_lists(
    sequences: Sequence[Any], vocab_size: int, may_hold_bools: bool
) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens, lengths) when every sequence is a non-empty list of Python ints in
    ``[0, vocab_size)``, else None (the caller then finds the offender one sequence at a time).

    ``array('q', ...)`` converts in C and refuses floats, strings, None and ints beyond int64 with
    an exception; only booleans (an int subclass) would pass, so their absence is checked too,
    unless the caller knows there are none (a JSON body without the literals true/false).
    """
    if not all(type(seq) is list for seq in sequences):
        return None
    lengths = list(map(len, sequences))
    if lengths and min(lengths) == 0:
        return None
    flat = list(chain.from_iterable(sequences))
    try:
        tokens = np.frombuffer(array.array("q", flat), dtype=np.int64)
    except (TypeError, OverflowError):
        return None
    if may_hold_bools and bool in set(map(type, flat)):
        return None
    if flat:
        low, high = (min(flat), max(flat)) if len(flat) < SMALL_COLUMN else (tokens.min(), tokens.max())
        if low < 0 or high >= vocab_size:
            return None
    return tokens, np.array(lengths, dtype=np.int64)


@dataclass
class SequenceColumn:
    """Variable-length token sequences stored flat: ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # int64, all sequences back to back
    offsets: np.ndarray  # int64, len = n + 1

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> SequenceColumn:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        lengths.cumsum(out=offsets[1:])
        tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(tokens, offsets)

    @classmethod
    def from_lengths(cls, tokens: np.ndarray, lengths: np.ndarray) -> SequenceColumn:
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        lengths.cumsum(out=offsets[1:])
        return cls(tokens, offsets)

    @classmethod
    def checked(
        cls, sequences: Sequence[Any], vocab_size: int, may_hold_bools: bool = True
    ) -> SequenceColumn:
        """``sequences`` as a column, each checked by the rule of :func:`token_problem`; else
        :class:`InvalidSequence` for the first that breaks it.

        Lists of ints (what JSON parsing gives) are converted in C and checked with one numpy
        min/max per column; anything else (tuples, arrays, a bad value) is checked sequence by
        sequence, so the error is always :func:`token_problem`'s, for the first offender.
        ``may_hold_bools=False`` skips the search for booleans; only say so when none can be there.
        """
        valid = _valid_int_lists(sequences, vocab_size, may_hold_bools)
        if valid is not None:
            return cls.from_lengths(*valid)
        for index, sequence in enumerate(sequences):
            problem = token_problem(sequence, vocab_size)
            if problem is not None:
                raise InvalidSequence(index, problem)
        return cls.from_lists(sequences)

    @classmethod
    def concat(cls, columns: Sequence[SequenceColumn]) -> SequenceColumn:
        """The sequences of ``columns`` one after another, as one column."""
        if len(columns) == 1:
            return columns[0]
        if not columns:
            return cls(np.zeros(0, np.int64), np.zeros(1, np.int64))
        return cls.from_lengths(
            np.concatenate([c.tokens for c in columns]), np.concatenate([c.lengths for c in columns])
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

    def truncated(self, max_len: int | None) -> SequenceColumn:
        """Every sequence cut to its first ``max_len`` tokens (``None``: no limit); the column
        itself when none is longer."""
        if max_len is None:
            return self
        lengths = self.lengths
        if not len(lengths) or lengths.max() <= max_len:
            return self
        position = np.arange(len(self.tokens)) - np.repeat(self.offsets[:-1], lengths)
        return SequenceColumn.from_lengths(self.tokens[position < max_len], np.minimum(lengths, max_len))

    def take(self, indices: np.ndarray) -> SequenceColumn:
        """The sequences at ``indices``, in that order, as a new column."""
        return SequenceColumn.from_lists([self.get(i) for i in indices])

    def padded(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Token IDs padded with 0 to the longest selected sequence, and the true lengths."""
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        width = int(lengths.max()) if len(indices) else 1
        positions = np.arange(width)
        valid = positions[None, :] < lengths[:, None]
        gather = np.where(valid, starts[:, None] + positions[None, :], 0)
        ids = np.where(valid, self.tokens[gather] if len(self.tokens) else 0, 0)
        return torch.from_numpy(ids), torch.from_numpy(lengths)


@dataclass
class Instances:
    """Inference instances held as columns, all of one kind.

    ``pairs``: every instance gives in0 and in1 (pair scores); else every instance gives exactly
    one of them (its encoder's embedding). ``columns[s]`` holds the side-``s`` sequences that
    were given, in instance order, and ``rows[s]`` the instance index of each; ``None`` when every
    instance gives side ``s`` (no index array to build or follow in the common case).
    """

    size: int
    pairs: bool
    columns: tuple[SequenceColumn, SequenceColumn]
    rows: tuple[np.ndarray | None, np.ndarray | None] = (None, None)

    def __len__(self) -> int:
        return self.size
