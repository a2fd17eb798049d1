"""The untrained network of a training run: ``Object2VecNet(hp)`` plus the pretrained token rows
the auxiliary channel provides.

``Object2VecNet(hp)`` is the one constructor of a network (a saved model is rebuilt with it and
then given its weights); what only training adds is reading ``encX_vocab_file`` and
``encX_pretrained_embedding_file`` from the auxiliary channel into the token tables.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import text
from ..hyperparameters import EncoderConfig, Hyperparameters
from ..nn import Object2VecNet
from ..nn.encoders import load_rows
from ..runtime import Logger


def build_network(
    hp: Hyperparameters, auxiliary: str | os.PathLike | None = None, log: Logger = print
) -> tuple[Object2VecNet, list[Path]]:
    """The untrained network, and the auxiliary files a saved model must carry along.

    ``encX_pretrained_embedding_file`` rows are loaded through ``encX_vocab_file`` (token -> ID)
    into encoder X's token table, and kept fixed when ``encX_freeze_pretrained_embedding``. With
    one shared table, enc0's files set it (the hyperparameter rules make enc1's the same or none)."""
    net = Object2VecNet(hp)
    files: list[Path] = []
    for enc in hp.encoders:
        if not enc.vocab_file or (enc.side == 1 and hp.tied_token_embedding_weight):
            continue
        vocab_file = auxiliary_file(auxiliary, enc, "vocab_file")
        vocab = text.read_vocab(vocab_file, enc.vocab_size)
        files.append(vocab_file)
        if enc.pretrained_embedding_file:
            _load_pretrained(
                net, enc, vocab, auxiliary_file(auxiliary, enc, "pretrained_embedding_file"), log
            )
    return net, list(dict.fromkeys(files))  # two untied encoders may share one vocabulary file


def _load_pretrained(
    net: Object2VecNet, enc: EncoderConfig, vocab: dict[str, int], path: Path, log: Logger
) -> None:
    rows = text.pretrained_rows(vocab, path, enc.token_embedding_dim)
    table = net.encoder(enc.side).embedding
    load_rows(
        table, torch.from_numpy(rows.ids), torch.from_numpy(rows.vectors), enc.freeze_pretrained_embedding
    )
    frozen = " (frozen)" if enc.freeze_pretrained_embedding else ""
    log(f"enc{enc.side}: {rows.found} of {len(vocab)} vocabulary tokens found in {path.name}{frozen}")


def auxiliary_file(auxiliary: str | os.PathLike | None, enc: EncoderConfig, setting: str) -> Path:
    """The file ``encX_<setting>`` names in the auxiliary channel; a clear error when it is not there."""
    key, name = enc.key(setting), getattr(enc, setting)
    if auxiliary is None:
        raise text.TextError(f"{key}={name} needs the auxiliary channel (--auxiliary DIR) holding that file")
    path = Path(auxiliary) / name
    if not path.is_file():
        raise text.TextError(f"{key}={name}: no such file in the auxiliary channel {auxiliary}")
    return path
