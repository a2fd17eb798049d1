"""Model directory <-> (hyperparameters, network), and the atomic writes every output goes through.

A model directory holds ``hyperparameters.json`` (the SageMaker string map), ``model.safetensors``
(weights only), ``metrics.json`` and any vocabulary files training was given. Opening one never
runs code: no pickle anywhere. A ``model.tar.gz`` (what SageMaker stores) is unpacked safely.

Nothing is written in place: a file is written under a temporary name beside its target, flushed
to disk and renamed over it (:func:`atomic_file`); a directory is built beside its target and
swapped in with one rename (:func:`replaced_directory`). A process killed at any moment, or a
reader looking at any moment, finds the old file or directory or the new one, never a mix: one
model's configuration with another's weights would load without complaint when shapes agree.
Model directories, ``model.tar.gz``, checkpoints and batch transform outputs are all written so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .errors import Object2VecError
from .hyperparameters import Hyperparameters, parse_hyperparameters
from .nn import Object2VecNet

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
ARCHIVE_FILE = "model.tar.gz"
#: Name prefixes of the work directories a save leaves behind only when it was killed.
STAGING, REPLACED = "staging-", "replaced-"


class ArtifactError(Object2VecError):
    """A model directory is missing a file or holds an inconsistent one."""


# --- atomic writes -------------------------------------------------------------------------


def fsync_directory(path: str | os.PathLike) -> None:
    """Make a rename or unlink inside ``path`` durable (a no-op where directories cannot be
    opened or synced, e.g. on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (and ``root``) to disk, so that once the
    tree is renamed into place its contents survive a power cut too, not only a killed process."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_directory(path)
    fsync_directory(root)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, temporary: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` all at once: yields a binary file open at ``temporary`` (default: a hidden
    name beside ``path``); when the block ends it is flushed, synced and renamed over ``path``.
    If the block raises, the temporary file is removed and ``path`` is left as it was."""
    target = Path(path)
    temp = Path(temporary) if temporary else target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_file` for bytes already in memory."""
    with atomic_file(path) as handle:
        handle.write(data)


def _work_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}{secrets.token_hex(4)}")


def remove_leftovers(target: Path) -> None:
    """Remove the work directories of saves into ``target`` that were killed before they ended
    (one writer per target is assumed: a save running in parallel would lose its work)."""
    prefixes = (f".{target.name}.{STAGING}", f".{target.name}.{REPLACED}")
    if target.parent.is_dir():
        for path in target.parent.iterdir():
            if path.name.startswith(prefixes) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def replaced_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Build a directory, then put it at ``target`` in one step: yields an empty directory beside
    ``target``; when the block ends its contents are synced and it takes ``target``'s place,
    replacing an existing ``target`` whole (its old files go with it). If the block raises,
    ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    staging = _work_name(target, STAGING)
    staging.mkdir()  # not tempfile.mkdtemp: its mode 0700 would become the model directory's
    try:
        yield staging
        fsync_tree(staging)
        _put_in_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(target.parent)


def _put_in_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
    elif _exchange(staging, target):  # staging now holds the old directory
        shutil.rmtree(staging)
    else:  # no atomic exchange here: for a moment there is no target (never a mixed one)
        old = _work_name(target, REPLACED)
        os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old)


def _find_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _find_renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``);
    ``False`` where the system or file system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


# --- model directories ---------------------------------------------------------------------


def save(
    model_dir: str | Path,
    hp: Hyperparameters,
    net: Object2VecNet,
    metrics: dict | None = None,
    extra_files: list[str | Path] = (),
) -> Path:
    """Write a model directory atomically; returns its path.

    The files are written into a directory beside ``model_dir`` which then replaces it whole
    (:func:`replaced_directory`). Where that cannot be done, because ``model_dir`` is a mount
    point (a container's ``/opt/ml/model``) or its parent is read-only, the files are replaced
    one by one inside it, ``hyperparameters.json`` removed first and written last: until the
    save ends the directory is then not a model directory at all, rather than a mixed one.
    """
    root = Path(model_dir)
    check_model_target(root)
    if _swappable(root):
        with replaced_directory(root) as staging:
            _write_model(staging, hp, net, metrics, extra_files)
    else:
        _save_in_place(root, hp, net, metrics, extra_files)
    return root


def check_model_target(root: Path) -> None:
    """Refuse to save over anything but a model directory or an empty one: saving replaces the
    whole directory, and ``--model-dir .`` must not delete a project."""
    if root.exists() and not root.is_dir():
        raise ArtifactError(f"{root}: exists and is not a directory")
    if not root.is_dir() or (root / HYPERPARAMETERS_FILE).exists() or (root / WEIGHTS_FILE).exists():
        return
    if any(not p.name.startswith(f".{STAGING}") for p in root.iterdir()):
        raise ArtifactError(
            f"{root}: holds files but no {HYPERPARAMETERS_FILE} or {WEIGHTS_FILE}; a model is saved only "
            "into a new or empty directory or over another model (saving replaces the directory whole)"
        )


def _swappable(root: Path) -> bool:
    root.parent.mkdir(parents=True, exist_ok=True)
    return not os.path.ismount(root) and os.access(root.parent, os.W_OK)


def write_weights(net: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``net``'s weights file into ``directory`` exactly as a saved model holds it (so a
    digest of it is the digest of the saved model's weights); returns its path."""
    path = Path(directory) / WEIGHTS_FILE
    save_model(net, str(path))
    return path


def _write_model(
    directory: Path, hp: Hyperparameters, net: Object2VecNet, metrics: dict | None, extra_files
) -> None:
    (directory / HYPERPARAMETERS_FILE).write_text(hp.to_json() + "\n", encoding="utf-8")
    write_weights(net, directory)
    (directory / METRICS_FILE).write_text(
        json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for file in extra_files:
        shutil.copyfile(file, directory / Path(file).name)


def _save_in_place(
    root: Path, hp: Hyperparameters, net: Object2VecNet, metrics: dict | None, extra_files
) -> None:
    """The fallback of :func:`save` for a directory that cannot be replaced: written inside it,
    then moved file by file with ``hyperparameters.json`` (what makes it a model) last."""
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(f".{STAGING}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    staging = root / f".{STAGING}{secrets.token_hex(4)}"
    staging.mkdir()
    _write_model(staging, hp, net, metrics, extra_files)
    fsync_tree(staging)
    for loadable in (ARCHIVE_FILE, HYPERPARAMETERS_FILE):  # what lets the old model be loaded
        (root / loadable).unlink(missing_ok=True)
    fsync_directory(root)
    names = {p.name for p in staging.iterdir()}
    for stale in root.iterdir():
        if stale.is_file() and stale.name not in names:
            stale.unlink()
    for name in sorted(names - {HYPERPARAMETERS_FILE}) + [HYPERPARAMETERS_FILE]:
        os.replace(staging / name, root / name)
    staging.rmdir()
    fsync_directory(root)


def resolve_model_dir(path: str | Path) -> Path:
    """The directory holding ``hyperparameters.json``: ``path`` itself, or a ``model.tar.gz``
    (given directly or inside ``path``) unpacked to a temporary directory."""
    root = Path(path)
    archive = root if root.is_file() else root / ARCHIVE_FILE
    if root.is_dir() and (root / HYPERPARAMETERS_FILE).is_file():
        return root
    if archive.is_file() and tarfile.is_tarfile(archive):
        target = Path(tempfile.mkdtemp(prefix="object2vec-model-"))
        try:
            with tarfile.open(archive) as tar:
                _extract(tar, target)
        except (tarfile.TarError, OSError, EOFError) as exc:  # includes paths leaving target
            shutil.rmtree(target, ignore_errors=True)
            raise ArtifactError(f"{archive}: cannot unpack ({exc})") from None
        found = sorted(p.parent for p in target.rglob(HYPERPARAMETERS_FILE))
        if found:
            return found[0]
    raise ArtifactError(
        f"{root}: no {HYPERPARAMETERS_FILE} (nor a {ARCHIVE_FILE} holding one); not a model directory"
    )


def _extract(tar: tarfile.TarFile, target: Path) -> None:
    """Unpack ``tar`` into ``target``, refusing any member that would land outside it: tarfile's
    "data" filter where this Python has one (3.10.12+, 3.11.4+), else the same rule applied here to
    regular files and directories, other members skipped (Debian bookworm's Python 3.11.2 has no
    filter)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    root = target.resolve()
    for member in tar.getmembers():
        path = (root / member.name).resolve()
        if not path.is_relative_to(root) or member.name.startswith("/"):
            raise tarfile.TarError(f"{member.name!r} would be extracted outside {target}")
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
        elif member.isfile():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source, open(path, "wb") as out:
                shutil.copyfileobj(source, out)


def archive(model_dir: str | Path, target: str | Path | None = None) -> Path:
    """Pack a model directory into ``model.tar.gz`` (files at the archive's top level), written
    atomically (:func:`atomic_file`): an existing archive is replaced only by a complete one."""
    root = Path(model_dir)
    out = Path(target) if target else root / ARCHIVE_FILE
    with atomic_file(out) as handle:
        leave_out = {out.resolve(), Path(handle.name).resolve()}
        with tarfile.open(out.name, "w:gz", fileobj=handle) as tar:  # the name goes in the gzip header
            for file in sorted(root.iterdir()):
                if file.is_file() and file.resolve() not in leave_out:
                    tar.add(file, arcname=file.name)
    return out


def load(
    model_dir: str | Path, device: torch.device | str = "cpu"
) -> tuple[Hyperparameters, Object2VecNet, dict]:
    """Rebuild the network from a model directory; returns (hyperparameters, net, metrics)."""
    root = resolve_model_dir(model_dir)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{root}: {WEIGHTS_FILE} is missing")
    hp = parse_hyperparameters(_read_json(root / HYPERPARAMETERS_FILE))
    net = Object2VecNet(hp)
    try:
        missing, unexpected = load_model(net, str(weights), strict=False)
    except (SafetensorError, RuntimeError) as exc:  # not safetensors, truncated, or other shapes
        detail = " ".join(str(exc).split())  # one line, for the CLI
        raise ArtifactError(
            f"{weights}: unreadable or does not match the hyperparameters ({detail})"
        ) from None
    if missing or unexpected:
        raise ArtifactError(
            f"{weights}: weights do not match the hyperparameters "
            f"(missing {missing}, unexpected {unexpected})"
        )
    metrics_file = root / METRICS_FILE
    metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
    return hp, net.to(device).eval(), metrics


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return data
