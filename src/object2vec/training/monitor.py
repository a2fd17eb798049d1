"""What training leaves to look at: the per-epoch history beside the model, and TensorBoard.

Every epoch of :func:`~object2vec.training.fit.fit` produces one record (``epoch``,
``train:loss``, ``samples_per_second`` and the ``validation:*`` metrics) and hands it to the
``on_epoch`` hook. The model directory keeps them as ``history.json`` (a list of those records,
so ``object2vec plot`` can draw the curves later), and :class:`TensorBoardSink`, given as the
hook, writes each as TensorBoard scalars while training runs, tagged ``train/loss``,
``validation/accuracy`` ... (the channel prefix becomes TensorBoard's group).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..artifact import ArtifactError
from . import distributed

HISTORY_FILE = "history.json"


def tag(name: str) -> str:
    """A record key as a TensorBoard tag: ``validation:accuracy`` -> ``validation/accuracy``."""
    return name.replace(":", "/")


class TensorBoardSink:
    """Called with each epoch's record; writes every number in it as a scalar at step = epoch."""

    def __init__(self, log_dir: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def __call__(self, record: dict) -> None:
        epoch = int(record["epoch"])
        for name, value in record.items():
            if name != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(tag(name), float(value), epoch)
        self.writer.flush()  # visible to a running TensorBoard after every epoch

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def tensorboard_sink(log_dir: str | os.PathLike | None) -> Iterator[TensorBoardSink | None]:
    """A :class:`TensorBoardSink` writing to ``log_dir``, closed on exit even when training
    fails; None without a directory, and on every torchrun rank but the first (one writer)."""
    if log_dir is None or not distributed.is_main_process():
        yield None
        return
    sink = TensorBoardSink(log_dir)
    try:
        yield sink
    finally:
        sink.close()


def write_history(model_dir: str | os.PathLike, history: Sequence[dict]) -> Path:
    path = Path(model_dir) / HISTORY_FILE
    path.write_text(json.dumps(list(history), indent=1) + "\n", encoding="utf-8")
    return path


def read_history(model_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch records saved with a model; empty for a model saved without them."""
    path = Path(model_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(history, list) or not all(isinstance(r, dict) and "epoch" in r for r in history):
        raise ArtifactError(f"{path}: expected a list of per-epoch records with an 'epoch' field")
    return history
