"""What the benchmarks hand to the processes they start: the import path and the cores to use."""

from __future__ import annotations

import os


def with_path(src: str) -> str:
    """``src`` first on the import path, then whatever PYTHONPATH already held (extra packages)."""
    return os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` or a container's limit), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
