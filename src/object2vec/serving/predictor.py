"""A loaded model for inference: embed one side or score pairs; ID lists in, numpy out.

Inputs are validated here (every ID an integer in [0, vocab_size), no empty sequence) so that
callers (the Python API, the HTTP server, batch transform) all refuse bad input the same way,
with the index of the offending instance and the field. Sequences are truncated to the model's
``max_seq_len`` (or a tighter per-call cap, ``infer_max_seqlens``), sorted by length into
batches (no work wasted on padding), and returned in the caller's order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .. import artifact
from ..columns import SequenceColumn, token_problem
from ..errors import Object2VecError
from ..hyperparameters import Hyperparameters
from ..nn import Object2VecNet
from ..runtime import resolve_device

INFERENCE_BATCH_SIZE = 1024
PREFERRED_MODES = ("embedding", "classification")


class InputError(Object2VecError):
    """An inference input is invalid; ``index`` and ``field`` say where."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.index = index
        self.field = field


def to_column(
    sequences: Sequence[Sequence[int]], field: str, vocab_size: int, max_len: int, validate: bool = True
) -> SequenceColumn:
    """Validate ``sequences`` and store them truncated to ``max_len``. ``validate=False`` is for
    lists of int lists a caller has already checked (the HTTP protocol does, naming the request's
    instance index)."""
    if isinstance(sequences, np.ndarray):
        sequences = list(sequences)
    if validate:
        for index, seq in enumerate(sequences):
            problem = token_problem(seq, vocab_size)
            if problem is not None:
                raise InputError(f"instance {index}: '{field}' {problem}", index, field)
    return SequenceColumn.from_lists([seq[:max_len] for seq in sequences])


def placement(device: torch.device, preferred_mode: str | None) -> tuple[torch.device, torch.device]:
    """(encoders' device, comparator/MLP/head device) for ``INFERENCE_PREFERRED_MODE``.

    GPU memory is the scarce resource: ``embedding`` keeps only the encoders (what embedding
    requests run) on the GPU and the scoring head on the CPU; ``classification`` (or no
    preference) keeps the whole network on the GPU. On a CPU both are the CPU.
    """
    if device.type == "cpu" or preferred_mode != "embedding":
        return device, device
    return device, torch.device("cpu")


def inference_threads(workers: int = 1, threads: int | None = None) -> int:
    """Set torch's intra-op threads for one of ``workers`` serving processes: ``threads`` when
    given, else ``OMP_NUM_THREADS`` when set, else an equal share of this machine's CPU cores.
    Oversubscribed cores make every request slower: OpenMP threads wait on each other."""
    if threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])
    if threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = cores // max(1, workers)
    threads = max(1, threads)
    torch.set_num_threads(threads)
    return threads


class Predictor:
    """Inference over a trained :class:`Object2VecNet`.

    ``preferred_mode`` (``INFERENCE_PREFERRED_MODE``): on a GPU, only the network that mode
    needs is placed on the GPU (the embedding mode needs the encoders; classification needs
    everything); the rest runs on the CPU. On a CPU it changes nothing.
    """

    def __init__(
        self,
        hp: Hyperparameters,
        net: Object2VecNet,
        device: torch.device | str | None = None,
        preferred_mode: str | None = None,
        metrics: dict | None = None,
    ):
        self.hp = hp
        self.net = net.eval()
        self.metrics = metrics or {}
        self.device = resolve_device(device)
        self.preferred_mode = preferred_mode or os.environ.get("INFERENCE_PREFERRED_MODE") or None
        if self.preferred_mode is not None and self.preferred_mode not in PREFERRED_MODES:
            raise ValueError(
                f"INFERENCE_PREFERRED_MODE={self.preferred_mode!r}; valid: {', '.join(PREFERRED_MODES)}"
            )
        self.encoder_device, self.head_device = placement(self.device, self.preferred_mode)
        self.net.place(self.encoder_device, self.head_device)

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        device: torch.device | str | None = None,
        preferred_mode: str | None = None,
    ) -> Predictor:
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
        limit = self.hp.encoder(side).max_seq_len
        return limit if cap is None else min(limit, cap)

    def _column(self, side: int, sequences, cap: int | None, validate: bool = True) -> SequenceColumn:
        vocab_size = self.hp.encoder(side).vocab_size
        return to_column(sequences, f"in{side}", vocab_size, self._max_len(side, cap), validate)

    @staticmethod
    def _batches(lengths: np.ndarray, batch_size: int):
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    @torch.inference_mode()
    def embed(
        self, in0=None, in1=None, *, max_len: int | None = None, batch_size: int = INFERENCE_BATCH_SIZE
    ) -> np.ndarray:
        """Encoder embeddings of the sequences given as ``in0`` (enc0) or ``in1`` (enc1):
        a float32 array ``[n, enc_dim]``."""
        if (in0 is None) == (in1 is None):
            raise InputError("give exactly one of in0 or in1 to embed")
        side = 0 if in0 is not None else 1
        return self._embed_column(side, self._column(side, in0 if side == 0 else in1, max_len), batch_size)

    @torch.inference_mode()
    def predict(
        self,
        in0,
        in1,
        *,
        max_len0: int | None = None,
        max_len1: int | None = None,
        batch_size: int = INFERENCE_BATCH_SIZE,
    ) -> np.ndarray:
        """Scores of pairs: probabilities ``[n, num_classes]`` (softmax) or values ``[n]``
        (regression), float32."""
        col0, col1 = self._column(0, in0, max_len0), self._column(1, in1, max_len1)
        if len(col0) != len(col1):
            raise InputError(f"in0 has {len(col0)} sequences but in1 has {len(col1)}")
        return self._score_columns(col0, col1, batch_size)

    @torch.inference_mode()
    def infer(
        self, in0: Sequence, in1: Sequence, *, validate: bool = True, batch_size: int = INFERENCE_BATCH_SIZE
    ) -> list[np.ndarray]:
        """Answer a mixed list of instances, one float32 vector per instance in order: the pair
        scores where both ``in0[i]`` and ``in1[i]`` are given (length num_classes, or 1 for
        regression), else the embedding of the one given (length ``enc_dim``).

        Each kind runs as one batched pass over all its instances, which is what lets the server
        answer many small concurrent requests with one forward pass. ``validate=False`` skips the
        token checks for input the caller has validated already.
        """
        if len(in0) != len(in1):
            raise InputError(f"in0 has {len(in0)} entries but in1 has {len(in1)}")
        results: list[np.ndarray | None] = [None] * len(in0)
        pairs = [i for i, (a, b) in enumerate(zip(in0, in1)) if a is not None and b is not None]
        if pairs:
            scores = self._score_columns(
                self._column(0, [in0[i] for i in pairs], None, validate),
                self._column(1, [in1[i] for i in pairs], None, validate),
                batch_size,
            )
            for i, row in zip(pairs, scores.reshape(len(pairs), -1)):
                results[i] = row
        for side, given in ((0, in0), (1, in1)):
            other = in1 if side == 0 else in0
            rows = [
                i for i, (mine, theirs) in enumerate(zip(given, other)) if mine is not None and theirs is None
            ]
            if rows:
                vectors = self._embed_column(
                    side, self._column(side, [given[i] for i in rows], None, validate), batch_size
                )
                for i, row in zip(rows, vectors):
                    results[i] = row
        missing = [i for i, row in enumerate(results) if row is None]
        if missing:
            raise InputError(f"instance {missing[0]} has neither in0 nor in1", missing[0])
        return results  # type: ignore[return-value]

    def _embed_column(self, side: int, column: SequenceColumn, batch_size: int) -> np.ndarray:
        out = np.empty((len(column), self.embedding_dim), dtype=np.float32)
        for rows in self._batches(column.lengths, batch_size):
            ids, lengths = column.padded(rows)
            vectors = self.net.encode(side, ids.to(self.encoder_device), lengths.to(self.encoder_device))
            out[rows] = vectors.float().cpu().numpy()
        return out

    def _score_columns(self, col0: SequenceColumn, col1: SequenceColumn, batch_size: int) -> np.ndarray:
        shape = (len(col0),) if self.net.regression else (len(col0), self.hp.num_classes)
        out = np.empty(shape, dtype=np.float32)
        device = self.encoder_device
        for rows in self._batches(col0.lengths + col1.lengths, batch_size):
            (ids0, len0), (ids1, len1) = col0.padded(rows), col1.padded(rows)
            a = self.net.encode(0, ids0.to(device), len0.to(device))
            b = self.net.encode(1, ids1.to(device), len1.to(device))
            out[rows] = (
                self._head_scores(a.to(self.head_device), b.to(self.head_device)).float().cpu().numpy()
            )
        return out

    def _head_scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The network's ``scores`` from the two encodings, on the head's device (which may differ
        from the encoders' under INFERENCE_PREFERRED_MODE=embedding)."""
        return self.net.score_encodings(a, b)
