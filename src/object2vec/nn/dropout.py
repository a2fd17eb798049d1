"""Dropout whose CPU masks come from a counter-based stream: a pass over memory, not a generator.

``nn.Dropout`` draws its CPU masks with ``bernoulli_`` (4-5 ms per 512 x 512 batch here), and
``torch.rand(...) >= p`` takes 1.1-1.8 ms: PyTorch's CPU generator is sequential, one thread, a
few nanoseconds a number, and on the document-embedding settings the three masks of a step took
9% of it. Here value ``i`` of a mask is kept when the ``i``-th 32-bit draw of splitmix64's
stream, seeded by one draw from PyTorch's generator, is at least ``p * 2**32``: each draw
computed on its own, so the C loop (``object2vec/_kernels.c``) splits a mask over threads and
fills it in 0.2-0.3 ms, and :func:`keep_mask_numpy`, used where that loop was not built, gives
the same bits.

The distribution is dropout's (each value kept with probability ``1 - p`` to within ``2**-32``,
scaled by ``1 / (1 - p)``) and the masks follow ``torch.manual_seed`` and the generator state a
checkpoint restores; the stream differs from ``torch.rand``'s, so runs with dropout draw other
masks than before this module (README, Performance (training)).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import native

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with CPU masks from :func:`keep_mask` (other devices: ``nn.Dropout``'s own
    fused kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p == 1:
            return super().forward(x)
        return x * keep_mask(x.shape, self.p, dtype=x.dtype)


def keep_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A dropout mask of ``shape``: ``1 / (1 - p)`` where kept, 0 where dropped (``0 < p < 1``)."""
    seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64))
    threshold = min(2**32 - 1, max(1, round(p * 2**32)))
    if native.kernels is not None and dtype == torch.float32:
        mask = np.empty(tuple(shape), dtype=np.float32)
        native.kernels.dropout_mask(mask, seed, threshold, 1.0 / (1.0 - p), torch.get_num_threads())
        return torch.from_numpy(mask)
    keep = torch.from_numpy(keep_mask_numpy(int(np.prod(shape)), seed, threshold).reshape(tuple(shape)))
    return keep.to(dtype).mul_(1.0 / (1.0 - p))


def keep_mask_numpy(count: int, seed: int, threshold: int) -> np.ndarray:
    """Whether each of ``count`` values is kept: the C loop's stream in numpy. Draw ``i`` is the
    low (even ``i``) or high (odd ``i``) half of splitmix64's word ``i // 2`` of ``seed``."""
    words = np.arange(1, (count + 1) // 2 + 1, dtype=np.uint64)
    words *= _GOLDEN
    words += np.uint64(seed)
    words ^= words >> np.uint64(30)
    words *= _MIX1
    words ^= words >> np.uint64(27)
    words *= _MIX2
    words ^= words >> np.uint64(31)
    draws = np.empty(2 * len(words), dtype=np.uint32)
    draws[0::2] = words & np.uint64(0xFFFFFFFF)
    draws[1::2] = words >> np.uint64(32)
    return draws[:count] >= np.uint32(threshold)
