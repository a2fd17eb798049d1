"""Inference-only encoder paths: the encodings of each encoder's ``forward``, with no work on padding.

Serving sees sequences of mixed lengths (5 to 32 tokens in a typical text request). Padding every
sequence of a request to its longest one wastes work in proportion: about 40% of the positions for
uniform lengths of 5..32, and convolutions and recurrences pay for every position. Here:

- ``pooled_embedding``: one ``embedding_bag`` over the flat token column (a mean per sequence,
  nothing padded or materialised per token), then the encoder's projection;
- every other encoder: its own ``forward`` over length-sorted chunks whose padded size stays
  within :func:`token_budget` tokens, so each chunk holds sequences of nearly equal length.

A sequence's encoding does not depend on what it is batched with (every encoder masks padding;
``tests/test_encoders.py`` checks it), so these paths give the eager encodings: exactly, or within
float32 rounding for the pooled mean (sum order and the division differ; ``tests/test_inference.py``
bounds the difference by 1e-6).

On a CPU with several torch threads, the chunks of one pass run side by side, one chunk per thread
and one torch thread per chunk (:func:`chunk_threads`), instead of one chunk at a time with every
operation split over the threads. An operation on a chunk of about 2,048 tokens is too small to
split well, and a split operation waits for its slowest thread: whenever the server's event loop
takes a core to read or write JSON, every operation of the pass stalls behind the thread it
displaced. Chunk by chunk, the other threads go on. Served over HTTP (1,000-instance requests, 2
connections, 2 cores) this answered hcnn 1.3x and bilstm 1.2x faster (README, "Serving
performance").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.nn import functional as F

from ..columns import SequenceColumn
from .encoders import Encoder, PooledEmbeddingEncoder

#: The most padded positions (rows x longest row) one chunk of a sequence encoder runs on. Large
#: enough that per-call overhead is small against the arithmetic, small enough that sorted chunks
#: hold sequences of nearly one length. On the CPU 2,048: embedding 1,000 sequences of 5-32 tokens
#: took 214 ms (hcnn) and 1,020 ms (bilstm) against 301 and 1,234 ms with 8,192, two threads;
#: 1,024 was no faster (README "Serving performance"). Other devices keep 8,192, the budget the
#: GPU figures were measured with (no other size was measured there).
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
    call (bounded memory), projected. Reads the table's weight directly: at inference it is fixed."""
    outputs = []
    for start in range(0, len(column), batch_size):
        offsets = column.offsets[start : start + batch_size + 1]
        tokens = torch.from_numpy(column.tokens[offsets[0] : offsets[-1]]).to(device)
        starts = torch.from_numpy(offsets[:-1] - offsets[0]).to(device)
        counts = torch.from_numpy(np.diff(offsets)).clamp_(min=1).to(device=device, dtype=torch.float32)
        # the sum, then the division by each sequence's length: the same numbers as mode="mean"
        # (an empty sequence, cut to 0 tokens by max_len=0, pools to zeros as there), whose
        # per-call setup costs about 10-20 us more
        pooled = F.embedding_bag(tokens, encoder.embedding.weight, starts, mode="sum")
        outputs.append(encoder.project(pooled.div_(counts.unsqueeze(1).to(pooled.dtype))))
    if not outputs:
        return torch.zeros(0, encoder.enc_dim, device=device)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


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
    if device.type != "cpu" or threads == 1 or len(chunks) == 1:
        for chunk in chunks:
            encode(chunk)
    else:
        list(chunk_threads(threads).map(encode, chunks))  # list(): waits, and raises a chunk's error
    return out


_chunk_pools: dict[int, ThreadPoolExecutor] = {}
_chunk_pools_lock = threading.Lock()
os.register_at_fork(after_in_child=_chunk_pools.clear)  # a forked child has none of the threads


def chunk_threads(size: int) -> ThreadPoolExecutor:
    """``size`` threads (shared by every caller asking for that many) each running torch
    operations on one thread of its own."""
    with _chunk_pools_lock:
        if size not in _chunk_pools:
            _chunk_pools[size] = _one_torch_thread_each(size)
        return _chunk_pools[size]


def _one_torch_thread_each(size: int) -> ThreadPoolExecutor:
    """A pool whose threads start with ``torch.set_num_threads(1)``. That call sets the calling
    thread's own thread count (OpenMP's and MKL's are per thread), and also the count every thread
    started later begins with: the caller sets that back to its own once every pool thread has
    made its call."""
    ready = threading.Barrier(size + 1)
    caller_threads = torch.get_num_threads()

    def one_torch_thread() -> None:
        torch.get_num_threads()  # torch's own first-use setup, which would undo the next line later
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(size, thread_name_prefix="object2vec-chunks", initializer=one_torch_thread)
    for _ in range(size):  # each blocks its thread in the initializer, so the pool starts all of them
        pool.submit(int)
    ready.wait()
    torch.set_num_threads(caller_threads)
    return pool
