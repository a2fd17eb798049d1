"""The package's C loops (``_kernels.c``, compiled at install), or None where they were not built.

The extension is optional (no C compiler with OpenMP at install, another platform): each caller has a
PyTorch or numpy path that gives the same results, more slowly, and takes it when ``kernels`` is
None. Tests set it to None to run those paths.
"""

from __future__ import annotations

# torch first: it loads its libgomp, which the extension's own need for libgomp.so.1 then
# resolves to, so the C loops run on torch's OpenMP thread pool (not a second pool beside it).
import torch  # noqa: F401

try:
    from . import _kernels as kernels
except ImportError:
    kernels = None
