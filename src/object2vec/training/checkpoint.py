"""Checkpoints of a training run, and resuming from them.

Long jobs die (spot instances, OOM kills, a closed laptop); SageMaker's managed spot training
syncs ``/opt/ml/checkpoints`` and expects the job to go on from there. With a checkpoint
directory, :func:`~object2vec.training.fit.fit` writes a checkpoint at the end of every epoch,
and every ``every_minutes`` within epochs when asked, and a run started with the same directory
resumes from the newest one: its final weights are bit for bit those of a run never stopped
(on a CPU, with the same seed and thread count).

A checkpoint is a directory ``checkpoint-<epochs done>-<batches into the next epoch>``, written
atomically (:func:`object2vec.artifact.replaced_directory`); the newest :data:`KEEP` are kept.
It holds safetensors and JSON only, so reading one never runs code:

- ``weights.safetensors``: the network's weights, as training steps them;
- ``training.safetensors``: the optimizers' tensors (moments, step counts), the weight average
  and every rank's torch RNG state (uint8 tensors);
- ``best.safetensors``: the best epoch's weights, which early stopping restores at the end;
- ``state.json``: the position (epochs done, batches into the next, whether early stopping has
  ended training), the per-epoch history, early stopping's counters, the optimizers' scalar state
  and settings, and per rank the numpy generator state from the start of the running epoch and
  the running epoch's loss sums; plus what the checkpoint belongs to: the hyperparameters, a
  fingerprint of the training and validation data, the number of processes.

The running epoch is resumed by rebuilding its batch order from the generator state saved at
its start and passing over the batches already taken; dropout continues from the saved torch RNG
state. A checkpoint of other hyperparameters, other data or another number of processes is
refused with :class:`CheckpointError` (resuming it would silently train something else); a
checkpoint that cannot be read is passed over for the one before it, with a warning.

Under torchrun every rank resumes from the directory (which all ranks must see), and rank 0
writes, after gathering the per-rank states.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .. import artifact
from ..errors import Object2VecError, UsageError
from ..hyperparameters import HyperparameterError, Hyperparameters, parse_hyperparameters
from ..runtime import Logger
from . import distributed
from .data import PairDataset

if TYPE_CHECKING:
    from ..nn import Object2VecNet
    from .fit import EarlyStopping, WeightAverage

FORMAT = 1
KEEP = 2
#: Under torchrun the ranks agree every this many batches whether a timed checkpoint is due
#: (one small all-reduce), since a checkpoint is written by all ranks together.
SYNC_EVERY = 10
STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.safetensors"
TRAINING_FILE = "training.safetensors"
BEST_FILE = "best.safetensors"
NAME = re.compile(r"^checkpoint-(\d+)-(\d+)$")
#: Why a checkpoint directory may be unreadable: a missing or truncated file, broken JSON.
UNREADABLE = (OSError, SafetensorError, ValueError, KeyError, TypeError, RuntimeError)


class CheckpointError(Object2VecError):
    """A checkpoint belongs to another run (hyperparameters, data, processes) or none can be read."""


@dataclass
class EpochProgress:
    """How far one rank is into an epoch: batches taken, and the sum of their losses (weighted
    by batch size) over the samples seen. An interrupted epoch resumes from here."""

    batches: int = 0
    loss_sum: float = 0.0
    seen: int = 0


@dataclass
class Position:
    """Where a run stands: ``epochs`` done, ``progress`` into the next, whether early stopping
    ended it, and the samples and seconds of training so far."""

    epochs: int = 0
    progress: EpochProgress = field(default_factory=EpochProgress)
    stopped: bool = False
    samples: int = 0
    seconds: float = 0.0

    def within(self, epoch: int) -> EpochProgress | None:
        """The progress to resume ``epoch`` from, if it is the interrupted one."""
        return self.progress if epoch == self.epochs + 1 and self.progress.batches else None

    def end(self, epochs: int) -> int:
        """The last epoch to run: ``epochs``, or none more once early stopping has ended training."""
        return self.epochs if self.stopped else epochs


@dataclass
class TrainingState:
    """What the fit loop trains and counts that a checkpoint must bring back (by reference)."""

    net: Object2VecNet
    optimizers: list[torch.optim.Optimizer]
    average: WeightAverage
    stopper: EarlyStopping
    rng: np.random.Generator
    history: list[dict[str, float]]


class Checkpointer:
    """Where and how often to checkpoint: ``--checkpoint-dir`` and ``--checkpoint-every-minutes``
    (``None``: at the end of every epoch only)."""

    def __init__(self, directory: str | os.PathLike, every_minutes: float | None = None):
        if every_minutes is not None and not every_minutes > 0:
            raise UsageError(f"--checkpoint-every-minutes must be positive, got {every_minutes}")
        self.directory = Path(directory)
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes

    def for_run(
        self,
        run: distributed.Context,
        hp: Hyperparameters,
        train: PairDataset,
        validation: PairDataset | None,
        log: Logger,
    ) -> RunCheckpoints:
        """The checkpoints of one run on this data (given whole, before it is sharded)."""
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"--checkpoint-dir {self.directory}: exists and is not a directory")
        return RunCheckpoints(self, run, hp, fingerprint(train=train, validation=validation), log)


class _NoCheckpoints:
    """What the fit loop calls when there is no checkpoint directory: nothing happens."""

    def for_run(self, *_args) -> _NoCheckpoints:
        return self

    def resume(self, _state: TrainingState) -> Position:
        return Position()

    def after_batch(self, _progress: EpochProgress) -> None:
        pass

    def epoch_end(self, _epoch: int, _stopped: bool, _samples: int) -> None:
        pass


NO_CHECKPOINTS = _NoCheckpoints()


def fingerprint(**channels: PairDataset | None) -> dict[str, dict]:
    """Record count and a BLAKE2 hash of each channel's validated contents: the same data
    wherever it was copied to (SageMaker downloads it afresh, so names and times change)."""
    prints = {}
    for name, data in channels.items():
        if data is None:
            prints[name] = None
            continue
        digest = hashlib.blake2b(digest_size=16)
        for array in (data.in0.offsets, data.in0.tokens, data.in1.offsets, data.in1.tokens, data.labels):
            digest.update(np.ascontiguousarray(array).view(np.uint8))
        prints[name] = {"records": len(data), "blake2b": digest.hexdigest()}
    return prints


class RunCheckpoints:
    """The checkpoints of one run: :meth:`resume` once before training, then the fit loop calls
    :meth:`after_batch` after every step and :meth:`epoch_end` after every epoch."""

    def __init__(self, config: Checkpointer, run: distributed.Context, hp, data: dict, log: Logger):
        self.directory, self.every_seconds = config.directory, config.every_seconds
        self.run, self.hp, self.data, self.log = run, hp, data, log
        self.state: TrainingState | None = None
        self._epochs = self._samples = 0
        self._seconds = 0.0
        self._clock = self._last_write = time.perf_counter()
        self._epoch_rng: dict = {}

    # --- resuming ------------------------------------------------------------------------

    def resume(self, state: TrainingState) -> Position:
        """Bring ``state`` back from the newest checkpoint; where the run stands."""
        self.state = state
        found, at = self._restore_newest()
        _ranks_agree(self.run, found.name if found else "")
        if found:
            into = (
                f", {at.progress.batches} batch(es) into epoch {at.epochs + 1}" if at.progress.batches else ""
            )
            self.log(f"resuming from {found}: {at.epochs} epoch(s) done{into}")
        self._epochs, self._samples, self._seconds = at.epochs, at.samples, at.seconds
        self._clock = self._last_write = time.perf_counter()
        self._epoch_rng = state.rng.bit_generator.state
        return at

    def _restore_newest(self) -> tuple[Path | None, Position]:
        """Restore the newest checkpoint that can be read (older ones are tried in turn; each
        restore overwrites everything the one before may have half restored)."""
        problems = []
        for path in checkpoints(self.directory)[::-1]:
            try:
                self._check_belongs(path, _read_state(path))
                return path, self._restore(path)
            except CheckpointError:
                raise
            except UNREADABLE as exc:
                problems.append(f"{path.name}: {' '.join(str(exc).split())}")
                self.log(f"warning: checkpoint {path} cannot be read ({problems[-1]}); trying the one before")
        if problems:
            raise CheckpointError(
                f"{self.directory}: no checkpoint can be read ({'; '.join(problems)}); "
                "remove them to start afresh"
            )
        return None, Position()

    def _check_belongs(self, path: Path, state: dict) -> None:
        """Refuse a checkpoint of another run: resuming it would train something else."""
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
        saved, now = _as_now(path, state["hyperparameters"]), self.hp.to_strings()
        if saved != now:
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            detail = ", ".join(f"{k}={saved.get(k)} there, {now.get(k)} now" for k in changed[:5])
            raise CheckpointError(f"{path}: written for other hyperparameters ({detail}){_ELSEWHERE}")
        if state["data"] != self.data:
            raise CheckpointError(
                f"{path}: written for other data ({_data_difference(state['data'], self.data)}){_ELSEWHERE}"
            )
        if state["world_size"] != self.run.world_size:
            raise CheckpointError(
                f"{path}: written by {state['world_size']} process(es), this run has {self.run.world_size}"
                f"{_ELSEWHERE}"
            )

    def _restore(self, path: Path) -> Position:
        state, training = _read_state(path), load_file(path / TRAINING_FILE)
        s = self.state
        load_model(s.net, str(path / WEIGHTS_FILE))
        for index, optimizer in enumerate(s.optimizers):
            optimizer.load_state_dict(
                _optimizer_state(optimizer, state["optimizers"][index], training, index)
            )
        s.average.load_state_dict(
            {"steps": state["average_steps"], "shadow": _numbered(training, "average.")}
        )
        best = (
            _load_aliased(path / BEST_FILE, state["best_aliases"]) if (path / BEST_FILE).is_file() else None
        )
        s.stopper.load_state_dict(state["early_stopping"], best)
        s.history[:] = state["history"]
        mine = state["ranks"][self.run.rank]
        s.rng.bit_generator.state = mine["numpy"]
        torch.set_rng_state(training[f"rng.{self.run.rank}.torch"])
        if self.run.device.type == "cuda":
            torch.cuda.set_rng_state(training[f"rng.{self.run.rank}.cuda"], self.run.device)
        progress = EpochProgress(state["batches"], mine["loss_sum"], mine["seen"])
        return Position(state["epochs"], progress, state["stopped"], state["samples"], state["seconds"])

    # --- writing -------------------------------------------------------------------------

    def after_batch(self, progress: EpochProgress) -> None:
        """Write a checkpoint within the epoch when ``every_minutes`` have passed."""
        if self.every_seconds is None or not self._due(progress.batches):
            return
        self._write(Position(self._epochs, progress, False, self._samples, self._elapsed()))

    def epoch_end(self, epoch: int, stopped: bool, samples: int) -> None:
        """Write the checkpoint of a finished epoch (``stopped``: early stopping ends training)."""
        self._epochs, self._samples = epoch, samples
        self._epoch_rng = self.state.rng.bit_generator.state  # where the next epoch starts
        self._write(Position(epoch, EpochProgress(), stopped, samples, self._elapsed()))

    def _elapsed(self) -> float:
        return self._seconds + time.perf_counter() - self._clock

    def _due(self, batches: int) -> bool:
        due = time.perf_counter() - self._last_write >= self.every_seconds
        if not self.run.enabled:
            return due
        if batches % SYNC_EVERY:
            return False
        return distributed.sum_across_ranks(float(due))[0] > 0  # every rank writes when any is due

    def _write(self, at: Position) -> None:
        ranks = _gather_rank_states(self.run, at.progress, self._epoch_rng)
        if self.run.is_main:
            target = self.directory / f"checkpoint-{at.epochs:05d}-{at.progress.batches:09d}"
            with artifact.replaced_directory(target) as staging:
                self._write_files(staging, at, ranks)
            prune(self.directory)
        self._last_write = time.perf_counter()

    def _write_files(self, staging: Path, at: Position, ranks: list[tuple[dict, dict]]) -> None:
        s = self.state
        save_model(s.net, str(staging / WEIGHTS_FILE))
        tensors: dict[str, torch.Tensor] = {}
        optimizers = [
            _split_optimizer(opt.state_dict(), f"optimizer.{i}.", tensors)
            for i, opt in enumerate(s.optimizers)
        ]
        average = s.average.state_dict()
        tensors.update({f"average.{i}": t for i, t in enumerate(average["shadow"])})
        for rank, (_, rng) in enumerate(ranks):
            tensors.update({f"rng.{rank}.{kind}": t for kind, t in rng.items()})
        save_file(
            {k: t.detach().cpu().contiguous() for k, t in tensors.items()}, str(staging / TRAINING_FILE)
        )
        aliases = _save_aliased(s.stopper.best_state, staging / BEST_FILE) if s.stopper.best_state else {}
        state = {
            "format": FORMAT,
            "hyperparameters": self.hp.to_strings(),
            "data": self.data,
            "world_size": self.run.world_size,
            "epochs": at.epochs,
            "batches": at.progress.batches,
            "stopped": at.stopped,
            "samples": at.samples,
            "seconds": at.seconds,
            "history": s.history,
            "early_stopping": s.stopper.state_dict(),
            "best_aliases": aliases,
            "average_steps": average["steps"],
            "optimizers": optimizers,
            "ranks": [info for info, _ in ranks],
        }
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")


_ELSEWHERE = "; give another --checkpoint-dir, or empty this one to start afresh"


def checkpoints(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(tuple(map(int, m.groups())), p) for p in directory.iterdir() if (m := NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def prune(directory: Path) -> None:
    """Keep the newest :data:`KEEP` checkpoints, and no leftovers of killed writes."""
    for old in checkpoints(directory)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in directory.glob(".checkpoint-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def _read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def _data_difference(saved: dict, now: dict) -> str:
    parts = []
    for channel in sorted(set(saved) | set(now)):
        if saved.get(channel) != now.get(channel):
            there, here = saved.get(channel), now.get(channel)
            count = lambda d: "none" if d is None else f"{d['records']} records {d['blake2b'][:12]}"  # noqa: E731
            parts.append(f"{channel}: {count(there)} there, {count(here)} now")
    return ", ".join(parts)


def _ranks_agree(run: distributed.Context, name: str) -> None:
    """Every rank must resume from the same checkpoint (or none): one that saw another
    directory would train from other weights and deadlock or diverge."""
    if not run.enabled:
        return
    names = [blob.decode() for blob in _all_gather_bytes(run, (name or "none").encode())]
    if len(set(names)) > 1:
        raise CheckpointError(
            f"the ranks found different checkpoints ({', '.join(names)}); every rank must see the same "
            "checkpoint directory"
        )


# --- tensors <-> safetensors + JSON --------------------------------------------------------


def _split_optimizer(state_dict: dict, prefix: str, tensors: dict[str, torch.Tensor]) -> dict:
    """An optimizer's state dict as JSON, its tensors moved to ``tensors`` under ``prefix``."""
    scalars: dict[str, dict] = {}
    for index, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"scalars": scalars, "param_groups": state_dict["param_groups"]}


def _optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, tensors: dict, index: int) -> dict:
    """The state dict :func:`_split_optimizer` took apart, with the settings' tuples restored."""
    prefix = f"optimizer.{index}."
    state: dict[int, dict] = {int(k): dict(v) for k, v in saved["scalars"].items()}
    for name, tensor in tensors.items():
        if name.startswith(prefix):
            param, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(param), {})[key] = tensor
    groups = []
    for live, group in zip(optimizer.param_groups, saved["param_groups"]):
        groups.append({k: tuple(v) if isinstance(live.get(k), tuple) else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def _numbered(tensors: dict[str, torch.Tensor], prefix: str) -> list[torch.Tensor]:
    keys = sorted((int(k[len(prefix) :]), k) for k in tensors if k.startswith(prefix))
    return [tensors[k] for _, k in keys]


def _save_aliased(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, str]:
    """Save a state dict whose entries may share memory (tied tables); safetensors stores each
    tensor once, so the returned ``{alias: stored name}`` records the rest."""
    stored: dict[tuple, str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state_dict.items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if key in stored:
            aliases[name] = stored[key]
        else:
            stored[key] = name
            unique[name] = tensor.detach().cpu().contiguous()
    save_file(unique, str(path))
    return aliases


def _load_aliased(path: Path, aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    tensors = load_file(path)
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


# --- per-rank state under torchrun ---------------------------------------------------------


def _gather_rank_states(
    run: distributed.Context, progress: EpochProgress, epoch_rng: dict
) -> list[tuple[dict, dict[str, torch.Tensor]]]:
    """Every rank's (JSON state, RNG tensors), in rank order: the numpy generator state from the
    start of the running epoch, the epoch's loss sums, and the torch (and CUDA) RNG states."""
    info = {"numpy": epoch_rng, "loss_sum": progress.loss_sum, "seen": progress.seen}
    rng = {"torch": torch.get_rng_state()}
    if run.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
    if not run.enabled:
        return [(info, rng)]
    infos = [json.loads(blob) for blob in _all_gather_bytes(run, json.dumps(info).encode())]
    gathered = {kind: _all_gather_bytes(run, t.numpy().tobytes()) for kind, t in rng.items()}
    tensors = [
        {kind: torch.frombuffer(bytearray(blobs[r]), dtype=torch.uint8) for kind, blobs in gathered.items()}
        for r in range(run.world_size)
    ]
    return list(zip(infos, tensors))


def _all_gather_bytes(run: distributed.Context, data: bytes) -> list[bytes]:
    """Each rank's ``data``, in rank order (tensors only: nothing is pickled)."""
    device = run.device if run.backend == "nccl" else torch.device("cpu")
    length = torch.tensor([len(data)], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(run.world_size)]
    dist.all_gather(lengths, length)
    padded = torch.zeros(max(1, *(int(n) for n in lengths)), dtype=torch.uint8)
    if data:
        padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    blobs = [torch.empty_like(padded, device=device) for _ in range(run.world_size)]
    dist.all_gather(blobs, padded.to(device))
    return [bytes(blob[: int(n)].cpu().numpy()) for blob, n in zip(blobs, lengths)]


def _as_now(path: Path, saved: dict[str, str]) -> dict[str, str]:
    """A checkpoint's hyperparameters as this version writes them: one written before a
    hyperparameter existed lacks its key, and was trained with its default, which parsing fills in."""
    try:
        return parse_hyperparameters(saved).to_strings()
    except HyperparameterError as exc:
        raise CheckpointError(f"{path}: its hyperparameters no longer parse ({exc}){_ELSEWHERE}") from None
