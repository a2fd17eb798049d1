"""The fit loop: optimizers, mini-batch training, metrics, early stopping, the weight average.

Early stopping follows the reference: the validation loss must improve by at least
``early_stopping_tolerance`` within ``early_stopping_patience`` epochs, else training stops. The
weights of the best epoch are restored at the end either way, the best being the reference's
tuning objective: the highest ``validation:accuracy`` for softmax (ties broken by cross-entropy),
the lowest ``validation:mean_squared_error`` for regression (see :func:`objective`).

The log has one ``<channel>:<metric>=<value>`` line per metric: ``train:loss`` and every
``validation:*`` metric once per epoch, then the saved model's ``validation:*`` and ``test:*``
metrics last (a tuning job takes a metric's last value, which is thus the saved model's).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..hyperparameters import Hyperparameters
from ..nn import Object2VecNet
from ..runtime import Logger
from . import distributed
from .checkpoint import NO_CHECKPOINTS, Checkpointer, EpochProgress, TrainingState
from .data import Batch, PairDataset, epoch_size, iterate_batches
from .sparse_adam import SparseRowAdam

EVAL_BATCH_SIZE = 4096


def seed_everything(seed: int | None) -> np.random.Generator:
    if seed is not None:
        torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _dense_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """PyTorch's optimizer ``name`` over parameter ``groups`` (each with its ``weight_decay``), in
    its multi-tensor form: Adam's fused kernel (one pass per tensor: 2.4 ms a step for MovieLens
    (a)'s 2.4 M parameters against 14.9 ms one operation at a time, with the same update to
    float32 rounding), the others' ``foreach`` form."""
    groups = [group for group in groups if group["params"]]
    fast = {"foreach": True}
    if name == "adam" and all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"]):
        fast = {"fused": True}
    factories = {
        "adam": torch.optim.Adam,
        "adagrad": torch.optim.Adagrad,
        "sgd": torch.optim.SGD,
        "rmsprop": torch.optim.RMSprop,
        "adadelta": torch.optim.Adadelta,
    }
    return factories[name](groups, lr=lr, **fast)


def _sparse_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return SparseRowAdam(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)


def make_optimizers(net: Object2VecNet, hp: Hyperparameters) -> list[torch.optim.Optimizer]:
    """The optimizer(s) for ``net``.

    With ``token_embedding_storage_type=row_sparse`` the token tables get sparse gradients, so
    only the rows used in a batch are updated: adam uses lazy Adam for them (:class:`SparseRowAdam`,
    ``torch.optim.SparseAdam``'s update without its sparse bookkeeping), adagrad and sgd
    take sparse gradients directly (rmsprop and adadelta have no sparse form; the hyperparameter
    rules refuse them with row_sparse). ``weight_decay`` then applies to the dense parameters only
    (decaying every row each step would make the update dense again).

    ``weight_decay_scope=token_tables`` decays the token tables alone (a prior on the ID
    embeddings, as matrix factorisation regularises its factors) and leaves the rest free
    (README: MovieLens benchmark, experiment (f)).
    """
    trainable = [p for p in net.parameters() if p.requires_grad]
    table_ids = {id(t.weight) for t in net.token_tables}
    tables = [p for p in trainable if id(p) in table_ids]
    others = [p for p in trainable if id(p) not in table_ids]
    if hp.row_sparse:
        optimizers = [_dense_optimizer(hp.optimizer, [_group(others, hp.weight_decay)], hp.learning_rate)]
        if tables:
            optimizers.append(_sparse_optimizer(hp.optimizer, tables, hp.learning_rate))
        return optimizers
    if hp.weight_decay_scope == "token_tables":
        groups = [_group(tables, hp.weight_decay), _group(others, 0.0)]
    else:
        groups = [_group(trainable, hp.weight_decay)]
    return [_dense_optimizer(hp.optimizer, groups, hp.learning_rate)]


def _group(params: list[torch.Tensor], weight_decay: float) -> dict:
    return {"params": params, "weight_decay": weight_decay}


def batch_loss(net: nn.Module, batch: Batch, regression: bool) -> torch.Tensor:
    out = net(batch.in0, batch.len0, batch.in1, batch.len1)
    if regression:
        return F.mse_loss(out, batch.labels.to(out.dtype))
    return F.cross_entropy(out, batch.labels)


@torch.inference_mode()
def evaluate(net: Object2VecNet, data: PairDataset, device: torch.device) -> dict[str, float]:
    """``{mean_squared_error}`` for regression, ``{accuracy, cross_entropy}`` for softmax.

    Under torch.distributed every rank calls it on its shard; the sums are added over ranks."""
    was_training = net.training
    net.eval()
    total_loss, correct = 0.0, 0
    for batch in iterate_batches(data, EVAL_BATCH_SIZE):
        batch = batch.to(device)
        out = net(batch.in0, batch.len0, batch.in1, batch.len1)
        if net.regression:
            total_loss += F.mse_loss(out.float(), batch.labels.float(), reduction="sum").item()
        else:
            total_loss += F.cross_entropy(out.float(), batch.labels, reduction="sum").item()
            correct += (out.argmax(-1) == batch.labels).sum().item()
    net.train(was_training)
    total_loss, correct, n = distributed.sum_across_ranks(total_loss, correct, len(data))
    if net.regression:
        return {"mean_squared_error": total_loss / n}
    return {"accuracy": correct / n, "cross_entropy": total_loss / n}


def validation_loss(metrics: dict[str, float]) -> float:
    return metrics.get("mean_squared_error", metrics.get("cross_entropy", math.nan))


def objective(metrics: dict[str, float]) -> tuple[float, ...]:
    """How epochs are ranked when choosing the one to keep (lower is better): the reference's
    tuning objective, ``validation:accuracy`` for softmax (ties broken by cross-entropy) and
    ``validation:mean_squared_error`` for regression."""
    if "accuracy" in metrics:
        return (-metrics["accuracy"], metrics["cross_entropy"])
    return (metrics["mean_squared_error"],)


@dataclass
class EarlyStopping:
    """Stop when the validation loss has not improved by ``tolerance`` for ``patience`` epochs;
    remember the weights of the best epoch by the objective metric."""

    patience: int
    tolerance: float
    best_objective: tuple[float, ...] = (math.inf,)
    best_epoch: int = 0
    best_state: dict | None = None
    _reference: float = math.inf
    _stale: int = 0

    def update(self, epoch: int, metrics: dict[str, float], net: nn.Module) -> bool:
        """Record this epoch's validation metrics; return True when training should stop."""
        if objective(metrics) < self.best_objective:
            self.best_objective, self.best_epoch = objective(metrics), epoch
            self.best_state = copy.deepcopy(net.state_dict())
        loss = validation_loss(metrics)
        if loss < self._reference - self.tolerance:
            self._reference, self._stale = loss, 0
        else:
            self._stale += 1
        return self._stale >= self.patience

    def state_dict(self) -> dict:
        """The counters (JSON-ready; ``best_state``, a whole state dict, is kept apart)."""
        return {
            "best_objective": list(self.best_objective),
            "best_epoch": self.best_epoch,
            "reference": self._reference,
            "stale": self._stale,
        }

    def load_state_dict(self, state: dict, best_state: dict | None) -> None:
        self.best_objective, self.best_epoch = tuple(state["best_objective"]), state["best_epoch"]
        self._reference, self._stale = state["reference"], state["stale"]
        self.best_state = best_state


class WeightAverage:
    """An exponential moving average of the weights (Polyak averaging), used for every
    evaluation and for the saved model.

    Mini-batch training ends each epoch at a noisy point; on small, sparse data (ID pairs such as
    MovieLens) the validation loss of consecutive epochs jumps by several percent for that
    reason alone. The average over the last ``weight_average_epochs`` epochs' steps (a quarter
    of an epoch by default; at least ``MIN_SPAN_STEPS``, at most 10,000 steps) sits nearer the
    bottom of the valley and generalises better; training itself still steps the raw weights.
    Early steps are followed closely (:meth:`update`), so the full span holds once a run is
    about nine times as long. A span of several epochs is close to the stochastic weight
    averaging of long runs at a constant learning rate (README: MovieLens benchmark, experiment (e)).
    With ``row_sparse`` storage the token tables are left out, since averaging every row each
    step would make their update dense again.
    """

    MIN_SPAN_STEPS = 100  # large batches make short epochs
    MAX_DECAY = 0.9999  # a span of 10,000 steps at most

    def __init__(self, net: Object2VecNet, hp: Hyperparameters, steps_per_epoch: int):
        skip = {id(t.weight) for t in net.token_tables} if hp.row_sparse else set()
        self.params = [p for p in net.parameters() if p.requires_grad and id(p) not in skip]
        self.shadow = [p.detach().clone() for p in self.params]
        span = max(self.MIN_SPAN_STEPS, hp.weight_average_epochs * steps_per_epoch)
        self.decay = min(self.MAX_DECAY, 1.0 - 1.0 / span)
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))  # warm-up: follow early steps closely
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @contextlib.contextmanager
    def applied(self):
        """Temporarily put the averaged weights into the network."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for param, shadow in zip(self.params, self.shadow):
            current = param.detach().clone()
            param.copy_(shadow)
            shadow.copy_(current)

    def commit(self) -> None:
        """Keep the averaged weights in the network for good."""
        self._swap()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "shadow": list(self.shadow)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"{len(state['shadow'])} averaged tensors for {len(self.shadow)} parameters")
        self.steps = state["steps"]
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved)


@dataclass
class TrainResult:
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    samples_per_second: float = 0.0
    seconds: float = 0.0


def _init_output_bias(net: Object2VecNet, train: PairDataset) -> None:
    """Start regression at the mean label, so early epochs learn structure, not the offset."""
    if net.regression:
        net.start_output_at(float(np.mean(train.labels)))


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", unit_scale=True, leave=False, dynamic_ncols=True)


def train_epoch(
    net,
    optimizers,
    train: PairDataset,
    hp: Hyperparameters,
    rng,
    device,
    bar=None,
    *,
    model: nn.Module | None = None,
    max_batches: int | None = None,
    average: WeightAverage | None = None,
    resume: EpochProgress | None = None,
    after_batch: Callable[[EpochProgress], None] | None = None,
) -> tuple[float, int]:
    """One pass over ``train``; returns (mean training loss, samples seen). ``model`` runs the
    forward pass (default ``net``; its DistributedDataParallel wrapper under torchrun), and
    ``max_batches`` caps the pass so every rank takes the same number of steps.

    ``resume`` continues an epoch interrupted after ``resume.batches`` batches: ``rng`` must be
    in the state it had when that epoch began, so the same batches come in the same order and
    the ones already taken are passed over. ``after_batch`` sees the progress after every step
    (the checkpoint hook)."""
    net.train()
    model = net if model is None else model
    done, total, seen = (resume.batches, resume.loss_sum, resume.seen) if resume else (0, 0.0, 0)
    batches = iterate_batches(
        train,
        hp.mini_batch_size,
        shuffle=True,
        rng=rng,
        negative_rate=hp.negative_sampling_rate,
        bucket_width=hp.bucket_width,
    )
    for batch in itertools.islice(batches, done, max_batches):
        batch = batch.to(device)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss = batch_loss(model, batch, net.regression)
        loss.backward()
        distributed.average_sparse_gradients(net)  # under torchrun: the row-sparse tables' rows
        for opt in optimizers:
            opt.step()
        if average is not None:
            average.update()
        total += loss.item() * len(batch)
        seen += len(batch)
        done += 1
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(loss=f"{total / seen:.4f}", refresh=False)
        if after_batch is not None:
            after_batch(EpochProgress(done, total, seen))
    return total / max(seen, 1), seen


def fit(
    net: Object2VecNet,
    hp: Hyperparameters,
    train: PairDataset,
    validation: PairDataset | None = None,
    test: PairDataset | None = None,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    log: Logger = print,
    progress: bool | None = None,
    checkpointer: Checkpointer | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``net`` in place and return the final metrics (``validation:*``, ``test:*``).

    With a ``checkpointer`` the run first resumes from its newest checkpoint, if any, and
    writes one at the end of every epoch (and every few minutes within epochs, if asked).
    ``on_epoch`` (on the main process only) gets each epoch's record once it is logged (the
    TensorBoard hook, :mod:`.monitor`)."""
    run = distributed.setup(device)  # under torchrun: join the process group, take this rank's shards
    device, log = run.device, run.main_only(log)
    checkpoints = (checkpointer or NO_CHECKPOINTS).for_run(run, hp, train, validation, log)
    train = run.shard(train, name="train")
    validation = run.shard(validation, equal=False, name="validation")
    test = run.shard(test, equal=False, name="test")
    rng = seed_everything(seed)
    net.to(device)
    _init_output_bias(net, train)
    model = run.wrap(net)
    steps = run.steps_per_epoch(epoch_size(train, hp.negative_sampling_rate), hp.mini_batch_size)
    optimizers = make_optimizers(net, hp)
    average = WeightAverage(
        net, hp, steps or math.ceil(epoch_size(train, hp.negative_sampling_rate) / hp.mini_batch_size)
    )
    stopper = EarlyStopping(hp.early_stopping_patience, hp.early_stopping_tolerance)
    progress = (sys.stderr.isatty() if progress is None else progress) and run.is_main
    history: list[dict[str, float]] = []
    at = checkpoints.resume(TrainingState(net, optimizers, average, stopper, rng, history))
    started, samples = time.perf_counter() - at.seconds, at.samples
    for epoch in range(at.epochs + 1, at.end(hp.epochs) + 1):
        bar = _progress(epoch_size(train, hp.negative_sampling_rate), f"epoch {epoch}/{hp.epochs}", progress)
        epoch_start = time.perf_counter()
        train_loss, seen = train_epoch(
            net,
            optimizers,
            train,
            hp,
            rng,
            device,
            bar,
            model=model,
            max_batches=steps,
            average=average,
            resume=at.within(epoch),
            after_batch=checkpoints.after_batch,
        )
        if bar is not None:
            bar.close()
        train_loss, seen = run.mean_loss(train_loss, seen)
        samples += seen
        record = {
            "epoch": epoch,
            "train:loss": train_loss,
            "samples_per_second": seen / (time.perf_counter() - epoch_start),
        }
        with average.applied():
            if validation is not None:
                record.update({f"validation:{k}": v for k, v in evaluate(net, validation, device).items()})
            stop = validation is not None and stopper.update(epoch, _strip(record, "validation:"), net)
        history.append(record)
        for line in _format_epoch(record, hp.epochs):
            log(line)
        if on_epoch is not None and run.is_main:
            on_epoch(record)
        checkpoints.epoch_end(epoch, stop, samples)
        if stop:
            log(
                f"early stopping after epoch {epoch}: no improvement of {hp.early_stopping_tolerance} "
                f"in {hp.early_stopping_patience} epochs"
            )
            break
    seconds = time.perf_counter() - started
    average.commit()
    if stopper.best_state is not None:
        net.load_state_dict(stopper.best_state)
        log(f"restored the best epoch ({stopper.best_epoch})")
    metrics = final_metrics(net, validation, test, device)
    for name, value in metrics.items():  # last: a tuning job takes a metric's last value
        log(_metric_line(name, value))
    return TrainResult(
        metrics, history, stopper.best_epoch or len(history), samples / max(seconds, 1e-9), seconds
    )


def final_metrics(net, validation: PairDataset | None, test: PairDataset | None, device) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for channel, data in (("validation", validation), ("test", test)):
        if data is not None:
            metrics.update({f"{channel}:{k}": v for k, v in evaluate(net, data, device).items()})
    return metrics


def _strip(record: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}


def _metric_line(name: str, value: float) -> str:
    """``validation:cross_entropy=0.4123``: alone on its line, so the ``metric_definitions`` of a
    SageMaker training job (``^validation:cross_entropy=(\\S+)``) read it."""
    return f"{name}={value:.6g}"


def _format_epoch(record: dict[str, float], epochs: int) -> list[str]:
    """An epoch's log lines: a compact line for people (``epoch 3/10 samples_per_second=...``),
    then one metric line per ``<channel>:<metric>`` (``train:loss``, ``validation:*``), so a
    job's metrics hold one value per epoch. The compact line repeats no metric, so a pattern
    without ``^`` does not count it twice."""
    header = f"epoch {record['epoch']}/{epochs} samples_per_second={record['samples_per_second']:.6g}"
    return [header] + [_metric_line(k, v) for k, v in record.items() if ":" in k]
