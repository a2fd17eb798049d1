"""The optional C extensions are built wherever they can be: without them everything still works,
more slowly, so no other test would notice one missing."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest

from object2vec import native


@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc"))
    or not Path(sysconfig.get_paths()["include"], "Python.h").is_file(),
    reason="no C compiler or no Python headers here",
)
@pytest.mark.parametrize("module", ["kernels", "json_rows"])
def test_the_c_extensions_were_built_where_a_compiler_is(module):
    """Without ``_kernels`` training runs the 2.5-4.5x slower sparse update; without ``_jsonrows``
    every embedding answer is written by orjson on one thread."""
    missing = f"object2vec.native.{module} is missing: run `pip install -e .` again"
    assert getattr(native, module) is not None, missing
