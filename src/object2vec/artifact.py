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
from safetensors.torch import load_model, save_model

from .hyperparameters import Hyperparameters, parse_hyperparameters
from .nn import Object2VecNet

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
ARCHIVE_FILE = "model.tar.gz"


class ArtifactError(ValueError):
    """A model directory is missing a file or holds an inconsistent one."""


def save(model_dir: str | Path, hp: Hyperparameters, net: Object2VecNet, metrics: dict | None = None,
         extra_files: list[str | Path] = ()) -> Path:
    """Write a model directory; returns its path."""
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / HYPERPARAMETERS_FILE).write_text(hp.to_json() + "\n", encoding="utf-8")
    save_model(net, str(root / WEIGHTS_FILE))
    (root / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        found = sorted(p.parent for p in target.rglob(HYPERPARAMETERS_FILE))
        if found:
            return found[0]
    raise ArtifactError(f"{root}: no {HYPERPARAMETERS_FILE} (nor a {ARCHIVE_FILE} holding one); not a model directory")


def archive(model_dir: str | Path, target: str | Path | None = None) -> Path:
    """Pack a model directory into ``model.tar.gz`` (files at the archive's top level)."""
    root = Path(model_dir)
    out = Path(target) if target else root / ARCHIVE_FILE
    with tarfile.open(out, "w:gz") as tar:
        for file in sorted(root.iterdir()):
            if file.is_file() and file.resolve() != out.resolve():
                tar.add(file, arcname=file.name)
    return out


def load(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Hyperparameters, Object2VecNet, dict]:
    """Rebuild the network from a model directory; returns (hyperparameters, net, metrics)."""
    root = resolve_model_dir(model_dir)
    weights = root / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{root}: {WEIGHTS_FILE} is missing")
    hp = parse_hyperparameters(json.loads((root / HYPERPARAMETERS_FILE).read_text(encoding="utf-8")))
    net = Object2VecNet(hp)
    missing, unexpected = load_model(net, str(weights), strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{weights}: weights do not match the hyperparameters (missing {missing}, unexpected {unexpected})")
    metrics_file = root / METRICS_FILE
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    return hp, net.to(device).eval(), metrics
