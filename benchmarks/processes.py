"""What the benchmarks hand to the processes they start: the import path, the cores to use, and
source trees of other versions (a commit, or a copy of this tree) with their C extensions built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def with_path(src: str) -> str:
    """``src`` first on the import path, then whatever PYTHONPATH already held (extra packages)."""
    return os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)


def usable_cores() -> int:
    """The cores this process may run on (``taskset`` or a container's limit), else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def materialise(rev: str, into: Path) -> Path:
    """The ``src/`` of commit ``rev`` of this repository, extracted under ``into``, its C
    extensions compiled."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src", "pyproject.toml", "README.md"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    build_extensions(into, rev)
    return into / "src"


def copy_this_tree(into: Path) -> Path:
    """A copy of this tree's ``src/`` (so edits made while the benchmark runs cannot leak into
    its later runs), its C extensions compiled from the copied sources."""
    shutil.copytree(REPO / "src", into / "src", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, into / name)
    build_extensions(into, "this tree")
    return into / "src"


def build_extensions(root: Path, name: str) -> None:
    """Compile the C extensions a project declares, in place, as ``pip install -e`` does: each
    version runs as its users run it (commits before the first extension have none)."""
    if "ext-modules" not in (root / "pyproject.toml").read_text():
        return
    done = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "build_ext", "--inplace"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or not any((root / "src").rglob("*.so")):
        if name == "this tree":  # measuring its slow fallback would misreport it
            raise SystemExit(f"this tree's C extensions did not build:\n{done.stderr[-2000:]}")
        print(f"  {name}: its C extensions did not build, so it runs without them\n{done.stderr[-2000:]}")
