"""Token sequences as flat columns, and the one rule for what a valid token sequence is.

Training records, inference calls and HTTP bodies all carry token sequences; each caller checks
them with :func:`token_problem` and wraps the answer in its own error (``file:line:`` for
training data, the instance index for inference, an HTTP status for requests), so the rule is the
same everywhere and only the message's prefix differs.

A :class:`SequenceColumn` stores many variable-length sequences back to back in one int64 array
with offsets, which keeps millions of records cheap and lets padded batches be built with numpy
alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class SequenceColumn:
    """Variable-length token sequences stored flat: ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # int64, all sequences back to back
    offsets: np.ndarray  # int64, len = n + 1

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> SequenceColumn:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, index: int) -> np.ndarray:
        return self.tokens[self.offsets[index] : self.offsets[index + 1]]

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
