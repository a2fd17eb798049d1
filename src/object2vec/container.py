"""The SageMaker container contract: the ``/opt/ml`` layout <-> the calls the CLI makes.

SageMaker runs a bring-your-own training image as ``docker run IMAGE train`` with::

    /opt/ml/input/config/hyperparameters.json   the hyperparameters, a JSON object of strings
    /opt/ml/input/data/<channel>/               train, validation, test, auxiliary
    /opt/ml/model/                              what we write; SageMaker tars it to model.tar.gz
    /opt/ml/output/failure                      why the job failed, shown as its FailureReason

and a hosting image as ``docker run IMAGE serve`` with the model unpacked in ``/opt/ml/model``
and traffic on port 8080. The root is ``--ml-root``, else ``$OBJECT2VEC_ML_ROOT``, else
``/opt/ml``; the variables the SageMaker training toolkit sets (``SM_MODEL_DIR``,
``SM_CHANNEL_<NAME>``, ``SM_INPUT_CONFIG_DIR``, ``SM_OUTPUT_DIR``) override single paths.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Object2Vec
from .errors import Object2VecError
from .hyperparameters import load_hyperparameters_file
from .training import distributed

ML_ROOT_ENV = "OBJECT2VEC_ML_ROOT"
DEFAULT_ML_ROOT = "/opt/ml"
CHANNELS = ("train", "validation", "test", "auxiliary")
#: A container serves every interface: SageMaker sends requests from outside the container (on
#: the serving default port, ``serving.settings.DEFAULT_PORT``).
SERVE_HOST = "0.0.0.0"


class ContainerError(Object2VecError):
    """The /opt/ml layout lacks something a job needs (the message names the path)."""


@dataclass(frozen=True)
class Layout:
    """The paths of one ``/opt/ml`` tree (``environ`` holds the ``SM_*`` overrides)."""

    root: Path
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def find(
        cls, ml_root: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
    ) -> Layout:
        """``ml_root``, else ``$OBJECT2VEC_ML_ROOT``, else ``/opt/ml``."""
        environ = dict(os.environ if environ is None else environ)
        return cls(Path(ml_root or environ.get(ML_ROOT_ENV) or DEFAULT_ML_ROOT), environ)

    def _path(self, variable: str, *default: str) -> Path:
        value = self.environ.get(variable)
        return Path(value) if value else self.root.joinpath(*default)

    @property
    def hyperparameters_file(self) -> Path:
        return self._path("SM_INPUT_CONFIG_DIR", "input", "config") / "hyperparameters.json"

    @property
    def model_dir(self) -> Path:
        return self._path("SM_MODEL_DIR", "model")

    @property
    def failure_file(self) -> Path:
        return self._path("SM_OUTPUT_DIR", "output") / "failure"

    def channel(self, name: str) -> Path | None:
        """The directory of channel ``name``, or ``None`` when the job has no such channel."""
        path = self._path(f"SM_CHANNEL_{name.upper()}", "input", "data", name)
        return path if path.exists() else None

    def is_training_job(self) -> bool:
        """Whether this looks like a SageMaker training container (a config or a train channel)."""
        return self.hyperparameters_file.is_file() or self.channel("train") is not None

    def read_hyperparameters(self) -> dict[str, Any]:
        """The job's hyperparameters (``{}`` when the file is absent, as for a job without any)."""
        path = self.hyperparameters_file
        return load_hyperparameters_file(str(path)) if path.is_file() else {}

    def write_failure(self, exc: BaseException) -> Path:
        """Record why the job failed: the first line is the reason SageMaker shows."""
        text = f"{type(exc).__name__}: {exc}\n\n{''.join(traceback.format_exception(exc))}"
        self.failure_file.parent.mkdir(parents=True, exist_ok=True)
        self.failure_file.write_text(text, encoding="utf-8")
        return self.failure_file


def train(
    layout: Layout,
    overrides: Mapping[str, str] = (),
    *,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the training job the layout describes and write the model to its model directory.

    Exactly ``object2vec train --train ... --model-dir ...`` with the paths taken from the
    layout and ``overrides`` on top of hyperparameters.json. Any failure is first written to
    ``output/failure`` (by rank 0 under torchrun), then raised.
    """
    try:
        hyperparameters = {**layout.read_hyperparameters(), **dict(overrides)}
        train_channel = layout.channel("train")
        if train_channel is None:
            raise ContainerError(f"{layout.root / 'input' / 'data' / 'train'}: the job has no train channel")
        model = Object2Vec(hyperparameters).fit(
            train_channel,
            layout.channel("validation"),
            layout.channel("test"),
            layout.channel("auxiliary"),
            seed=seed,
            device=device,
            progress=progress,
            log=log,
        )
        return model.save(layout.model_dir)
    except Exception as exc:
        if distributed.is_main_process():
            layout.write_failure(exc)
        raise


def serve_target(model_dir: str | None, host: str | None, ml_root: str | None = None) -> tuple[str, str]:
    """(model directory, host) for ``object2vec serve``: an explicit ``--model-dir`` serves on
    loopback by default; without one the container contract applies: the layout's model
    directory (a directory, or a ``model.tar.gz`` in it) on every interface."""
    if model_dir is not None:
        return model_dir, host or "127.0.0.1"
    return str(Layout.find(ml_root).model_dir), host or SERVE_HOST
