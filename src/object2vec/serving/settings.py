"""Serving defaults and settings, each defined once: the payload limit, the micro-batch wait, the
port, the batch strategies. The HTTP server, batch transform and the CLI all read them here."""

from __future__ import annotations

import os
import typing
from dataclasses import asdict, dataclass, fields

MB = 1024 * 1024
#: SageMaker's request payload limit for real-time endpoints, and the default of batch transform.
DEFAULT_MAX_PAYLOAD_MB = 6.0
#: The longest a forward pass waits to gather requests that are already being read.
DEFAULT_BATCH_WAIT_MS = 2.0
#: The longest a request waits in the micro-batch queue before it is answered 503 (busy).
DEFAULT_MAX_QUEUE_MS = 10_000.0
#: The most instances one micro-batched forward pass answers.
DEFAULT_MAX_BATCH_INSTANCES = 1024
#: SageMaker sends inference traffic to this port of the container.
DEFAULT_PORT = 8080
#: Loopback unless told otherwise: a model served on a laptop is not exposed to the network.
DEFAULT_HOST = "127.0.0.1"
#: Where a SageMaker-style container finds its model when no directory is named.
DEFAULT_MODEL_DIR = "/opt/ml/model"
#: Batch transform's ways of grouping records: as many as fit the payload limit (the default), or
#: one by one.
STRATEGIES = ("MultiRecord", "SingleRecord")
ENV_PREFIX = "OBJECT2VEC_SERVE_"


def default_model_dir() -> str:
    """``SM_MODEL_DIR`` when set (as in a SageMaker container), else ``/opt/ml/model``."""
    return os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR


@dataclass(frozen=True)
class ServeSettings:
    """Everything a serving process needs; travels to uvicorn's worker processes as environment
    variables (``OBJECT2VEC_SERVE_<FIELD>``), because workers import the app by name."""

    model_dir: str
    workers: int = 1
    max_payload_mb: float = DEFAULT_MAX_PAYLOAD_MB
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_batch_instances: int = DEFAULT_MAX_BATCH_INSTANCES
    max_queue_ms: float = DEFAULT_MAX_QUEUE_MS
    threads: int = 0  # torch threads per worker; 0: OMP_NUM_THREADS, else cores / workers
    device: str = ""
    preferred_mode: str = ""

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * MB)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + key.upper(): str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> ServeSettings:
        """The settings :meth:`to_env` wrote, each cast to its field's declared type."""
        environ = os.environ if environ is None else environ
        types = typing.get_type_hints(cls)
        values = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = _cast(raw, types[field.name])
        values.setdefault("model_dir", default_model_dir())
        return cls(**values)


def _cast(raw: str, annotation: typing.Any) -> typing.Any:
    """``raw`` as ``annotation`` (``int``, ``float``, ``str``, or one of them ``| None``)."""
    options = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    if raw == "None" and type(None) in typing.get_args(annotation):
        return None
    return options[0](raw)
