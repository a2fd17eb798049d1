"""The package's C loops (``_kernels.c``, compiled at install), or None where they were not built.

The extension is optional (no C compiler at install, another platform): each caller has a
PyTorch or numpy path that gives the same results, more slowly, and takes it when ``kernels`` is
None. Tests set it to None to run those paths.
"""

from __future__ import annotations

try:
    from . import _kernels as kernels
except ImportError:
    kernels = None
