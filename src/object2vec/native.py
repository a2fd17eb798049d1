"""The package's C extensions, compiled at install, or None where they were not built.

- ``kernels`` (``_kernels.c``): SparseRowAdam's row update and dropout's masks (training), and the
  pooled encoder's bag means (inference passes of a few requests).
- ``json_rows`` (``_jsonrows.c``): answers' float32 rows written as JSON text on several threads,
  and request bodies read straight into token columns.

Both are optional (no C compiler with OpenMP at install, another platform): each caller has a
PyTorch, numpy or orjson path that gives the same results, more slowly, and takes it when the
module is None. Tests set them to None to run those paths.
"""

from __future__ import annotations

# torch first: it loads its libgomp, which the extensions' own need for libgomp.so.1 then
# resolves to, so the C loops run on torch's OpenMP thread pool (not a second pool beside it).
import torch  # noqa: F401

try:
    from . import _kernels as kernels
except ImportError:
    kernels = None

try:
    from . import _jsonrows as json_rows
except ImportError:
    json_rows = None
