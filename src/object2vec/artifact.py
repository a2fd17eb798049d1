"""Model directory <-> (hyperparameters, network).

A model directory holds ``hyperparameters.json`` (the SageMaker string map), ``model.safetensors``
(weights only), ``metrics.json`` and any vocabulary files training was given. Opening one never
runs code: no pickle anywhere. A ``model.tar.gz`` (what SageMaker stores) is unpacked safely.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

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


class ArtifactError(Object2VecError):
    """A model directory is missing a file or holds an inconsistent one."""


def save(
    model_dir: str | Path,
    hp: Hyperparameters,
    net: Object2VecNet,
    metrics: dict | None = None,
    extra_files: list[str | Path] = (),
) -> Path:
    """Write a model directory; returns its path."""
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / HYPERPARAMETERS_FILE).write_text(hp.to_json() + "\n", encoding="utf-8")
    save_model(net, str(root / WEIGHTS_FILE))
    (root / METRICS_FILE).write_text(
        json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    for file in extra_files:
        if Path(file).resolve() != (root / Path(file).name).resolve():
            shutil.copy(file, root / Path(file).name)
    return root


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
    """Pack a model directory into ``model.tar.gz`` (files at the archive's top level)."""
    root = Path(model_dir)
    out = Path(target) if target else root / ARCHIVE_FILE
    with tarfile.open(out, "w:gz") as tar:
        for file in sorted(root.iterdir()):
            if file.is_file() and file.resolve() != out.resolve():
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
