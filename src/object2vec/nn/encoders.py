"""Encoders: one interface, ``(token ids [B, T], lengths [B]) -> [B, enc_dim]``.

Every encoder receives the true lengths and masks padding, so its output for a sequence never
depends on how long the other sequences of its batch are. New architectures register in
``ENCODERS``; a name with no builder is refused with a clear error, never silently swapped.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..hyperparameters import HyperparameterError

#: Standard deviation of the token-table initialisation. Small rows keep the first epochs
#: close to a bias-only model, which is what stops ID-embedding models (MovieLens) from
#: memorising the training pairs in one epoch.
TOKEN_INIT_STD = 0.01


def make_token_table(vocab_size: int, dim: int, sparse: bool) -> nn.Embedding:
    """A token embedding table; ``sparse=True`` gives row-sparse gradients (row_sparse storage)."""
    table = nn.Embedding(vocab_size, dim, sparse=sparse)
    nn.init.normal_(table.weight, std=TOKEN_INIT_STD)
    return table


def padding_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, T]`` boolean mask, True on real tokens."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class Encoder(nn.Module):
    """Maps padded token IDs and their lengths to one ``enc_dim`` vector per sequence."""

    def __init__(self, embedding: nn.Embedding, enc_dim: int):
        super().__init__()
        self.embedding = embedding
        self.enc_dim = enc_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class PooledEmbeddingEncoder(Encoder):
    """Mean of the non-padding token embeddings, projected linearly to ``enc_dim``."""

    def __init__(self, embedding: nn.Embedding, enc_dim: int, **_: object):
        super().__init__(embedding, enc_dim)
        self.project = nn.Linear(embedding.embedding_dim, enc_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(ids)
        if ids.shape[1] == 1:  # one-token inputs (IDs): no pooling needed
            pooled = vectors[:, 0]
        else:
            mask = padding_mask(lengths, ids.shape[1]).unsqueeze(-1).to(vectors.dtype)
            pooled = (vectors * mask).sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(vectors.dtype)
        return self.project(pooled)


EncoderBuilder = Callable[..., Encoder]
ENCODERS: dict[str, EncoderBuilder] = {"pooled_embedding": PooledEmbeddingEncoder}


def build_encoder(network: str, embedding: nn.Embedding, enc_dim: int, settings: dict) -> Encoder:
    """Build the encoder named by ``encX_network`` with that encoder's settings."""
    builder = ENCODERS.get(network)
    if builder is None:
        raise HyperparameterError(
            f"encoder network '{network}' is not available in this version; available: {', '.join(sorted(ENCODERS))}"
        )
    return builder(embedding, enc_dim, **settings)
