"""The SageMaker container contract: the ``/opt/ml`` layout <-> the calls the CLI makes.

SageMaker runs a bring-your-own training image as ``docker run IMAGE train`` with::

    /opt/ml/input/config/hyperparameters.json   the hyperparameters, a JSON object of strings
    /opt/ml/input/data/<channel>/               train, validation, test, auxiliary
    /opt/ml/model/                              what we write; SageMaker tars it to model.tar.gz
    /opt/ml/output/failure                      why the job failed, shown as its FailureReason

and a hosting image as ``docker run IMAGE serve`` with the model unpacked in ``/opt/ml/model``
and traffic on port 8080. The root is ``--ml-root``, else ``$OBJECT2VEC_ML_ROOT``, else
``/opt/ml``; the variables the SageMaker training toolkit sets (``SM_MODEL_DIR``,
``SM_CHANNEL_<NAME>``, ``SM_INPUT_CONFIG_DIR``, ``SM_OUTPUT_DIR``, ``SM_HOSTS``,
``SM_CURRENT_HOST``) override single paths and values.

The image's entrypoint is ``python3 -m object2vec.container <command>``: :func:`launch` turns the
command and the job's environment into the process to run (:func:`main` execs it). ``train``
runs one process per GPU of the machine through torchrun (``OBJECT2VEC_NPROC_PER_NODE`` sets
another count; 1 opts out) and, in a job of several instances
(``input/config/resourceconfig.json``), joins them in one torchrun rendezvous: as many nodes as
hosts, this host's index as its node rank, the first host as the master. Every process keeps
its own share of each channel: of all the records when every instance holds the whole channel
(SageMaker's ``FullyReplicated``), of its instance's records when SageMaker splits the channel
between instances (``ShardedByS3Key``).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Object2Vec
from .errors import Object2VecError
from .hyperparameters import load_hyperparameters_file
from .training import distributed
from .training.distributed import NODE_SHARDED_ENV

ML_ROOT_ENV = "OBJECT2VEC_ML_ROOT"
DEFAULT_ML_ROOT = "/opt/ml"
CHANNELS = ("train", "validation", "test", "auxiliary")
#: Training processes per machine: a number, or ``gpu``/``auto``/unset for one per visible GPU
#: (at least one).
NPROC_ENV = "OBJECT2VEC_NPROC_PER_NODE"
#: The rendezvous of a multi-instance job: the first host, on this port, unless these say
#: otherwise (a test maps the first host to 127.0.0.1).
MASTER_ADDR_ENV = "OBJECT2VEC_MASTER_ADDR"
MASTER_PORT_ENV = "OBJECT2VEC_MASTER_PORT"
DEFAULT_MASTER_PORT = 29500
#: What torchrun's workers, gloo and NCCL need to pick the instance's network interface.
SOCKET_IFNAME_ENVS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
TORCHRUN = ("-m", "torch.distributed.run")
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
    def checkpoint_dir(self) -> Path | None:
        """``<root>/checkpoints`` when it exists: where SageMaker's managed spot training syncs
        checkpoints (CheckpointConfig's default local path) and expects the job to resume from."""
        path = self.root / "checkpoints"
        return path if path.is_dir() else None

    @property
    def failure_file(self) -> Path:
        return self._path("SM_OUTPUT_DIR", "output") / "failure"

    @property
    def resource_config_file(self) -> Path:
        return self._path("SM_INPUT_CONFIG_DIR", "input", "config") / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self._path("SM_INPUT_CONFIG_DIR", "input", "config") / "inputdataconfig.json"

    def node_sharded_channels(self) -> list[str]:
        """The channels SageMaker splits between the instances (``S3DistributionType`` is
        ``ShardedByS3Key`` in inputdataconfig.json): each instance holds a different part."""
        path = self.input_data_config_file
        config = _json(path.read_text(encoding="utf-8"), str(path)) if path.is_file() else {}
        return [
            name
            for name, channel in (config.items() if isinstance(config, dict) else ())
            if isinstance(channel, dict) and channel.get("S3DistributionType") == "ShardedByS3Key"
        ]

    def cluster(self) -> Cluster | None:
        """The job's hosts: ``SM_HOSTS``/``SM_CURRENT_HOST`` when set, else resourceconfig.json,
        else ``None`` (not a SageMaker training job, or an older one on a single host)."""
        if self.environ.get("SM_HOSTS") and self.environ.get("SM_CURRENT_HOST"):
            return Cluster.of(_json(self.environ["SM_HOSTS"], "SM_HOSTS"), self.environ["SM_CURRENT_HOST"])
        path = self.resource_config_file
        if not path.is_file():
            return None
        config = _json(path.read_text(encoding="utf-8"), str(path))
        if not isinstance(config, dict):
            raise ContainerError(f"{path}: expected a JSON object with current_host and hosts")
        return Cluster.of(
            config.get("hosts"), config.get("current_host"), config.get("network_interface_name")
        )

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

    @property
    def tensorboard_dir(self) -> Path | None:
        """``output/tensorboard`` when the job has one (SageMaker creates it for a job with a
        TensorBoard output configuration and uploads what is written there), else None."""
        path = self._path("SM_OUTPUT_DIR", "output") / "tensorboard"
        return path if path.is_dir() else None

    def write_failure(self, exc: BaseException) -> Path:
        """Record why the job failed: the first line is the reason SageMaker shows."""
        text = f"{type(exc).__name__}: {exc}\n\n{''.join(traceback.format_exception(exc))}"
        self.failure_file.parent.mkdir(parents=True, exist_ok=True)
        self.failure_file.write_text(text, encoding="utf-8")
        return self.failure_file


@dataclass(frozen=True)
class Cluster:
    """The instances of a training job and which one this is (SageMaker names them ``algo-1``,
    ``algo-2``, ...; every host sees the same list in the same order)."""

    hosts: tuple[str, ...]
    current_host: str
    network_interface: str = ""

    @classmethod
    def of(cls, hosts: Any, current_host: Any, network_interface: Any = None) -> Cluster:
        if not (isinstance(hosts, list) and hosts and all(isinstance(h, str) and h for h in hosts)):
            raise ContainerError(f"the job's hosts must be a non-empty list of names, got {hosts!r}")
        if len(set(hosts)) != len(hosts) or current_host not in hosts:
            raise ContainerError(f"current host {current_host!r} must appear once among the hosts {hosts}")
        return cls(
            tuple(hosts), current_host, network_interface if isinstance(network_interface, str) else ""
        )

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)


@dataclass(frozen=True)
class Launch:
    """A process to run: its command line and the variables to add to its environment."""

    command: list[str]
    environ: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        settings = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.environ.items())
        return f"{settings} {shlex.join(self.command)}".strip()


def visible_gpus() -> int:
    """CUDA devices this process can see (``CUDA_VISIBLE_DEVICES`` respected)."""
    import torch

    return torch.cuda.device_count()


def processes_per_node(environ: Mapping[str, str], gpus: Callable[[], int] = visible_gpus) -> int:
    """``OBJECT2VEC_NPROC_PER_NODE`` when it is a number, else one per visible GPU (at least one),
    as the reference trains on every GPU of the instance."""
    raw = environ.get(NPROC_ENV, "").strip().lower()
    if raw in ("", "gpu", "auto"):
        return max(1, gpus())
    if not raw.isdigit() or int(raw) < 1:
        raise ContainerError(f"{NPROC_ENV}={raw!r}: expected a number of processes (1 or more) or 'gpu'")
    return int(raw)


def train_launch(args: Sequence[str], layout: Layout, gpus: Callable[[], int] = visible_gpus) -> Launch:
    """How ``docker run IMAGE train ARGS`` trains: one process, or torchrun with one process per
    GPU on this machine and, across the hosts of a multi-instance job, a static rendezvous
    (node rank = this host's index; master = the first host, or ``$OBJECT2VEC_MASTER_ADDR``)."""
    train = ["-m", "object2vec", "train", *args]
    nproc = processes_per_node(layout.environ, gpus)
    cluster = layout.cluster()
    if cluster is not None and len(cluster.hosts) > 1:
        rendezvous = _rendezvous(cluster, layout, nproc)
        return Launch([sys.executable, *TORCHRUN, *rendezvous, *train], _cluster_environ(cluster, layout))
    if nproc == 1:
        return Launch([sys.executable, *train])
    return Launch([sys.executable, *TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *train])


def _rendezvous(cluster: Cluster, layout: Layout, nproc: int) -> list[str]:
    """torchrun's static rendezvous options for this host of ``cluster``."""
    return [
        f"--nnodes={len(cluster.hosts)}",
        f"--node_rank={cluster.node_rank}",
        f"--nproc_per_node={nproc}",
        f"--master_addr={layout.environ.get(MASTER_ADDR_ENV) or cluster.hosts[0]}",
        f"--master_port={layout.environ.get(MASTER_PORT_ENV) or DEFAULT_MASTER_PORT}",
    ]


def _cluster_environ(cluster: Cluster, layout: Layout) -> dict[str, str]:
    """The instance's network interface for gloo and NCCL (unless set), and the channels each
    instance holds its own part of."""
    environ = {
        name: cluster.network_interface
        for name in SOCKET_IFNAME_ENVS
        if cluster.network_interface and not layout.environ.get(name)
    }
    if sharded := layout.node_sharded_channels():
        environ[NODE_SHARDED_ENV] = ",".join(sharded)
    return environ


def launch(argv: Sequence[str], layout: Layout, gpus: Callable[[], int] = visible_gpus) -> Launch:
    """What ``docker run IMAGE ARGV`` runs: ``train`` (:func:`train_launch`), ``serve`` (the
    default), or any other command as given (``docker run IMAGE object2vec hyperparameters``)."""
    command, args = (argv[0], list(argv[1:])) if argv else ("serve", [])
    if command == "train":
        return train_launch(args, layout, gpus)
    if command == "serve":
        return Launch([sys.executable, "-m", "object2vec", "serve", *args])
    return Launch([command, *args])


def main(argv: Sequence[str] | None = None) -> int:
    """The image's entrypoint: replace this process by what :func:`launch` says (so the server
    or torchrun is PID 1 and receives the container's signals). A job that cannot start prints
    one line, records it as the training failure, and exits 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    layout = Layout.find()
    try:
        chosen = launch(argv, layout)
    except Object2VecError as exc:
        print(f"object2vec container: error: {exc}", file=sys.stderr)
        if argv[:1] == ["train"]:
            layout.write_failure(exc)
        return 2
    if argv[:1] == ["train"]:  # the job's log shows how it was started
        print(f"object2vec container: {chosen}", file=sys.stderr, flush=True)
    os.environ.update(chosen.environ)
    try:
        os.execvp(chosen.command[0], chosen.command)
    except OSError as exc:
        print(f"object2vec container: error: cannot run {chosen.command[0]!r}: {exc}", file=sys.stderr)
        return 127


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContainerError(f"{where}: invalid JSON ({exc})") from None


def train(
    layout: Layout,
    overrides: Mapping[str, str] = (),
    *,
    seed: int | None = None,
    device: str | None = None,
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every_minutes: float | None = None,
    log: Callable[[str], None] = print,
    tensorboard: str | os.PathLike | None = None,
) -> Path:
    """Run the training job the layout describes and write the model to its model directory.
    Every epoch's metrics go to TensorBoard in ``tensorboard``, else the layout's
    ``output/tensorboard`` when present.

    Exactly ``object2vec train --train ... --model-dir ...`` with the paths taken from the
    layout and ``overrides`` on top of hyperparameters.json. Checkpoints go to ``checkpoint_dir``,
    else to the layout's (:attr:`Layout.checkpoint_dir`) when it exists. Any failure is first
    written to ``output/failure`` (by rank 0 under torchrun), then raised.
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
            checkpoint_dir=checkpoint_dir or layout.checkpoint_dir,
            checkpoint_every_minutes=checkpoint_every_minutes,
            tensorboard=tensorboard or layout.tensorboard_dir,
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


if __name__ == "__main__":
    raise SystemExit(main())
