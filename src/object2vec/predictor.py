"""A loaded model for inference: embed one side or score pairs; ID lists in, numpy out.

Inputs are validated here (every ID an integer in [0, vocab_size), no empty sequence) so that
callers (the Python API, the HTTP server, batch transform) all refuse bad input the same way,
with the index of the offending instance and the field. Sequences are truncated to the model's
``max_seq_len`` (or a tighter per-call cap, ``infer_max_seqlens``), sorted by length into
batches (no work wasted on padding), and returned in the caller's order.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from . import artifact
from .data import SequenceColumn
from .hyperparameters import Hyperparameters
from .nn import Object2VecNet
from .training import resolve_device

INFERENCE_BATCH_SIZE = 1024
PREFERRED_MODES = ("embedding", "classification")


class InputError(ValueError):
    """An inference input is invalid; ``index`` and ``field`` say where."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.index = index
        self.field = field


def to_column(sequences: Sequence[Sequence[int]], field: str, vocab_size: int, max_len: int) -> SequenceColumn:
    """Validate ``sequences`` and store them truncated to ``max_len``."""
    if isinstance(sequences, np.ndarray):
        sequences = sequences.tolist()
    checked: list[list[int]] = []
    for index, seq in enumerate(sequences):
        if isinstance(seq, np.ndarray):
            seq = seq.tolist()
        if not isinstance(seq, (list, tuple)):
            raise InputError(f"instance {index}: '{field}' must be a list of token IDs", index, field)
        if not seq:
            raise InputError(f"instance {index}: '{field}' is empty; it needs at least one token ID", index, field)
        for token in seq:
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise InputError(f"instance {index}: '{field}' holds {token!r}, not an integer token ID", index, field)
            if not 0 <= token < vocab_size:
                raise InputError(
                    f"instance {index}: '{field}' token ID {token} is outside [0, {vocab_size})", index, field)
        checked.append(list(seq[:max_len]))
    return SequenceColumn.from_lists(checked)


class Predictor:
    """Inference over a trained :class:`Object2VecNet`.

    ``preferred_mode`` (``INFERENCE_PREFERRED_MODE``): on a GPU, only the network that mode
    needs is placed on the GPU (the embedding mode needs the encoders; classification needs
    everything); the rest runs on the CPU. On a CPU it changes nothing.
    """

    def __init__(self, hp: Hyperparameters, net: Object2VecNet, device: torch.device | str | None = None,
                 preferred_mode: str | None = None, metrics: dict | None = None):
        self.hp = hp
        self.net = net.eval()
        self.metrics = metrics or {}
        self.device = resolve_device(device)
        self.preferred_mode = preferred_mode or os.environ.get("INFERENCE_PREFERRED_MODE") or None
        if self.preferred_mode is not None and self.preferred_mode not in PREFERRED_MODES:
            raise ValueError(f"INFERENCE_PREFERRED_MODE={self.preferred_mode!r}; valid: {', '.join(PREFERRED_MODES)}")
        self.net.to(self.device)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: torch.device | str | None = None,
             preferred_mode: str | None = None) -> "Predictor":
        hp, net, metrics = artifact.load(model_dir)
        return cls(hp, net, device, preferred_mode, metrics)

    @property
    def embedding_dim(self) -> int:
        """Length of every embedding vector: the encoders' output size, ``enc_dim``."""
        return self.hp.enc_dim

    @property
    def num_outputs(self) -> int:
        return 1 if self.net.regression else self.hp.num_classes

    def _max_len(self, side: int, cap: int | None) -> int:
        limit = self.hp[f"enc{side}_max_seq_len"]
        return limit if cap is None else min(limit, cap)

    def _column(self, side: int, sequences, cap: int | None) -> SequenceColumn:
        return to_column(sequences, f"in{side}", self.hp[f"enc{side}_vocab_size"], self._max_len(side, cap))

    @staticmethod
    def _batches(lengths: np.ndarray, batch_size: int):
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    @torch.inference_mode()
    def embed(self, in0=None, in1=None, *, max_len: int | None = None,
              batch_size: int = INFERENCE_BATCH_SIZE) -> np.ndarray:
        """Encoder embeddings of the sequences given as ``in0`` (enc0) or ``in1`` (enc1):
        a float32 array ``[n, enc_dim]``."""
        if (in0 is None) == (in1 is None):
            raise InputError("give exactly one of in0 or in1 to embed")
        side = 0 if in0 is not None else 1
        column = self._column(side, in0 if side == 0 else in1, max_len)
        out = np.empty((len(column), self.embedding_dim), dtype=np.float32)
        for rows in self._batches(column.lengths, batch_size):
            ids, lengths = column.padded(rows)
            vectors = self.net.encode(side, ids.to(self.device), lengths.to(self.device))
            out[rows] = vectors.float().cpu().numpy()
        return out

    @torch.inference_mode()
    def predict(self, in0, in1, *, max_len0: int | None = None, max_len1: int | None = None,
                batch_size: int = INFERENCE_BATCH_SIZE) -> np.ndarray:
        """Scores of pairs: probabilities ``[n, num_classes]`` (softmax) or values ``[n]``
        (regression), float32."""
        col0, col1 = self._column(0, in0, max_len0), self._column(1, in1, max_len1)
        if len(col0) != len(col1):
            raise InputError(f"in0 has {len(col0)} sequences but in1 has {len(col1)}")
        shape = (len(col0),) if self.net.regression else (len(col0), self.hp.num_classes)
        out = np.empty(shape, dtype=np.float32)
        for rows in self._batches(col0.lengths + col1.lengths, batch_size):
            ids0, len0 = col0.padded(rows)
            ids1, len1 = col1.padded(rows)
            move = lambda t: t.to(self.device)  # noqa: E731
            out[rows] = self.net.scores(move(ids0), move(len0), move(ids1), move(len1)).float().cpu().numpy()
        return out
