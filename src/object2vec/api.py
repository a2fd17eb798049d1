"""The Python API: ``Object2Vec(**hyperparameters).fit(...)`` and ``object2vec.load(dir)``.

The CLI calls exactly these, so everything the command line can do, Python can too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifact, distributed, text
from .data import PairDataset, load_pairs
from .hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters
from .nn import Object2VecNet
from .nn.encoders import load_rows
from .predictor import Predictor
from .training import Logger, TrainResult, fit, seed_everything

DataArg = str | os.PathLike | PairDataset | None


def build_network(hp: Hyperparameters, auxiliary: str | os.PathLike | None = None,
                  log: Logger = print) -> tuple[Object2VecNet, list[Path]]:
    """The untrained network, and the auxiliary files a saved model must carry along.

    ``encX_pretrained_embedding_file`` rows are loaded through ``encX_vocab_file`` (token -> ID)
    into encoder X's token table, and kept fixed when ``encX_freeze_pretrained_embedding``."""
    net = Object2VecNet(hp)
    files: list[Path] = []
    for side in (0, 1):
        vocab_name, vectors_name = hp[f"enc{side}_vocab_file"], hp[f"enc{side}_pretrained_embedding_file"]
        if not vocab_name and not vectors_name:
            continue
        if side == 1 and hp.tied_token_embedding_weight:
            _check_tied_files(hp)  # enc0's files already set the one table
            continue
        if vectors_name and not vocab_name:
            raise HyperparameterError(f"enc{side}_pretrained_embedding_file={vectors_name} needs enc{side}_vocab_file "
                                      "to map its tokens to IDs")
        vocab_file = _auxiliary_file(auxiliary, vocab_name, f"enc{side}_vocab_file")
        vocab = text.read_vocab(vocab_file, hp[f"enc{side}_vocab_size"])
        files.append(vocab_file)
        if vectors_name:
            vectors_file = _auxiliary_file(auxiliary, vectors_name, f"enc{side}_pretrained_embedding_file")
            rows = text.pretrained_rows(vocab, vectors_file, hp[f"enc{side}_token_embedding_dim"])
            freeze = hp[f"enc{side}_freeze_pretrained_embedding"]
            load_rows(net.encoder(side).embedding, torch.from_numpy(rows.ids), torch.from_numpy(rows.vectors), freeze)
            log(f"enc{side}: {rows.found} of {len(vocab)} vocabulary tokens found in {vectors_name}"
                f"{' (frozen)' if freeze else ''}")
    return net, list(dict.fromkeys(files))


def _check_tied_files(hp: Hyperparameters) -> None:
    """With one token table (tied tables, or one encoder) enc0's files set it, so enc1 may name
    the same files or none; a file of its own would be a second vocabulary for the same rows."""
    tied = "tied_token_embedding_weight=True" + (" (implied by tied_encoder_weight=True)"
                                                 if hp.tied_encoder_weight else "")
    named = [suffix for suffix in ("vocab_file", "pretrained_embedding_file") if hp[f"enc1_{suffix}"]]
    if hp.enc1_pretrained_embedding_file:
        named.append("freeze_pretrained_embedding")
    for suffix in named:
        if hp[f"enc1_{suffix}"] != hp[f"enc0_{suffix}"]:
            raise HyperparameterError(
                f"{tied} shares one token table, so enc1_{suffix}={hp[f'enc1_{suffix}']} "
                f"must equal enc0_{suffix}={hp[f'enc0_{suffix}']} (or leave enc1's files unset)")


def _auxiliary_file(auxiliary: str | os.PathLike | None, name: str, key: str) -> Path:
    if auxiliary is None:
        raise HyperparameterError(f"{key}={name} needs the auxiliary channel (--auxiliary DIR) holding that file")
    path = Path(auxiliary) / name
    if not path.is_file():
        raise HyperparameterError(f"{key}={name}: no such file in the auxiliary channel {auxiliary}")
    return path


def _as_dataset(data: DataArg, hp: Hyperparameters) -> PairDataset | None:
    if data is None or isinstance(data, PairDataset):
        return data
    return load_pairs(data, hp)


class Object2Vec:
    """An Object2Vec model: construct with SageMaker hyperparameters, ``fit``, then ``embed``,
    ``predict`` and ``save``.

    >>> model = Object2Vec(enc0_max_seq_len=1, enc0_vocab_size=944, enc1_vocab_size=1684,
    ...                    enc0_network="pooled_embedding", output_layer="mean_squared_error")
    """

    def __init__(self, hyperparameters: dict[str, Any] | Hyperparameters | None = None, **kwargs: Any):
        if isinstance(hyperparameters, Hyperparameters) and not kwargs:
            self.hp = hyperparameters
        else:
            self.hp = parse_hyperparameters(dict(hyperparameters or {}), **kwargs)
        self.net: Object2VecNet | None = None
        self.result: TrainResult | None = None
        self.metrics: dict[str, float] = {}
        self._files: list[Path] = []
        self._predictor: Predictor | None = None

    def fit(self, train: DataArg, validation: DataArg = None, test: DataArg = None,
            auxiliary: str | os.PathLike | None = None, *, seed: int | None = None, device: str | None = None,
            log: Logger = print, progress: bool | None = None) -> "Object2Vec":
        """Train on JSON Lines channels (paths or loaded datasets); keeps the best epoch."""
        seed_everything(seed)  # the initial weights depend on the seed too
        # The network first: a configuration error surfaces before any data is read.
        self.net, self._files = build_network(self.hp, auxiliary, log)
        train_data = _as_dataset(train, self.hp)
        validation_data, test_data = _as_dataset(validation, self.hp), _as_dataset(test, self.hp)
        self.result = fit(self.net, self.hp, train_data, validation_data, test_data, seed=seed, device=device,
                          log=log, progress=progress)
        self.metrics = dict(self.result.metrics)
        trained_on = next(self.net.parameters()).device  # under torchrun: this rank's cuda:LOCAL_RANK
        self._predictor = Predictor(self.hp, self.net, device=trained_on, metrics=self.metrics)
        return self

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise RuntimeError("this model is not trained: call fit() or object2vec.load()")
        return self._predictor

    def embed(self, in0=None, in1=None, **kwargs: Any) -> np.ndarray:
        """Encoder embeddings ``[n, enc_dim]`` (float32) of ``in0`` (enc0) or ``in1`` (enc1)."""
        return self.predictor.embed(in0=in0, in1=in1, **kwargs)

    def predict(self, in0, in1, **kwargs: Any) -> np.ndarray:
        """Probabilities ``[n, num_classes]`` (softmax) or values ``[n]`` (regression)."""
        return self.predictor.predict(in0, in1, **kwargs)

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write the model directory (hyperparameters.json, model.safetensors, metrics.json).

        Under torchrun only rank 0 writes (every rank holds the same weights); the others
        return the path without touching it."""
        if self.net is None:
            raise RuntimeError("nothing to save: call fit() first")
        if not distributed.is_main_process():
            return Path(model_dir)
        return artifact.save(model_dir, self.hp, self.net, self.metrics, self._files)

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> "Object2Vec":
        model = cls(predictor.hp)
        model.net, model._predictor, model.metrics = predictor.net, predictor, dict(predictor.metrics)
        return model


def load(model_dir: str | os.PathLike, device: str | None = None, preferred_mode: str | None = None) -> Object2Vec:
    """Load a saved model directory (or model.tar.gz); never unpickles anything."""
    return Object2Vec.from_predictor(Predictor.load(model_dir, device=device, preferred_mode=preferred_mode))
