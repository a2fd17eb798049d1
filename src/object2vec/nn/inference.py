"""Inference-only encoder paths: the encodings of each encoder's ``forward``, with no work on padding.

Serving sees sequences of mixed lengths (5 to 32 tokens in a typical text request). Padding every
sequence of a request to its longest one wastes work in proportion: about 40% of the positions for
uniform lengths of 5..32, and convolutions and recurrences pay for every position. Here:

- ``pooled_embedding``: one ``embedding_bag`` over the flat token column (a mean per sequence,
  nothing padded or materialised per token), then the encoder's projection; on a CPU, when it
  costs no more memory per token, the bag is taken over the token table already projected
  (:func:`projected_table`: a mean commutes with a linear map), so a pass is one gather; a pass
  of a few requests is made by a C loop where the extension was built (``_kernels.c``,
  ``bag_mean``: the same bits as ``embedding_bag``, without its 10-30 us of setup a call);
- every other encoder: its own ``forward`` over length-sorted chunks whose padded size stays
  within :func:`token_budget` tokens, so each chunk holds sequences of nearly equal length.

A sequence's encoding does not depend on what it is batched with (every encoder masks padding;
``tests/test_encoders.py`` checks it), so these paths give the eager encodings: exactly, or within
float32 rounding for the pooled mean (sum order and the division differ; ``tests/test_inference.py``
bounds the difference by 1e-6).

On a CPU with several torch threads and a pass of at least as many chunks, the chunks run side
by side, one chunk per thread and one torch thread per chunk (:func:`chunk_threads`), instead of
one chunk at a time with every operation split over the threads. A split operation waits for its
slowest thread: whenever the server's event loop takes a core to read or write JSON, every
operation of the pass stalls behind the thread it displaced, while chunk by chunk the other
threads go on. In a process doing nothing else the two ways are equally fast; served over HTTP
(1,000-instance requests, 2 connections, 2 cores) hcnn answered 1.28x and bilstm 1.45x faster
(README, "Serving performance"). A pass of fewer chunks than threads keeps the split operations,
so that no thread idles (only 2 cores were measured).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.nn import functional as F

from .. import native
from ..columns import SequenceColumn
from .encoders import Encoder, PooledEmbeddingEncoder

#: The most padded positions (rows x longest row) one chunk of a sequence encoder runs on. Large
#: enough that per-call overhead is small against the arithmetic, small enough that sorted chunks
#: hold sequences of nearly one length. On the CPU 2,048: embedding 1,000 sequences of 5-32 tokens
#: took 214 ms (hcnn) and 1,020 ms (bilstm) against 301 and 1,234 ms with 8,192, two threads;
#: 1,024 was no faster (README "Serving performance"; measured with one chunk at a time, before
#: chunks ran side by side). Other devices keep 8,192, the budget the GPU figures were measured
#: with (no other size was measured there).
TOKEN_BUDGET = 8192
CPU_TOKEN_BUDGET = 2048


def token_budget(device: torch.device) -> int:
    """The chunk size in padded tokens for a sequence encoder running on ``device``."""
    return CPU_TOKEN_BUDGET if device.type == "cpu" else TOKEN_BUDGET


def length_chunks(sorted_lengths: np.ndarray, max_rows: int, budget: int = TOKEN_BUDGET) -> Iterator[slice]:
    """Consecutive slices of ascending ``sorted_lengths`` with at most ``max_rows`` rows and a padded
    size (rows x the last, longest row) within ``budget`` (a longer single row goes alone)."""
    start, total = 0, len(sorted_lengths)
    while start < total:
        window = sorted_lengths[start : start + max_rows]
        cost = np.arange(1, len(window) + 1) * window  # ascending: rows grow and so does the longest
        end = start + max(1, int(np.searchsorted(cost, budget, side="right")))
        yield slice(start, end)
        start = end


@torch.inference_mode()
def encode_column(
    encoder: Encoder, column: SequenceColumn, device: torch.device, batch_size: int
) -> torch.Tensor:
    """``[len(column), enc_dim]`` encodings of ``column``'s sequences, in column order, on ``device``."""
    if isinstance(encoder, PooledEmbeddingEncoder):
        return _pooled(encoder, column, device, batch_size)
    return _in_length_order(encoder, column, device, batch_size)


def _pooled(
    encoder: PooledEmbeddingEncoder, column: SequenceColumn, device: torch.device, batch_size: int
) -> torch.Tensor:
    """Mean token vector per sequence straight from the flat column, ``batch_size`` sequences per
    call (bounded memory), projected: gathered from :func:`projected_table` where there is one,
    else from the table's weight and then projected."""
    projected = projected_table(encoder)
    small = _projected_in_c(encoder, projected, [column], None)
    if small is not None:
        return torch.from_numpy(small[0])
    table = encoder.embedding.weight if projected is None else projected
    if (
        projected is None
        and device.type == "cpu"
        and native.kernels is not None
        and table.dtype == torch.float32
        and len(column.tokens) <= C_BAG_MAX_TOKENS
    ):
        pooled = torch.from_numpy(_bag_means(_values(table), [column], None, None))
        # projected batch_size rows at a time, as below: a linear layer's sums depend on how many
        # rows it is given at once, and these must be the bits of the path below
        chunks = [encoder.project(pooled[s : s + batch_size]) for s in range(0, len(pooled), batch_size)]
        return torch.cat(chunks) if chunks else encoder.project(pooled)
    outputs = []
    for start in range(0, len(column), batch_size):
        offsets = column.offsets[start : start + batch_size + 1]
        tokens = torch.from_numpy(column.tokens[offsets[0] : offsets[-1]]).to(device)
        starts = torch.from_numpy(offsets[:-1] - offsets[0]).to(device)
        counts = torch.from_numpy(np.diff(offsets)).clamp_(min=1).to(device=device, dtype=torch.float32)
        # the sum, then the division by each sequence's length: the same numbers as mode="mean"
        # (an empty sequence, cut to 0 tokens by max_len=0, pools to zeros as there), whose
        # per-call setup costs about 10-20 us more
        pooled = F.embedding_bag(tokens, table, starts, mode="sum").div_(counts.unsqueeze(1).to(table.dtype))
        if projected is None:
            outputs.append(encoder.project(pooled))
        else:
            outputs.append(pooled if encoder.project.bias is None else pooled.add_(encoder.project.bias))
    if not outputs:
        return torch.zeros(0, encoder.enc_dim, device=device)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


#: Passes of at most this many tokens are pooled by ``_kernels.c``'s ``bag_mean`` (3-12 us for a
#: few sequences, where ``embedding_bag`` spends 10-30 us setting up); larger ones by
#: ``embedding_bag``, which reads memory faster (1,000 sequences of 5-32 tokens of 256 values:
#: 0.7-0.9 ms against 1.2-1.3, one thread; the two cross near 1,000 tokens). Same bits either way.
C_BAG_MAX_TOKENS = 1024


def _values(tensor: torch.Tensor | None) -> np.ndarray | None:
    """A float32 tensor's values as a contiguous numpy array (no copy when already contiguous)."""
    return None if tensor is None else tensor.detach().contiguous().numpy()


def _bag_means(
    table: np.ndarray, columns: Sequence[SequenceColumn], bias: np.ndarray | None, max_len: int | None
) -> np.ndarray:
    """``[sequences, width]`` float32, the sequences of ``columns`` one after another: each one's
    mean row of ``table`` over its first ``max_len`` tokens (zeros when empty), plus ``bias``, by
    one call of ``_kernels.c``'s ``bag_mean``, which gives the bits of the ``embedding_bag`` path."""
    out = np.empty((sum(len(column.offsets) - 1 for column in columns), table.shape[1]), dtype=np.float32)
    tokens = [np.ascontiguousarray(column.tokens, dtype=np.int64) for column in columns]
    offsets = [np.ascontiguousarray(column.offsets, dtype=np.int64) for column in columns]
    cap = -1 if max_len is None else max_len
    native.kernels.bag_mean(table, tokens, offsets, bias, out, cap, torch.get_num_threads())
    return out


def pooled_encodings(
    encoder: Encoder, columns: Sequence[SequenceColumn], max_len: int | None
) -> list[np.ndarray] | None:
    """Each column's encodings (float32, ``[len(column), enc_dim]``), every sequence cut to its
    first ``max_len`` tokens: the bits of :func:`encode_column` on the columns joined and cut, made
    by one call of ``_kernels.c``'s ``bag_mean`` straight from the columns over the projected
    table, with no joining, cutting or tensors (each column's rows are a view of the call's
    output). For a server's pass of a few requests, whose fixed Python costs took more than its
    arithmetic. None where that does not apply (not a pooled
    encoder with a float32 projected table on the CPU, no extension, or more than
    :data:`C_BAG_MAX_TOKENS` tokens, counted before the cut): the caller then takes
    :func:`encode_column`. Every token must be in the table, those past ``max_len`` too (the C
    loop checks them all; the server's requests are checked before they are cut)."""
    if not isinstance(encoder, PooledEmbeddingEncoder):
        return None
    return _projected_in_c(encoder, projected_table(encoder), columns, max_len)


def _projected_in_c(
    encoder: PooledEmbeddingEncoder,
    table: torch.Tensor | None,
    columns: Sequence[SequenceColumn],
    max_len: int | None,
) -> list[np.ndarray] | None:
    """:func:`pooled_encodings` given the encoder's :func:`projected_table` (None: there is none,
    and so no such pass); also :func:`encode_column`'s way for a small pooled pass on the CPU."""
    if native.kernels is None or table is None or table.dtype != torch.float32:
        return None
    if sum(len(column.tokens) for column in columns) > C_BAG_MAX_TOKENS:
        return None
    values, bias = _projected_tables[encoder].arrays  # made with the table (views of it and the bias)
    out = _bag_means(values, columns, bias, max_len)
    if len(columns) == 1:
        return [out]
    blocks, start = [], 0  # a view of each column's rows
    for column in columns:
        end = start + len(column.offsets) - 1
        blocks.append(out[start:end])
        start = end
    return blocks


#: The most memory a pooled encoder's projected token table may take (the table it is made from
#: stays, so serving holds both).
PROJECTED_TABLE_MAX_BYTES = 256 * 2**20

_projected_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ProjectedTable:
    """A projected token table with what it was made from: the encoder's two modules, their
    parameters, and each parameter's version counter and data pointer at the time."""

    __slots__ = ("modules", "sources", "memory", "stamps", "table", "arrays")

    def __init__(self, modules: tuple, sources: tuple, table: torch.Tensor, arrays: tuple | None):
        self.modules, self.sources, self.table, self.arrays = modules, sources, table, arrays
        self.stamps = _stamps(*sources)
        # the sources' memory held: freed, its address could come back for new weights and pass
        # the data-pointer check
        self.memory = tuple(t.detach() for t in sources if t is not None)

    def made_from(self, encoder: PooledEmbeddingEncoder) -> bool:
        """Whether ``encoder`` still holds the very modules and parameters the table was made from,
        unchanged: not changed in place (an optimizer step, ``load_state_dict``: version counters),
        not given other memory (``.to()``, ``.data =``: data pointers), not replaced. Read from the
        modules' own dictionaries: ``encoder.embedding.weight`` and the like cost about 1 us each
        through ``nn.Module.__getattr__``, and a server checks this on every pass."""
        modules = encoder._modules
        embedding, project = modules.get("embedding"), modules.get("project")
        if embedding is not self.modules[0] or project is not self.modules[1]:
            return False
        weight, project_weight, bias = self.sources
        parameters = project._parameters
        if (
            embedding._parameters.get("weight") is not weight
            or parameters.get("weight") is not project_weight
            or parameters.get("bias") is not bias
        ):
            return False
        return _stamps(weight, project_weight, bias) == self.stamps


def _stamps(weight: torch.Tensor, project_weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """The version counters and data pointers of a projected table's sources."""
    bias_stamp = None if bias is None else (bias._version, bias.data_ptr())
    weights = (weight._version, weight.data_ptr(), project_weight._version, project_weight.data_ptr())
    return (*weights, bias_stamp)


def projected_table(encoder: PooledEmbeddingEncoder) -> torch.Tensor | None:
    """Every token's vector through ``encoder``'s projection, without the bias: the mean of a
    sequence's rows of it, plus the bias, is the encoding (a mean commutes with a linear map, to
    float32 rounding), so a pass needs a gather and no matrix product. 1,000 sequences of 5-32
    tokens, ``enc_dim`` 256: 2.6-2.8 ms -> 0.62-0.65 ms (README "Serving performance").

    None off the CPU, when ``enc_dim`` exceeds the token dimension (each token would then read
    more than its own row), beyond :data:`PROJECTED_TABLE_MAX_BYTES`, or for weights made under
    ``torch.inference_mode`` (which have no version counter to tell a change). Made on first use and
    made again whenever the weights it comes from change (:meth:`_ProjectedTable.made_from`)."""
    made = _projected_tables.get(encoder)
    if made is not None and made.made_from(encoder):
        return made.table
    made = _make_projected_table(encoder)
    if made is None:
        _projected_tables.pop(encoder, None)
        return None
    _projected_tables[encoder] = made
    return made.table


def _make_projected_table(encoder: PooledEmbeddingEncoder) -> _ProjectedTable | None:
    weight, project = encoder.embedding.weight, encoder.project
    rows, dim = weight.shape
    size = rows * encoder.enc_dim * weight.element_size()
    if weight.device.type != "cpu" or encoder.enc_dim > dim or size > PROJECTED_TABLE_MAX_BYTES:
        return None
    sources = (weight, project.weight, project.bias)
    if any(t is not None and t.is_inference() for t in sources):  # no version counter to tell a change
        return None
    with torch.inference_mode():
        table = F.linear(weight, project.weight)
    # numpy views, sharing memory with the tensors (float32 only: numpy has no bfloat16)
    arrays = (_values(table), _values(project.bias)) if table.dtype == torch.float32 else None
    return _ProjectedTable((encoder.embedding, project), sources, table, arrays)


def prepare(encoder: Encoder) -> None:
    """Make now what :func:`encode_column` keeps between calls for ``encoder`` (a pooled encoder's
    projected table), so that the first request a server answers does not wait for it."""
    if isinstance(encoder, PooledEmbeddingEncoder):
        projected_table(encoder)


def _in_length_order(
    encoder: Encoder, column: SequenceColumn, device: torch.device, batch_size: int
) -> torch.Tensor:
    """The encoder's own forward over length-sorted chunks of nearly equal length; on a CPU with
    several torch threads, several chunks at once (see the module's docstring)."""
    lengths = column.lengths
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(column), encoder.enc_dim, device=device)
    chunks = list(length_chunks(lengths[order], batch_size, token_budget(device)))

    @torch.inference_mode()
    def encode(chunk: slice) -> None:  # chunks write disjoint rows of ``out``
        rows = order[chunk]
        ids, true_lengths = column.padded(rows)
        out[torch.from_numpy(rows).to(device)] = encoder(ids.to(device), true_lengths.to(device))

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1 or len(chunks) < threads:
        for chunk in chunks:
            encode(chunk)
    else:
        list(chunk_threads(threads).map(encode, chunks))  # list(): waits, and raises a chunk's error
    return out


#: Each calling thread's pools, by size: a server's inference thread has one; a batch transform's
#: concurrent workers (each with its share of the cores as torch threads) one each.
_callers = threading.local()
if hasattr(os, "register_at_fork"):  # a forked child has none of the pools' threads
    os.register_at_fork(after_in_child=lambda: _callers.__dict__.clear())

#: How long starting a pool's threads may take before it is given up (a thread that cannot start).
POOL_START_TIMEOUT_S = 60.0


def chunk_threads(size: int) -> ThreadPoolExecutor:
    """The calling thread's pool of ``size`` threads, each running torch operations on one thread
    of its own. A pool goes with its caller: the executor's threads end once the calling thread
    has ended and the pool is collected."""
    pools = _callers.__dict__.setdefault("pools", {})
    if size not in pools:
        pools[size] = _one_torch_thread_each(size)
    return pools[size]


def _one_torch_thread_each(size: int) -> ThreadPoolExecutor:
    """A pool whose threads start with ``torch.set_num_threads(1)``. OpenMP's and MKL's thread
    counts are per thread, but that call also sets the count that threads making their first torch
    call later begin with: once every pool thread has made it, the caller sets that back to its own
    count (a thread making its first torch call during the start would keep 1)."""
    ready = threading.Barrier(size + 1, timeout=POOL_START_TIMEOUT_S)
    caller_threads = torch.get_num_threads()

    def one_torch_thread() -> None:
        try:
            torch.get_num_threads()  # torch's own first-use setup, which would undo the next line later
            torch.set_num_threads(1)
        finally:
            ready.wait()

    pool = ThreadPoolExecutor(size, thread_name_prefix="object2vec-chunks", initializer=one_torch_thread)
    try:
        for _ in range(size):  # each blocks its thread in the initializer, so the pool starts all of them
            pool.submit(int)
        ready.wait()
    except BaseException:
        ready.abort()  # releases the threads that did start
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        torch.set_num_threads(caller_threads)
    return pool
