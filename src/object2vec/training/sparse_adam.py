"""Adam for row-sparse token tables: ``torch.optim.SparseAdam``'s update, touching only the used rows.

SparseAdam is "lazy Adam": a row's moments advance only on the steps whose batch uses the row,
while the bias correction follows the table's step count. Its implementation coalesces the
gradient, then reads the moments of the used rows through ``sparse_mask`` and writes them and
the weights back as sparse additions, about fifteen passes over the used rows each step, and
on the StarSpace-shaped workload it took most of the training time (README, Performance).

:class:`SparseRowAdam` updates each used row of the weights and of the two moment tables where
it lies, in one pass: four rows read (the gradient's too) and three written, the least a step
can move. On the CPU that pass is a small C loop (``object2vec/_kernels.c``, built at install; the
arithmetic of PyTorch's fused Adam kernel, operation by operation). Where it is missing (no C
compiler at install) or cannot serve (another device or dtype), the same update runs through
PyTorch's kernels: the rows gathered (``index_select``), stepped by the fused Adam kernel,
written back (``index_copy_``), a cache-sized chunk of rows at a time, 2.5-4.5x slower. The
gradients of the pooled encoder arrive with sorted, distinct rows
(:func:`object2vec.nn.encoders.bag_mean`), so nothing is sorted here (:func:`distinct_rows`).
"""

from __future__ import annotations

import math
import mmap

import torch

from .. import native

#: Without the C extension, rows are updated in chunks of about this many values per table
#: (512 KB of float32): the gathered blocks of the weights, both moments and the gradient then
#: stay in cache between the gather, the update and the write-back (about 30% faster than
#: whole-table blocks on the StarSpace-shaped workload's 5,000 rows x 300 per step).
CHUNK_ELEMENTS = 1 << 17


def lazy_zeros(like: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``like`` whose memory is taken only where written.

    On CPU the zeros are an anonymous memory map, whose pages the operating system maps to one
    shared zero page until first written, so the moments of rows no batch has used occupy no
    memory (``torch.zeros`` writes every page). Huge pages are declined: one written row would
    take 2 MB (8,192 rows of 64 values), and the rows a batch uses are scattered over the whole
    table, so with huge pages (numpy's ``calloc`` asks for them) the moments of a 3,000,000-row
    table became resident in full within a few hundred steps. Elsewhere: ``torch.zeros_like``."""
    size = like.numel() * like.element_size()
    if like.device.type != "cpu" or size < mmap.PAGESIZE:
        return torch.zeros_like(like, memory_format=torch.contiguous_format)
    region = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(region, dtype=like.dtype).view(like.shape)


def distinct_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse gradient's row indices (sorted, each once) and its ``[rows, dim]`` values.

    Autograd drops the "coalesced" flag when it stores a sparse gradient, so ``coalesce()`` would
    sort rows that the pooled encoder already gives sorted and distinct; a linear check of the
    indices stands in for the sort, which runs only when the rows really are unsorted or repeated.
    """
    rows = grad._indices()[0]
    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()
        rows = grad._indices()[0]
    return rows, grad._values()


class SparseRowAdam(torch.optim.Optimizer):
    """Lazy Adam on sparse (COO) gradients: ``torch.optim.SparseAdam``'s arithmetic (to float32
    rounding: the fused kernel orders a few operations differently), rows not in the gradient
    left exactly as they are.

    The moments are ``[rows, dim]`` tables like the weights, indexed by row so that one gather
    reads a batch's rows; their memory is taken only for the rows that batches have used
    (:func:`lazy_zeros`; see README, million-row vocabularies).
    """

    def __init__(
        self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        if lr <= 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid SparseRowAdam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, group)
        return loss

    def _update(self, param: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        if not grad.is_sparse:
            raise RuntimeError("SparseRowAdam takes sparse gradients; use Adam for dense ones")
        rows, values = distinct_rows(grad)
        if values.numel() == 0:
            return
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = lazy_zeros(param)
            state["exp_avg_sq"] = lazy_zeros(param)
        state["step"] += 1
        # SparseAdam: w -= lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps); Adam's kernel computes
        # w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps'), the same for eps' = eps / sqrt(bc2).
        beta1, beta2 = group["betas"]
        settings = {
            "lr": group["lr"],
            "beta1": beta1,
            "beta2": beta2,
            "weight_decay": 0.0,
            "eps": group["eps"] / math.sqrt(1 - beta2 ** float(state["step"])),
            "amsgrad": False,
            "maximize": False,
        }
        tables = (param, state["exp_avg"], state["exp_avg_sq"])
        if native.kernels is not None and all(_native_table(table) for table in (*tables, values)):
            _native_update(tables, rows, values, float(state["step"]), settings)
            return
        chunk = max(1, CHUNK_ELEMENTS // max(1, values.shape[1]))
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            weight, exp_avg, exp_avg_sq = (table.index_select(0, part) for table in tables)
            grad_rows = values[start : start + chunk]
            torch._fused_adam_(
                [weight], [grad_rows], [exp_avg], [exp_avg_sq], [], [state["step"]], **settings
            )
            for table, block in zip(tables, (weight, exp_avg, exp_avg_sq)):
                table.index_copy_(0, part, block)


def _native_table(table: torch.Tensor) -> bool:
    """Whether the C extension can update ``table`` (and read its rows) in place."""
    return table.device.type == "cpu" and table.dtype == torch.float32 and table.is_contiguous()


def _native_update(tables, rows: torch.Tensor, values: torch.Tensor, step: float, settings: dict) -> None:
    """The update of ``rows`` by the C extension, with the coefficients PyTorch's fused Adam
    kernel derives from ``settings`` (in double precision, then rounded to float32 as it does)."""
    beta1, beta2 = settings["beta1"], settings["beta2"]
    weight, exp_avg, exp_avg_sq = (table.detach().numpy() for table in tables)
    native.kernels.row_adam_step(
        weight,
        exp_avg,
        exp_avg_sq,
        values.detach().numpy(),
        rows.contiguous().numpy(),
        settings["lr"] / (1 - beta1**step),
        1 - beta1,
        beta2,
        1 - beta2,
        math.sqrt(1 - beta2**step),
        settings["eps"],
        torch.get_num_threads(),
    )
    for table in tables:  # written behind autograd's back: what caches on versions must see it
        torch.autograd.graph.increment_version(table)
