"""Encoders: one interface, ``(token ids [B, T], lengths [B]) -> [B, enc_dim]``.

Every encoder receives the true lengths and masks padding, so its output for a sequence never
depends on how long the other sequences of its batch are. New architectures register in
``ENCODERS``; a name with no builder is refused with a clear error, never silently swapped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..hyperparameters import EncoderConfig, HyperparameterError
from .dropout import Dropout

#: Standard deviation of an ID table's initial rows (inputs of one token: users, items, labels).
#: Small rows keep the first epochs close to a bias-only model, which is what stops
#: ID-embedding models (MovieLens) from memorising the training pairs in one epoch.
ID_INIT_STD = 0.01
#: Standard deviation of a word table's initial rows (inputs that are sequences). At unit scale
#: distinct words are nearly orthogonal random features from step 0, so a pooled sentence is a
#: random projection of its bag of words and the comparator already sees which words two inputs
#: share; rows near zero would make every word look alike until training separates them, and
#: on SICK that costs about 4 points of entailment accuracy (README, SICK benchmark).
WORD_INIT_STD = 1.0


def token_init_std(max_seq_len: int) -> float:
    """The initial scale of a token table whose inputs are at most ``max_seq_len`` tokens long."""
    return ID_INIT_STD if max_seq_len <= 1 else WORD_INIT_STD


def make_token_table(vocab_size: int, dim: int, sparse: bool, std: float = ID_INIT_STD) -> nn.Embedding:
    """A token embedding table with N(0, std²) rows; ``sparse=True`` gives row-sparse gradients
    (row_sparse storage)."""
    table = nn.Embedding(vocab_size, dim, sparse=sparse)
    nn.init.normal_(table.weight, std=std)
    return table


@torch.no_grad()
def load_rows(table: nn.Embedding, ids: torch.Tensor, vectors: torch.Tensor, freeze: bool) -> None:
    """Initialise ``table``'s rows ``ids`` with ``vectors``; ``freeze=True`` keeps exactly those
    rows fixed during training while the others still train.

    The other rows (words the file lacks) are redrawn at the scale of the loaded vectors, so a
    missing word is neither louder nor quieter than a known one in a pooled sentence.

    Freezing is done by the table itself, so it holds whatever optimizer trains it: the rows'
    gradients are zeroed (dense or row-sparse), and since weight decay or momentum could still
    move them, the rows are written back before every forward pass and whenever the weights
    are read (``state_dict``, so checkpoints and saved models hold the pretrained values).
    """
    ids = torch.as_tensor(ids, dtype=torch.long, device=table.weight.device)
    vectors = torch.as_tensor(vectors, dtype=table.weight.dtype, device=table.weight.device)
    if len(ids) > 1:
        nn.init.normal_(table.weight, std=float(vectors.std()))
    table.weight[ids] = vectors
    if not freeze or len(ids) == 0:
        return
    frozen = torch.zeros(table.num_embeddings, dtype=torch.bool, device=table.weight.device)
    frozen[ids] = True
    table.register_buffer("frozen_rows", frozen, persistent=False)
    table.register_buffer("frozen_ids", ids, persistent=False)
    table.register_buffer("frozen_vectors", vectors.clone(), persistent=False)
    table.weight.register_hook(lambda grad: _zero_frozen_grad(grad, table.frozen_rows))
    table.register_forward_pre_hook(lambda module, args: _restore_frozen(module))
    table.register_state_dict_pre_hook(lambda module, prefix, keep_vars: _restore_frozen(module))


def _zero_frozen_grad(grad: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    if grad.is_sparse:
        grad = grad.coalesce()
        rows = grad.indices()[0]
        values = grad.values() * (~frozen[rows]).unsqueeze(-1).to(grad.dtype)
        return torch.sparse_coo_tensor(
            grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
        )
    return grad * (~frozen).unsqueeze(-1).to(grad.dtype)


@torch.no_grad()
def _restore_frozen(table: nn.Embedding) -> None:
    table.weight[table.frozen_ids] = table.frozen_vectors


def table_weight(table: nn.Embedding) -> torch.Tensor:
    """``table.weight`` for code that reads it without calling the table (``embedding_bag``),
    with frozen pretrained rows written back first, as the table's own forward pass does."""
    if hasattr(table, "frozen_ids"):
        _restore_frozen(table)
    return table.weight


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, T]`` boolean mask, True on real tokens."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def real_tokens(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The real tokens of padded ``[B, T]`` ``ids`` (``lengths`` at most ``T``), one sequence after
    another. On the CPU by numpy's boolean indexing: 55-60 us for a StarSpace-shaped batch's
    1,536 x 50 IDs where torch's ``ids[mask]`` took 280-300 us (and ``masked_select`` 175); the
    same tokens in the same order."""
    if ids.device.type != "cpu":
        return ids[padding_mask(lengths, ids.shape[1])]
    mask = np.arange(ids.shape[1]) < lengths.numpy()[:, None]
    return torch.from_numpy(ids.numpy()[mask])


class Encoder(nn.Module):
    """Maps padded token IDs and their lengths to one ``enc_dim`` vector per sequence.

    Every encoder is built from its token table, the output size, its side's
    :class:`~object2vec.hyperparameters.EncoderConfig` and the dropout rate; it reads the settings
    that apply to it and ignores the others (``cnn_filter_width`` means nothing to a BiLSTM).
    """

    def __init__(self, embedding: nn.Embedding, enc_dim: int, config: EncoderConfig, dropout: float = 0.0):
        super().__init__()
        self.embedding = embedding
        self.enc_dim = enc_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


#: Token IDs below this fit 16 bits, where numpy's stable argsort is a radix sort.
RADIX_SORT_BOUND = 1 << 16


def stable_sort(ids: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (all in ``[0, bound)``) sorted, and the permutation that sorts them, equal IDs kept
    in position order.

    On the CPU with ``bound`` at most 65,536, numpy's radix sort of the IDs as 16-bit integers:
    the same permutation as ``torch.sort(ids, stable=True)`` in about a sixth of the time (110 against
    640 us for the 13,400 tokens of a StarSpace-shaped batch; 5% of its training step before).
    Larger vocabularies would need two radix passes, measured slower than ``torch.sort``."""
    if ids.device.type != "cpu" or bound > RADIX_SORT_BOUND:
        return torch.sort(ids, stable=True)
    order = torch.from_numpy(np.argsort(ids.detach().numpy().astype(np.uint16), kind="stable"))
    return ids.index_select(0, order), order


class _SparseBagMean(torch.autograd.Function):
    """Per-sequence mean of table rows whose table gradient is row-sparse and already coalesced.

    ``nn.Embedding(sparse=True)`` hands back one gradient row per token position (padding
    included), which the optimizer must then coalesce: sort, sum duplicates, and, for Adam,
    match the moment rows. Here the backward pass sums each distinct row's gradient directly,
    as an ``embedding_bag`` over the output gradient (row ``u`` = sum over the positions of
    token ``u`` of ``grad[sequence] / length``), so the rows leave sorted and unique and no
    per-position copy is made.
    """

    @staticmethod
    def forward(ctx, weight, flat, offsets, owner, scale):
        ctx.save_for_backward(flat, owner, scale)
        ctx.table_shape = weight.shape
        return F.embedding_bag(flat, weight, offsets, mode="mean")

    @staticmethod
    def backward(ctx, grad):
        flat, owner, scale = ctx.saved_tensors
        sorted_ids, order = stable_sort(flat, ctx.table_shape[0])
        rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
        values = F.embedding_bag(
            owner.index_select(0, order),
            grad.contiguous(),
            counts.cumsum(0) - counts,
            mode="sum",
            per_sample_weights=scale.index_select(0, order),
        )
        table_grad = torch.sparse_coo_tensor(
            rows.unsqueeze(0), values, ctx.table_shape, is_coalesced=True, check_invariants=False
        )
        return table_grad, None, None, None, None


def bag_mean(table: nn.Embedding, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` padded IDs -> ``[B, dim]``: the mean of each sequence's rows of ``table``,
    computed on the real tokens only (``embedding_bag`` over the flattened sequences, nothing
    done for padding). A row-sparse table's gradient holds each used row once
    (:class:`_SparseBagMean`); an empty sequence pools to zeros."""
    return bag_means(table, [(ids, lengths)])[0]


def bag_means(table: nn.Embedding, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """:func:`bag_mean` of several padded batches over one table, in one ``embedding_bag`` call:
    with a shared table (in0 and in1 of a tied table) the backward pass then sums each row's
    gradient once, where two calls would give two sparse gradients for autograd to merge."""
    flats, counts = [], []
    for ids, lengths in inputs:
        lengths = lengths.clamp(max=ids.shape[1])
        flats.append(real_tokens(ids, lengths))
        counts.append(lengths)
    flat, lengths = torch.cat(flats), torch.cat(counts)
    offsets = lengths.cumsum(0) - lengths
    weight = table_weight(table)
    if not table.sparse or not torch.is_grad_enabled():
        pooled = F.embedding_bag(flat, weight, offsets, mode="mean")
    else:
        owner = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device), lengths)
        scale = lengths.clamp(min=1).to(weight.dtype).reciprocal().index_select(0, owner)
        pooled = _SparseBagMean.apply(weight, flat, offsets, owner, scale)
    return list(pooled.split([len(c) for c in counts]))


class PooledEmbeddingEncoder(Encoder):
    """Mean of the non-padding token embeddings, projected linearly to ``enc_dim``."""

    def __init__(self, embedding: nn.Embedding, enc_dim: int, config: EncoderConfig, dropout: float = 0.0):
        super().__init__(embedding, enc_dim, config, dropout)
        self.project = nn.Linear(embedding.embedding_dim, enc_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] == 1 and not self.embedding.sparse:  # one-token inputs (IDs): no pooling
            return self.project(self.embedding(ids)[:, 0])
        return self.project(bag_mean(self.embedding, ids, lengths))


def encode_pair(
    enc0: Encoder, enc1: Encoder, in0: torch.Tensor, len0: torch.Tensor, in1: torch.Tensor, len1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(enc0(in0), enc1(in1))``, computed together where the two sides share work.

    One encoder for both inputs (``tied_encoder_weight``): one call on the two batches stacked
    (padded to the longer width; the encoders mask padding, so each output is what it would be
    alone), which halves the per-call and per-time-step overhead of small batches. Two pooled
    encoders over one table (``tied_token_embedding_weight``): one :func:`bag_means` call, then
    each encoder's own projection. Otherwise each side on its own.
    """
    if enc0 is enc1 and not _single_tokens(enc0, in0, in1):
        width = max(in0.shape[1], in1.shape[1])
        stacked = torch.cat([F.pad(in0, (0, width - in0.shape[1])), F.pad(in1, (0, width - in1.shape[1]))])
        return enc0(stacked, torch.cat([len0, len1])).split([len(len0), len(len1)])
    if (
        isinstance(enc0, PooledEmbeddingEncoder)
        and isinstance(enc1, PooledEmbeddingEncoder)
        and enc0.embedding is enc1.embedding
        and not _single_tokens(enc0, in0, in1)
    ):
        pooled0, pooled1 = bag_means(enc0.embedding, [(in0, len0), (in1, len1)])
        return enc0.project(pooled0), enc1.project(pooled1)
    return enc0(in0, len0), enc1(in1, len1)


def _single_tokens(encoder: Encoder, in0: torch.Tensor, in1: torch.Tensor) -> bool:
    """Both inputs one-token IDs over a dense table: the table lookup is already one call each."""
    return in0.shape[1] == 1 and in1.shape[1] == 1 and not encoder.embedding.sparse


MAX_LAYERS = 4  # the reference's range for encX_layers


def receptive_field(layers: int, filter_width: int) -> int:
    """Tokens one output position of an hcnn stack sees: layer i has dilation 2**i."""
    return 1 + (filter_width - 1) * (2**layers - 1)


def auto_layers(network: str, max_seq_len: int, filter_width: int = 3) -> int:
    """Depth for ``encX_layers=auto``.

    hcnn: the fewest layers (1..4) whose receptive field covers ``max_seq_len`` (width 3: 3, 7,
    15, 31 tokens for 1..4 layers), so the top layer sees the whole input. bilstm: one layer up
    to 64 tokens, two beyond (each direction already sees the whole sequence).
    """
    if network == "bilstm":
        return 1 if max_seq_len <= 64 else 2
    layers = 1
    while layers < MAX_LAYERS and filter_width > 1 and receptive_field(layers, filter_width) < max_seq_len:
        layers += 1
    return layers


def encoder_depth(config: EncoderConfig) -> int:
    """``config.layers``, or the :func:`auto_layers` depth for ``auto``."""
    if config.layers in (None, "auto"):
        return auto_layers(config.network, config.max_seq_len, config.cnn_filter_width)
    return int(config.layers)


def masked_mean_max(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, C]`` states -> ``[B, 2C]``: mean and max over the real positions only."""
    real = mask.unsqueeze(-1)
    count = real.sum(1).clamp(min=1).to(states.dtype)
    mean = (states * real).sum(1) / count
    peak = states.masked_fill(~real, torch.finfo(states.dtype).min).amax(1)
    return torch.cat([mean, peak], dim=-1)


class HcnnEncoder(Encoder):
    """Hierarchical CNN: ``layers`` residual 1-D convolutions of width ``filter_width`` over the
    token embeddings, layer i dilated by 2**i so each layer sees a wider span (3, 7, 15, 31
    tokens with width 3). Every layer's output is pooled over time (masked mean and max), so
    the encoding holds short- and long-span features; a linear map gives ``enc_dim``.

    Each convolution reads a layer-normalised copy of the residual stream (per position, over
    channels), and the pooled features are layer-normalised before the final map. The residual
    stream grows with depth and with training; unnormalised, the encodings reach ten times their
    initial scale within a few dozen Adam steps, the comparator's products saturate the MLP and
    training stalls at the majority class (seen on SICK).

    Padded positions are zeroed before every convolution, which is exactly what the
    convolution's own zero padding does at the end of an unpadded sequence: a sequence's
    encoding is the same whatever it is batched with.
    """

    def __init__(self, embedding: nn.Embedding, enc_dim: int, config: EncoderConfig, dropout: float = 0.0):
        super().__init__(embedding, enc_dim, config, dropout)
        channels = embedding.embedding_dim
        self.depth = encoder_depth(config)
        self.filter_width = config.cnn_filter_width
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, self.filter_width, dilation=2**i) for i in range(self.depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(self.depth))
        self.dropout = Dropout(dropout)
        self.pooled_norm = nn.LayerNorm(2 * channels * (self.depth + 1))
        self.project = nn.Linear(2 * channels * (self.depth + 1), enc_dim)

    def _convolve(self, conv: nn.Conv1d, h: torch.Tensor) -> torch.Tensor:
        """``conv`` with "same" zero padding on ``[B, T, C]`` states, as one matrix product: the
        ``filter_width`` dilated shifts of ``h`` side by side (``[B, T, width * C]``) times the
        kernel. On CPU this is faster than the convolution routines for these short sequences
        and lets the whole encoder stay in the ``[B, T, C]`` layout (no transposed copies)."""
        width, dilation, steps = self.filter_width, conv.dilation[0], h.shape[1]
        total = dilation * (width - 1)
        padded = F.pad(h, (0, 0, total // 2, total - total // 2))
        shifts = torch.cat([padded[:, j * dilation : j * dilation + steps] for j in range(width)], dim=-1)
        kernel = conv.weight.permute(0, 2, 1).reshape(conv.out_channels, width * conv.in_channels)
        return F.linear(shifts, kernel, conv.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = padding_mask(lengths, ids.shape[1])
        keep = mask.unsqueeze(-1).to(self.embedding.weight.dtype)  # [B, T, 1]
        x = self.embedding(ids) * keep  # [B, T, C]
        pooled = [masked_mean_max(x, mask)]
        for conv, norm in zip(self.convs, self.norms):
            h = norm(x) * keep  # normalised per position, padding stays zero
            h = F.relu(self._convolve(conv, self.dropout(h)))
            x = (x + h) * keep  # residual; padding back to zero before the next layer
            pooled.append(masked_mean_max(x, mask))
        return self.project(self.pooled_norm(torch.cat(pooled, dim=-1)))


class BiLstmEncoder(Encoder):
    """``layers`` stacked bidirectional LSTMs (hidden size = the token dimension per direction)
    over the token embeddings; the outputs are pooled over the real positions (mean and max)
    and mapped linearly to ``enc_dim``. Padding never reaches a real position's state: the
    forward direction reads each sequence from its start, so the padding after it comes later,
    and the backward direction reads each sequence reversed within its own length
    (:func:`reversal`), so its padding comes later too.

    That keeps every layer on whole padded tensors, where PyTorch runs a fused LSTM kernel for
    the full sequence (oneDNN on CPU, cuDNN on CUDA) in both passes. Packed sequences, which
    the CPU runs one time step at a time with an autograd node per operation, trained the SICK
    benchmark's bilstm about 1.4x slower (README, Performance). The parameters are those of
    ``nn.LSTM(bidirectional=True)`` (saved models keep their names).
    """

    def __init__(self, embedding: nn.Embedding, enc_dim: int, config: EncoderConfig, dropout: float = 0.0):
        super().__init__(embedding, enc_dim, config, dropout)
        hidden = embedding.embedding_dim
        self.depth = encoder_depth(config)
        self.lstm = nn.LSTM(
            hidden,
            hidden,
            num_layers=self.depth,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if self.depth > 1 else 0.0,
        )
        self.dropout = Dropout(dropout)
        self.between_layers = Dropout(self.lstm.dropout)  # nn.LSTM's dropout between layers
        self.project = nn.Linear(4 * hidden, enc_dim)

    def _direction(self, x: torch.Tensor, layer: int, suffix: str) -> torch.Tensor:
        """One direction of one layer over ``[B, T, C]``, from its first position to its last."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        weights = [getattr(self.lstm, f"{name}_l{layer}{suffix}") for name in names]
        start = x.new_zeros((1, x.shape[0], self.lstm.hidden_size))
        return torch._VF.lstm(x, (start, start), weights, True, 1, 0.0, self.training, False, True)[0]

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        width = ids.shape[1]
        backwards = reversal(lengths, width)
        states = self.dropout(self.embedding(ids))
        for layer in range(self.depth):
            if layer:
                states = self.between_layers(states)
            forward = self._direction(states, layer, "")
            backward = self._direction(reorder(states, backwards), layer, "_reverse")
            states = torch.cat([forward, reorder(backward, backwards)], dim=-1)
        return self.project(masked_mean_max(states, padding_mask(lengths, width)))


def reversal(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, T]`` time indices that reverse each sequence within its length (position ``t`` <-
    ``length - 1 - t``) and leave the padding where it is; applying it twice restores the order."""
    steps = torch.arange(width, device=lengths.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    return torch.where(steps < lengths, lengths - 1 - steps, steps)


def reorder(states: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``states[b, order[b, t]]`` for ``[B, T, C]`` states."""
    return states.gather(1, order.unsqueeze(-1).expand(-1, -1, states.shape[-1]))


ENCODERS: dict[str, type[Encoder]] = {
    "pooled_embedding": PooledEmbeddingEncoder,
    "hcnn": HcnnEncoder,
    "bilstm": BiLstmEncoder,
}


def build_encoder(
    config: EncoderConfig, embedding: nn.Embedding, enc_dim: int, dropout: float = 0.0
) -> Encoder:
    """The encoder ``config.network`` names. The schema only admits known names; this guard is for
    a build of the package whose registry lacks one (refused, never silently swapped)."""
    builder = ENCODERS.get(config.network)
    if builder is None:
        raise HyperparameterError(
            f"encoder network '{config.network}' is not available in this version; "
            f"available: {', '.join(sorted(ENCODERS))}"
        )
    return builder(embedding, enc_dim, config, dropout)
