"""A loaded model for inference: embed one side or score pairs; token sequences in, numpy out.

Inputs are validated here (every ID an integer in [0, vocab_size), no empty sequence) so that
callers (the Python API, the HTTP server, batch transform) all refuse bad input the same way,
with the index of the offending instance and the field. Sequences are truncated to the model's
``max_seq_len`` (or a tighter per-call cap, ``infer_max_seqlens``) and encoded with no work on
padding (:mod:`object2vec.nn.inference`); answers come back in the caller's order.

The server hands over already validated columns (:class:`~object2vec.columns.Instances`) through
:meth:`Predictor.answer`; the list-based calls build the same columns and go the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .. import artifact
from ..columns import Instances, InvalidSequence, SequenceColumn
from ..errors import Object2VecError
from ..hyperparameters import Hyperparameters
from ..nn import Object2VecNet
from ..nn.inference import encode_column, pooled_encodings, prepare
from ..runtime import resolve_device

INFERENCE_BATCH_SIZE = 1024
#: The most arithmetic a pass of pooled encoders on a CPU may need to count as cheap (counted by
#: :meth:`Predictor.pass_flop`): 2 GFLOP is 15-30 ms on two cores of 70-130 GFLOP/s. 1,000
#: embeddings of the benchmark's model (enc_dim 256) need 0.14 GFLOP, 1,000 pairs with its
#: 2-layer MLP of 512 1.8 GFLOP.
CHEAP_PASS_FLOP = 2e9
#: ...and at most this many tokens (memory-bound gathers the FLOP count underrates: 2M tokens of
#: 1,000 dimensions took 385 ms) and head weights (a pass reads them all, however few pairs: an MLP
#: of 4 x 8,192 took 153 ms for 4 pairs); 1,000 instances of 5-32 tokens are 18,700 tokens.
CHEAP_PASS_TOKENS = 65_536
CHEAP_PASS_HEAD_WEIGHTS = 4_000_000
PREFERRED_MODES = ("embedding", "classification")


class InputError(Object2VecError):
    """An inference input is invalid; ``index`` and ``field`` say where."""

    def __init__(self, message: str, index: int | None = None, field: str | None = None):
        super().__init__(message)
        self.index = index
        self.field = field


def to_column(
    sequences: Sequence[Sequence[int]],
    field: str,
    vocab_size: int,
    max_len: int,
    validate: bool = True,
    indices: Sequence[int] | None = None,
) -> SequenceColumn:
    """Validate ``sequences`` and store them truncated to ``max_len``; a bad one is an
    :class:`InputError` naming its instance (``indices[i]`` when the sequences are a subset of a
    call's instances). ``validate=False`` is for input a caller has already checked."""
    if isinstance(sequences, np.ndarray):
        sequences = list(sequences)
    if not validate:
        return SequenceColumn.from_lists(sequences).truncated(max_len)
    try:
        return SequenceColumn.checked(sequences, vocab_size).truncated(max_len)
    except InvalidSequence as exc:
        index = exc.index if indices is None else indices[exc.index]
        raise InputError(f"instance {index}: '{field}' {exc.problem}", index, field) from None


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
        self._max_seq_lens = (hp.encoder(0).max_seq_len, hp.encoder(1).max_seq_len)
        self._encoders_on_cpu = self.encoder_device.type == "cpu"
        self._pooled_on_cpu = (
            all(hp.encoder(side).network == "pooled_embedding" for side in (0, 1))
            and self.encoder_device.type == "cpu"
            and self.head_device.type == "cpu"
        )
        # the encoder modules, looked up once (through nn.Module attribute lookups a call costs
        # about 5 us, and a server's pass looks each side up)
        self._encoders = encoders = (self.net.encoder(0), self.net.encoder(1))
        self._encoder_flop = [(hp.encoder(s).token_embedding_dim, _linear_flop(encoders[s])) for s in (0, 1)]
        in_encoders = {id(module) for encoder in encoders for module in encoder.modules()}
        self._head_flop = _linear_flop(self.net, skip=in_encoders)
        self._small_head = self._head_flop / 2 <= CHEAP_PASS_HEAD_WEIGHTS  # weights: 2 FLOP each

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

    def cheap_pass(self, batch: Sequence[Instances]) -> bool:
        """Whether answering ``batch`` costs little beside the JSON around it: pooled encoders on a
        CPU, at most ``CHEAP_PASS_FLOP``, ``CHEAP_PASS_TOKENS`` tokens and, for pairs, a head of at
        most ``CHEAP_PASS_HEAD_WEIGHTS`` weights (1,000 embeddings take about 2 ms), where hcnn or
        bilstm take hundreds of ms. The server runs such passes on its event loop (``MicroBatcher``)."""
        if not self._pooled_on_cpu:
            return False
        tokens, sequences, pairs = _counts(batch)
        if pairs and not self._small_head:
            return False
        small = tokens[0] + tokens[1] <= CHEAP_PASS_TOKENS
        return small and self._flop(tokens, sequences, pairs) <= CHEAP_PASS_FLOP

    def pass_flop(self, batch: Sequence[Instances]) -> float:
        """The arithmetic of answering ``batch`` with pooled encoders: a token's vector added to its
        sequence's sum, each sequence's projection (and the rest of the encoder's linear layers),
        and for pairs the comparator's MLP and head. An upper bound: tokens past ``max_seq_len``
        are counted too, and so is the projection, which a projected token table spares
        (``nn.inference.projected_table``)."""
        return self._flop(*_counts(batch))

    def _flop(self, tokens: list[int], sequences: list[int], pairs: int) -> float:
        flop = float(pairs * self._head_flop)
        for side, (per_token, per_sequence) in enumerate(self._encoder_flop):
            flop += tokens[side] * per_token + sequences[side] * per_sequence
        return flop

    def prepare(self) -> None:
        """Make what answering keeps between passes (``nn.inference.prepare``), before the first
        request rather than during it."""
        for side in (0, 1):
            prepare(self._encoders[side])

    @property
    def num_outputs(self) -> int:
        return 1 if self.net.regression else self.hp.num_classes

    def _max_len(self, side: int, cap: int | None) -> int:
        limit = self._max_seq_lens[side]
        return limit if cap is None else min(limit, cap)

    def _column(
        self, side: int, sequences, cap: int | None, validate: bool = True, indices=None
    ) -> SequenceColumn:
        vocab_size = self.hp.encoder(side).vocab_size
        return to_column(sequences, f"in{side}", vocab_size, self._max_len(side, cap), validate, indices)

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

        Pairs and single inputs are answered by :meth:`answer`, each kind in one pass.
        ``validate=False`` skips the token checks for input the caller has validated already.
        """
        if len(in0) != len(in1):
            raise InputError(f"in0 has {len(in0)} entries but in1 has {len(in1)}")
        given = [(a is not None, b is not None) for a, b in zip(in0, in1)]
        missing = [i for i, (a, b) in enumerate(given) if not (a or b)]
        if missing:
            raise InputError(f"instance {missing[0]} has neither in0 nor in1", missing[0])
        pairs = [i for i, (a, b) in enumerate(given) if a and b]
        singles = [i for i, (a, b) in enumerate(given) if a != b]
        rows0 = [i for i in singles if given[i][0]]
        rows1 = [i for i in singles if given[i][1]]

        def column(side: int, rows: list[int]) -> SequenceColumn:
            sequences = in0 if side == 0 else in1
            return self._column(side, [sequences[i] for i in rows], None, validate, rows)

        parts = [
            Instances(len(pairs), True, (column(0, pairs), column(1, pairs))),
            Instances(
                len(singles),
                False,
                (column(0, rows0), column(1, rows1)),
                tuple(np.searchsorted(singles, rows) for rows in (rows0, rows1)),
            ),
        ]
        results: list[np.ndarray] = [None] * len(in0)  # type: ignore[list-item]
        for indices, answers in zip((pairs, singles), self.answer(parts, batch_size)):
            for i, row in zip(indices, answers):
                results[i] = row
        return results

    def answer(self, batch: Sequence[Instances], batch_size: int = INFERENCE_BATCH_SIZE) -> list[np.ndarray]:
        """One float32 array per element of ``batch``, rows in instance order: pair scores
        ``[n, num_classes]`` (``[n, 1]`` for regression) for pairs, else embeddings
        ``[n, enc_dim]``. Sequences are cut to the model's ``max_seq_len`` here.

        Pairs of every element are scored in one pass and each encoder embeds its inputs of every
        element in one pass, which is what lets the server answer many small concurrent
        requests together (a pooled encoder on the CPU embeds a pass of a few requests straight
        from each request's columns, in one C call: :meth:`_embed_columns`).
        """
        answers: list[np.ndarray | None] = [None] * len(batch)
        pairs = [i for i, part in enumerate(batch) if part.pairs and part.size]
        if pairs:
            col0, col1 = (
                self._capped(side, SequenceColumn.concat([batch[i].columns[side] for i in pairs]))
                for side in (0, 1)
            )
            scores = self._score_columns(col0, col1, batch_size).reshape(len(col0), -1)
            for i, block in zip(pairs, _split(scores, [batch[i].size for i in pairs])):
                answers[i] = block
        singles = [i for i, part in enumerate(batch) if not part.pairs or not part.size]
        for side in (0, 1):
            columns = [batch[i].columns[side] for i in singles]
            if all(len(column.offsets) == 1 for column in columns):  # no sequence on this side
                continue
            blocks = self._embed_columns(side, columns, batch_size)
            for i, block in zip(singles, blocks):
                rows = batch[i].rows[side]
                if rows is None:  # every instance gives this side: the block is the answer
                    answers[i] = block
                elif len(block):
                    if answers[i] is None:
                        answers[i] = np.empty((batch[i].size, self.embedding_dim), dtype=np.float32)
                    answers[i][rows] = block
        for i in singles:
            if answers[i] is None:
                answers[i] = np.empty((0, self.embedding_dim), dtype=np.float32)
        return answers  # type: ignore[return-value]

    def _capped(self, side: int, column: SequenceColumn) -> SequenceColumn:
        return column.truncated(self._max_seq_lens[side])

    def _encode(self, side: int, column: SequenceColumn, batch_size: int) -> torch.Tensor:
        return encode_column(self._encoders[side], column, self.encoder_device, batch_size)

    def _embed_columns(self, side: int, columns: list[SequenceColumn], batch_size: int) -> list[np.ndarray]:
        """Each column's embeddings: by the C loop straight from the columns where it applies (a pooled
        encoder on the CPU, a pass of a few requests: ``pooled_encodings``), else in one pass over
        the columns joined, then split."""
        if self._encoders_on_cpu:
            blocks = pooled_encodings(self._encoders[side], columns, self._max_seq_lens[side])
            if blocks is not None:
                return blocks
        vectors = self._embed_column(side, self._capped(side, SequenceColumn.concat(columns)), batch_size)
        return _split(vectors, list(map(len, columns)))

    @torch.inference_mode()
    def _embed_column(self, side: int, column: SequenceColumn, batch_size: int) -> np.ndarray:
        return self._encode(side, column, batch_size).float().cpu().numpy()

    @torch.inference_mode()
    def _score_columns(self, col0: SequenceColumn, col1: SequenceColumn, batch_size: int) -> np.ndarray:
        """Each side encoded on its own (sorted by its own lengths), then the head in chunks."""
        a, b = self._encode(0, col0, batch_size), self._encode(1, col1, batch_size)
        a, b = a.to(self.head_device), b.to(self.head_device)
        chunks = [
            self._head_scores(a[start : start + batch_size], b[start : start + batch_size])
            for start in range(0, len(a), batch_size)
        ]
        shape = (len(col0),) if self.net.regression else (len(col0), self.hp.num_classes)
        if not chunks:
            return np.empty(shape, dtype=np.float32)
        scores = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return scores.float().cpu().numpy().reshape(shape)

    def _head_scores(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The network's ``scores`` from the two encodings, on the head's device (which may differ
        from the encoders' under INFERENCE_PREFERRED_MODE=embedding)."""
        return self.net.score_encodings(a, b)


def _counts(batch: Sequence[Instances]) -> tuple[list[int], list[int], int]:
    """Tokens and sequences of each side, and pairs, in ``batch`` (one loop: the server asks on
    every pass)."""
    tokens, sequences, pairs = [0, 0], [0, 0], 0
    for part in batch:
        for side, column in enumerate(part.columns):
            tokens[side] += len(column.tokens)
            sequences[side] += len(column.offsets) - 1
        if part.pairs:
            pairs += part.size
    return tokens, sequences, pairs


def _linear_flop(module: torch.nn.Module, skip: frozenset[int] | set[int] = frozenset()) -> int:
    """Multiply-adds (x2) of one row through every linear layer of ``module`` not in ``skip``."""
    return 2 * sum(
        m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear) and id(m) not in skip
    )


def _split(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``rows`` cut into consecutive blocks of ``sizes`` rows (views, no copies). Plain slices:
    ``np.split`` took 65 us for the 15 blocks of a pass of single-instance requests, this 5."""
    if len(sizes) == 1:  # one request in the pass: the whole array
        return [rows]
    blocks, start = [], 0
    for size in sizes:
        blocks.append(rows[start : start + size])
        start += size
    return blocks
