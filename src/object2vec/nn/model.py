"""The Object2Vec network: two encoders -> comparator -> MLP -> output head."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..hyperparameters import EncoderConfig, Hyperparameters
from .encoders import Dropout, Encoder, build_encoder, encode_pair, make_token_table, token_init_std

COMPARATOR_OPS = {
    "hadamard": lambda a, b: a * b,
    "concat": lambda a, b: torch.cat([a, b], dim=-1),
    "abs_diff": lambda a, b: (a - b).abs(),
}
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "linear": nn.Identity}


def comparator_width(names: tuple[str, ...], enc_dim: int) -> int:
    return sum(2 * enc_dim if name == "concat" else enc_dim for name in names)


class Object2VecNet(nn.Module):
    """in0 -> enc0, in1 -> enc1 (with ``tied_encoder_weight``, in1 -> enc0 too); the comparator
    joins the two vectors; an MLP and the output layer give class logits (softmax) or one value
    (mean_squared_error)."""

    def __init__(self, hp: Hyperparameters):
        super().__init__()
        self.hp = hp
        self.comparators = tuple(hp.comparator_list)
        self.regression = hp.regression
        tables = self._token_tables(hp)
        sides = (0,) if hp.tied_encoder_weight else (0, 1)  # tied: enc1 is enc0 itself
        self.encoders = nn.ModuleList(
            build_encoder(self._encoder_config(hp, side), tables[side], hp.enc_dim, hp.dropout)
            for side in sides
        )
        if hp.tied_encoder_projection:
            self.encoders[1].project = self.encoders[0].project
        if hp.tied_token_embedding_weight and not hp.tied_encoder_weight:
            self._mirror_start()
        layers: list[nn.Module] = [Dropout(hp.dropout)]
        width = comparator_width(self.comparators, hp.enc_dim)
        for _ in range(hp.mlp_layers):
            layers += [nn.Linear(width, hp.mlp_dim), ACTIVATIONS[hp.mlp_activation](), Dropout(hp.dropout)]
            width = hp.mlp_dim
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1 if self.regression else hp.num_classes)

    def _mirror_start(self) -> None:
        """With tied token tables, start enc1 from a copy of enc0's weights when both encoders
        have the same architecture (as ``enc1_network=enc0`` gives).

        Tied tables mean both inputs are objects of one kind (sentence/sentence). The weights
        stay separate and train on their own, but at step 0 the same input gives the same vector
        on both sides, so ``abs_diff`` is zero for identical inputs: the comparison starts
        symmetric instead of having to learn that two random projections should agree. On SICK,
        with unit-scale word rows, this is worth 3 points of entailment accuracy (README).
        """
        params0, params1 = (dict(e.named_parameters()) for e in self.encoders)  # the shared table included
        if type(self.encoders[0]) is not type(self.encoders[1]) or {
            k: v.shape for k, v in params0.items()
        } != {k: v.shape for k, v in params1.items()}:
            return
        with torch.no_grad():
            for name, value in params0.items():
                params1[name].copy_(value)  # a no-op for the shared table itself

    @staticmethod
    def _token_tables(hp: Hyperparameters) -> list[nn.Embedding]:
        """One table per side, or one shared by both (``tied_token_embedding_weight``; the rules of
        :mod:`object2vec.hyperparameters` guarantee equal sizes then)."""
        if hp.tied_token_embedding_weight:
            std = token_init_std(max(hp.enc0_max_seq_len, hp.enc1_max_seq_len))
            shared = make_token_table(hp.enc0_vocab_size, hp.enc0_token_embedding_dim, hp.row_sparse, std)
            return [shared, shared]
        return [
            make_token_table(
                enc.vocab_size, enc.token_embedding_dim, hp.row_sparse, token_init_std(enc.max_seq_len)
            )
            for enc in hp.encoders
        ]

    @staticmethod
    def _encoder_config(hp: Hyperparameters, side: int) -> EncoderConfig:
        """Side ``side``'s settings; one encoder serving both inputs, or two sharing their last
        linear map (whose width the depth sets), is sized (``layers=auto``) for the longer input."""
        config = hp.encoder(side)
        if hp.tied_encoder_weight or hp.tied_encoder_projection:
            config = dataclasses.replace(config, max_seq_len=max(hp.enc0_max_seq_len, hp.enc1_max_seq_len))
        return config

    @property
    def token_tables(self) -> list[nn.Embedding]:
        """The distinct token tables (one when tied)."""
        return list({id(enc.embedding): enc.embedding for enc in self.encoders}.values())

    def encoder(self, side: int) -> Encoder:
        """Encoder ``side`` (0 or 1); with ``tied_encoder_weight`` both sides are the one encoder,
        which is held once, so its parameters are saved and trained once."""
        return self.encoders[0 if self.hp.tied_encoder_weight else side]

    def place(self, encoder_device: torch.device, head_device: torch.device) -> None:
        """Put the encoders on one device and the comparator's MLP and output layer on another
        (``INFERENCE_PREFERRED_MODE=embedding`` keeps only the encoders on a GPU)."""
        self.encoders.to(encoder_device)
        self.mlp.to(head_device)
        self.head.to(head_device)

    @torch.no_grad()
    def start_output_at(self, value: float) -> None:
        """Set the output layer's bias to ``value`` (a regression head starts at the mean label)."""
        self.head.bias.fill_(value)

    def encode(self, side: int, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.encoder(side)(ids, lengths)

    def encode_pair(self, in0, len0, in1, len1) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides' encodings, in one pass where they share an encoder or a pooled table
        (:func:`~object2vec.nn.encoders.encode_pair`)."""
        return encode_pair(self.encoder(0), self.encoder(1), in0, len0, in1, len1)

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([COMPARATOR_OPS[name](a, b) for name in self.comparators], dim=-1)

    def outputs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Class logits or regression values from two encodings (comparator, MLP, head)."""
        out = self.head(self._mlp(self.compare(a, b)))
        return out.squeeze(-1) if self.regression else out

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP; in eval mode without its dropout and identity (``linear`` activation) layers,
        which change nothing there but cost a module call each (about 30 us of a one-instance
        request's pass, by cProfile, with two MLP layers)."""
        if self.training:
            return self.mlp(x)
        for layer in self.mlp:
            if not isinstance(layer, (nn.Dropout, nn.Identity)):
                x = layer(x)
        return x

    def score_encodings(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """What inference answers from two encodings: probabilities ``[B, C]`` or values ``[B]``."""
        out = self.outputs(a, b)
        return out if self.regression else out.softmax(-1)

    def forward(
        self, in0: torch.Tensor, len0: torch.Tensor, in1: torch.Tensor, len1: torch.Tensor
    ) -> torch.Tensor:
        """Class logits ``[B, num_classes]`` or regression values ``[B]``."""
        return self.outputs(*self.encode_pair(in0, len0, in1, len1))

    def scores(self, in0, len0, in1, len1) -> torch.Tensor:
        """What inference answers: probabilities ``[B, C]`` or values ``[B]``."""
        return self.score_encodings(*self.encode_pair(in0, len0, in1, len1))
