"""Data-parallel training with ``torch.distributed``: torchrun's environment -> a process group.

``torchrun --nproc_per_node=N -m object2vec train ...`` (or several nodes with torchrun's
``--nnodes/--node_rank/--rdzv_endpoint``) starts one process per device and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`setup` turns that
into a :class:`Context`: the process group (``nccl`` on CUDA, ``gloo`` on CPU), this rank's
device (``cuda:LOCAL_RANK``), its disjoint shard of every channel, the
``DistributedDataParallel`` wrapper (gradients averaged over ranks) and the reductions that make
every metric, and so every early-stopping decision, identical on every rank. Without torchrun
(``WORLD_SIZE`` unset or 1) the same calls are no-ops, so the fit loop has one code path.
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from ..errors import UsageError
from ..runtime import Logger, resolve_device
from .data import PairDataset
from .sparse_adam import distinct_rows

#: When set, every rank writes ``rank<r>.json`` there: the record indices of its shard of each
#: channel (an audit of the sharding; the tests use it to show the shards are disjoint).
SHARD_LOG_ENV = "OBJECT2VEC_SHARD_LOG_DIR"
#: Channels whose files differ from machine to machine (SageMaker's ``ShardedByS3Key``), comma
#: separated: each machine holds its own part, which only its own processes split among them.
NODE_SHARDED_ENV = "OBJECT2VEC_NODE_SHARDED_CHANNELS"


def world_size() -> int:
    """Processes in this run: torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def is_main_process() -> bool:
    """True on rank 0 (and without torchrun): the one process that writes files and prints."""
    return rank() == 0


def local_device(device: str | torch.device | None) -> torch.device:
    """This process's device. Without torchrun: ``device`` (``None``/"auto": CUDA when present).
    Under torchrun on CUDA each process takes ``cuda:LOCAL_RANK``; naming another index is refused
    when several processes share the node, since they would all land on one GPU."""
    chosen = resolve_device(device)
    if chosen.type != "cuda" or world_size() == 1:
        return chosen
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if (
        chosen.index is not None
        and chosen.index != local_rank
        and int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1
    ):
        raise UsageError(
            f"--device {chosen}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda"
        )
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def shard_indices(n: int, rank: int, world_size: int, *, equal: bool) -> np.ndarray:
    """The record indices rank ``rank`` of ``world_size`` owns: every ``world_size``-th record,
    so shards are disjoint and each is spread over the whole file. ``equal=True`` trims every
    shard to ``n // world_size`` records (training: the ranks then step in lock-step; at most
    ``world_size - 1`` records are left out); ``equal=False`` keeps every record (evaluation,
    whose sums are added up across ranks)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    indices = np.arange(rank, n, world_size, dtype=np.int64)
    return indices[: n // world_size] if equal else indices


@dataclass(frozen=True)
class Context:
    """This process's place in the run; ``world_size == 1`` means a plain single process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return backend_for(self.device)

    def shard(self, data: PairDataset | None, *, equal: bool = True, name: str = "") -> PairDataset | None:
        """This rank's records of channel ``name`` (see :func:`shard_indices`): a share of all
        ranks', or of this machine's ranks' for a channel each machine holds its own part of
        (``OBJECT2VEC_NODE_SHARDED_CHANNELS``); ``data`` itself when alone."""
        if data is None or not self.enabled:
            return data
        position, count = self.rank, self.world_size
        if name and name in os.environ.get(NODE_SHARDED_ENV, "").split(","):
            position, count = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
        indices = shard_indices(len(data), position, count, equal=equal)
        if name and os.environ.get(SHARD_LOG_ENV):
            _log_shard(Path(os.environ[SHARD_LOG_ENV]), self.rank, name, data.source, indices)
        return data.subset(indices)

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` in ``DistributedDataParallel`` (which starts every rank from rank 0's weights
        and averages the gradients after each backward pass); ``net`` itself when alone.

        Row-sparse token tables are left out of DDP, which would all-reduce them as dense
        tables (a 3,000,000 x 300 table is 3.6 GB per step); they start from rank 0's rows
        (broadcast here) and :func:`average_sparse_gradients` exchanges only the rows a step
        used."""
        if not self.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel

        tables = sparse_tables(net)
        if tables:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, _names_of(net, tables))
            for table in tables:
                dist.broadcast(table.weight.data, src=0)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=device_ids)

    def steps_per_epoch(self, samples: int, batch_size: int) -> int | None:
        """How many mini-batches every rank takes per epoch: the fewest any rank has (a rank's
        ``samples`` may differ with negative sampling; bucketing only adds batches), so all ranks
        make the same number of gradient all-reduces. ``None`` (no limit) when alone."""
        if not self.enabled:
            return None
        return int(_all_reduce([math.ceil(samples / batch_size)], dist.ReduceOp.MIN)[0])

    def mean_loss(self, loss: float, seen: int) -> tuple[float, int]:
        """The sample-weighted mean of the ranks' mean losses, and the samples of all ranks."""
        total, count = sum_across_ranks(loss * seen, seen)
        return total / max(count, 1), int(count)

    def main_only(self, log: Logger) -> Logger:
        """``log`` on rank 0, a no-op elsewhere: metrics are printed once."""
        return log if self.is_main else (lambda _line: None)


def sparse_tables(net: nn.Module) -> list[nn.Embedding]:
    """The token tables of ``net`` that take row-sparse gradients (``row_sparse`` storage)."""
    return [t for t in getattr(net, "token_tables", []) if t.sparse]


def _names_of(net: nn.Module, tables: list[nn.Embedding]) -> list[str]:
    """Every name under which ``net`` reaches the tables' weights and buffers (a tied table has
    one per encoder)."""
    tensors = {id(t) for table in tables for t in (table.weight, *table.buffers())}
    named = [*net.named_parameters(remove_duplicate=False), *net.named_buffers(remove_duplicate=False)]
    return [name for name, tensor in named if id(tensor) in tensors]


@torch.no_grad()
def average_sparse_gradients(net: nn.Module) -> None:
    """Replace each row-sparse table's gradient by the mean over all ranks (what DDP does for the
    dense parameters), exchanging only the rows used: every rank sends its used rows' indices
    and gradient rows (``all_gather``, padded to the largest count), then sums the rows that
    several ranks used. A no-op in a single process. Every rank must call it after each
    backward pass, tables in the same order.

    Only dense ``all_gather`` is used, which gloo and NCCL both provide (NCCL has no sparse
    all-reduce; gloo's crashed a rank now and then when ranks' sparse gradients differed in
    size). Every rank sums the same gathered rows in the same order, so the replicas' tables
    stay identical."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for table in sparse_tables(net):
        weight = table.weight
        if weight.requires_grad:
            weight.grad = _averaged_rows(weight.grad, weight)


def _averaged_rows(grad: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    if grad is None:  # this rank's batch used no row: it still takes part in the exchange
        rows = torch.zeros(0, dtype=torch.long, device=weight.device)
        values = weight.new_zeros((0, weight.shape[1]))
    else:
        rows, values = distinct_rows(grad)
    counts = _gather(torch.tensor([len(rows)], device=weight.device))
    most = int(torch.cat(counts).max())
    gathered_rows = _gather(F.pad(rows, (0, most - len(rows))))
    gathered_values = _gather(F.pad(values, (0, 0, 0, most - len(rows))))
    rows = torch.cat([r[: int(n)] for r, n in zip(gathered_rows, counts)])
    values = torch.cat([v[: int(n)] for v, n in zip(gathered_values, counts)])
    return _sum_duplicate_rows(rows, values, weight.shape, scale=1.0 / len(counts))


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def _sum_duplicate_rows(rows: torch.Tensor, values: torch.Tensor, shape, scale: float) -> torch.Tensor:
    """A coalesced sparse tensor: ``scale`` times the sum of the ``values`` rows of each distinct
    row index. The sum is an ``embedding_bag`` over the rows sorted by index, so its order is
    fixed (deterministic on CUDA too, unlike ``index_add_``)."""
    ordered, order = torch.sort(rows, stable=True)
    distinct, counts = torch.unique_consecutive(ordered, return_counts=True)
    weights = torch.full((len(order),), scale, dtype=values.dtype, device=values.device)
    summed = F.embedding_bag(order, values, counts.cumsum(0) - counts, mode="sum", per_sample_weights=weights)
    return torch.sparse_coo_tensor(
        distinct.unsqueeze(0), summed, shape, is_coalesced=True, check_invariants=False
    )


def sum_across_ranks(*values: float) -> tuple[float, ...]:
    """Sums over all ranks, bit-identical on every rank (rank 0's result is broadcast); the
    values themselves without a process group. Every rank must call it."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    return tuple(_all_reduce(list(values), dist.ReduceOp.SUM))


def _all_reduce(values: list[float], op) -> list[float]:
    on = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    tensor = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=op)
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def setup(device: str | torch.device | None = None) -> Context:
    """The :class:`Context` of this process; joins the process group on first use under torchrun
    (and leaves it at exit). Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and torchrun's
    rendezvous variables (``MASTER_ADDR``/``MASTER_PORT``) through ``init_method="env://"``."""
    chosen = local_device(device)
    if world_size() == 1:
        return Context(device=chosen)
    if not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend_for(chosen), init_method="env://")
        _watch_for_crashes()
        atexit.register(lambda: teardown(wait=not _crashed))
    return Context(dist.get_rank(), dist.get_world_size(), chosen)


def teardown(*, wait: bool = True) -> None:
    """Leave the process group (safe to call twice, or without one). ``wait``: first wait for
    every rank to get here, so no rank closes its connections while another still uses them
    (gloo aborts a process whose peer vanished mid-call)."""
    if dist.is_available() and dist.is_initialized():
        # free DistributedDataParallel's reducer (kept in reference cycles) while the group lives
        gc.collect()
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a torchrun worker process: leave the process group, flush, and exit at once.

    Exiting through the interpreter's normal shutdown lets C++ objects of the distributed
    runtime be destroyed after the group they belong to, which now and then aborted a rank
    ("terminate called without an active exception") after a successful run."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    teardown(wait=not _crashed)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_crashed = False


def _watch_for_crashes() -> None:
    """Note an uncaught exception, so the exit does not wait at a barrier the other ranks may
    never reach (torchrun stops them once this process has exited)."""
    previous = sys.excepthook

    def hook(*exc_info):
        global _crashed
        _crashed = True
        previous(*exc_info)

    sys.excepthook = hook


def _log_shard(directory: Path, rank: int, name: str, source: str, indices: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{rank}.json"
    logged = json.loads(path.read_text()) if path.is_file() else {}
    logged[name] = {"source": source, "indices": indices.tolist()}
    path.write_text(json.dumps(logged))
