"""The Python API: ``Object2Vec(**hyperparameters).fit(...)`` and ``object2vec.load(dir)``.

The CLI calls exactly these, so everything the command line can do, Python can too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import artifact
from .errors import UsageError
from .hyperparameters import Hyperparameters, parse_hyperparameters
from .nn import Object2VecNet
from .runtime import Logger
from .serving.predictor import Predictor
from .training import PairDataset, TrainResult, build_network, distributed, fit, load_pairs, seed_everything
from .training.checkpoint import Checkpointer
from .training.monitor import read_history, tensorboard_sink, write_history

DataArg = str | os.PathLike | PairDataset | None


def _as_dataset(data: DataArg, hp: Hyperparameters) -> PairDataset | None:
    if data is None or isinstance(data, PairDataset):
        return data
    return load_pairs(data, hp)


def _checkpointer(directory: str | os.PathLike | None, every_minutes: float | None) -> Checkpointer | None:
    if directory is None:
        if every_minutes is not None:
            raise UsageError("checkpoint_every_minutes needs a checkpoint directory (--checkpoint-dir)")
        return None
    return Checkpointer(directory, every_minutes)


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
        self.history: list[dict] = []  # one record per training epoch, kept as history.json
        self.model_dir: Path | None = None  # the directory the weights were loaded from or saved to

    def fit(
        self,
        train: DataArg,
        validation: DataArg = None,
        test: DataArg = None,
        auxiliary: str | os.PathLike | None = None,
        *,
        seed: int | None = None,
        device: str | None = None,
        log: Logger = print,
        progress: bool | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_minutes: float | None = None,
        tensorboard: str | os.PathLike | None = None,
    ) -> Object2Vec:
        """Train on JSON Lines channels (paths or loaded datasets); keeps the best epoch.

        With ``checkpoint_dir`` a checkpoint is written there at the end of every epoch (and every
        ``checkpoint_every_minutes`` within epochs), and a run given a directory that holds
        checkpoints of the same hyperparameters and data resumes from the newest one.
        ``tensorboard``: a directory where every epoch's metrics are written as TensorBoard scalars."""
        checkpointer = _checkpointer(checkpoint_dir, checkpoint_every_minutes)
        seed_everything(seed)  # the initial weights depend on the seed too
        # Configuration errors were raised when the hyperparameters were parsed; the network (and
        # its auxiliary files) comes before any data is read.
        self.net, self._files = build_network(self.hp, auxiliary, log)
        train_data = _as_dataset(train, self.hp)
        validation_data, test_data = _as_dataset(validation, self.hp), _as_dataset(test, self.hp)
        with tensorboard_sink(tensorboard) as sink:
            self.result = fit(
                self.net,
                self.hp,
                train_data,
                validation_data,
                test_data,
                seed=seed,
                device=device,
                log=log,
                progress=progress,
                checkpointer=checkpointer,
                on_epoch=sink,
            )
        self.metrics, self.history, self.model_dir = dict(self.result.metrics), self.result.history, None
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
        """Write the model directory (hyperparameters.json, model.safetensors, metrics.json, and
        history.json when the model's training history is known) atomically: an existing model
        there is replaced whole (:func:`object2vec.artifact.save`).

        Under torchrun only rank 0 writes (every rank holds the same weights); the others
        return the path without touching it."""
        if self.net is None:
            raise RuntimeError("nothing to save: call fit() first")
        if not distributed.is_main_process():
            return Path(model_dir)
        with tempfile.TemporaryDirectory(prefix="object2vec-history-") as scratch:
            # history.json travels as one of the model's files, so the atomic save covers it too
            history = [write_history(scratch, self.history)] if self.history else []
            self.model_dir = artifact.save(model_dir, self.hp, self.net, self.metrics, self._files + history)
        return self.model_dir

    def build_index(self, items, *, side: str = "in1", metric: str = "cosine", ids=None, **options: Any):
        """A :class:`~object2vec.index.NeighborIndex` of the ``side`` embeddings of ``items``
        (token-ID lists), named by ``ids`` (default 0 .. n-1), recording this model's
        fingerprint; ``metric`` is cosine, ip or l2."""
        from .index import build_model_index

        return build_model_index(self, items, side=side, metric=metric, ids=ids, **options)

    @classmethod
    def from_predictor(cls, predictor: Predictor) -> Object2Vec:
        model = cls(predictor.hp)
        model.net, model._predictor, model.metrics = predictor.net, predictor, dict(predictor.metrics)
        return model


def load(
    model_dir: str | os.PathLike, device: str | None = None, preferred_mode: str | None = None
) -> Object2Vec:
    """Load a saved model directory (or model.tar.gz) with its training history; never unpickles
    anything."""
    root = artifact.resolve_model_dir(model_dir)
    model = Object2Vec.from_predictor(Predictor.load(root, device=device, preferred_mode=preferred_mode))
    model.model_dir, model.history = root, read_history(root)
    return model
