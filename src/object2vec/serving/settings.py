"""Serving defaults and settings, each defined once: the payload limit, the micro-batch wait, the
port, the batch strategies, and the environment variables through which the SageMaker platform
configures a serving container (:class:`Platform`). The HTTP server, batch transform and the CLI
all read them here. An option given explicitly beats the platform's variable, which beats the
default."""

from __future__ import annotations

import math
import os
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from ..errors import UsageError
from . import protocol

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
#: The largest payload SageMaker sends (its MaxPayloadInMB range is 0..100; 0 means no limit).
SAGEMAKER_MAX_PAYLOAD_MB = 100
ENV_PREFIX = "OBJECT2VEC_SERVE_"

#: The variables SageMaker sets in a serving container (SageMaker's own containers honour them).
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
BATCH_ENV = "SAGEMAKER_BATCH"
MAX_CONCURRENT_TRANSFORMS_ENV = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"
#: The reference's own variable: which network to keep on the GPU.
PREFERRED_MODE_ENV = "INFERENCE_PREFERRED_MODE"


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
    #: The answer's type when a request's Accept is missing or a wildcard; "" for the request's
    #: own type (see :func:`~object2vec.serving.protocol.parse_accept`).
    default_accept: str = ""
    #: An index directory of this model's embeddings: adds ``POST /neighbors``; "" for none.
    index: str = ""

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


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Platform:
    """What the SageMaker platform tells a serving container through its environment; ``None``
    or empty where the variable is unset.

    ``SAGEMAKER_BIND_TO_PORT``: the port to listen on. ``SAGEMAKER_MAX_PAYLOAD_IN_MB``: the
    largest request body (a transform job's ``max_payload``; 0, "no limit", is read as the
    100 MB SageMaker never exceeds). ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``: the answer's type
    for a request without Accept (batch transform sends none unless the job sets one).
    ``SAGEMAKER_BATCH`` with ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS``: a batch transform sending
    that many requests at a time. ``INFERENCE_PREFERRED_MODE``: the reference's GPU placement.
    """

    port: int | None = None
    max_payload_mb: float | None = None
    default_accept: str = ""
    batch: bool = False
    max_concurrent_transforms: int | None = None
    preferred_mode: str = ""

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Platform:
        """The variables of ``environ`` (default ``os.environ``); a malformed one is a
        :class:`~object2vec.errors.UsageError` naming it."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str:
            return env.get(name, "").strip()

        payload = _number(MAX_PAYLOAD_ENV, get(MAX_PAYLOAD_ENV), float, 0, SAGEMAKER_MAX_PAYLOAD_MB)
        return cls(
            port=_number(PORT_ENV, get(PORT_ENV), int, 1, 65535),
            max_payload_mb=SAGEMAKER_MAX_PAYLOAD_MB if payload == 0 else payload,
            default_accept=_media_type(DEFAULT_ACCEPT_ENV, get(DEFAULT_ACCEPT_ENV)),
            batch=get(BATCH_ENV).lower() in ("true", "1", "yes"),
            max_concurrent_transforms=_number(
                MAX_CONCURRENT_TRANSFORMS_ENV, get(MAX_CONCURRENT_TRANSFORMS_ENV), int, 0
            )
            or None,
            preferred_mode=get(PREFERRED_MODE_ENV),
        )

    def workers(self) -> int:
        """Serving processes: one (concurrent small requests are micro-batched), or in a batch
        transform one per concurrent transform, at most one per CPU core: its requests are large,
        and each process decodes and answers its own in parallel."""
        if self.batch and self.max_concurrent_transforms:
            return max(1, min(self.max_concurrent_transforms, cpu_cores()))
        return 1


def serve_settings(
    model_dir: str,
    *,
    workers: int | None = None,
    max_payload_mb: float | None = None,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    max_queue_ms: float = DEFAULT_MAX_QUEUE_MS,
    threads: int | None = None,
    device: str | None = None,
    preferred_mode: str | None = None,
    platform: Platform | None = None,
    index: str | os.PathLike | None = None,
) -> ServeSettings:
    """The settings of a server: each option as given, else the platform's, else the default."""
    platform = Platform.read() if platform is None else platform
    return ServeSettings(
        model_dir,
        workers=workers or platform.workers(),
        max_payload_mb=max_payload_mb or platform.max_payload_mb or DEFAULT_MAX_PAYLOAD_MB,
        batch_wait_ms=batch_wait_ms,
        max_queue_ms=max_queue_ms,
        threads=threads or 0,
        device=device or "",
        preferred_mode=preferred_mode or platform.preferred_mode,
        default_accept=platform.default_accept,
        index=str(index or ""),
    )


def serve_port(port: int | None = None, platform: Platform | None = None) -> int:
    """``port`` as given, else ``SAGEMAKER_BIND_TO_PORT``, else 8080."""
    if port is not None:
        return port
    return (Platform.read() if platform is None else platform).port or DEFAULT_PORT


def transform_limits(
    max_payload_mb: float | None = None, concurrency: int | None = None, platform: Platform | None = None
) -> tuple[float, int]:
    """``object2vec transform``'s payload limit and concurrency: as given, else the platform's
    (as inside a SageMaker container), else 6 MB and 1."""
    platform = Platform.read() if platform is None else platform
    return (
        max_payload_mb or platform.max_payload_mb or DEFAULT_MAX_PAYLOAD_MB,
        concurrency or platform.max_concurrent_transforms or 1,
    )


def _number(name: str, raw: str, kind: type, low: float, high: float = math.inf) -> typing.Any:
    """``raw`` as ``kind`` in [low, high]; ``None`` when empty."""
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN fails too
        bound = "" if high == math.inf else f" and at most {high}"
        raise UsageError(f"{name}={raw!r}: expected {kind.__name__} at least {low}{bound}")
    return value


def _media_type(name: str, raw: str) -> str:
    """JSON or JSON Lines named by ``raw``; "" when empty or a wildcard."""
    if not raw:
        return ""
    try:
        return protocol.parse_accept(raw, default="")
    except protocol.RequestError:
        raise UsageError(f"{name}={raw!r}: expected {protocol.SUPPORTED}") from None
