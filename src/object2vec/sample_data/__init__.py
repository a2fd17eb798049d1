"""The quickstart's sample data: the generator of the bundled ``train.jsonl`` and
``validation.jsonl`` beside this file, with which tests and benchmarks also make their own small,
learnable pair data sets on the spot.

Each token has a hidden latent vector; a sequence's latent is the mean of its tokens'. The label
of a pair is a function of the dot product of the two latents, so an encoder that learns the
token vectors (and a comparator that multiplies them) can recover it, and chance is far below.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson


def latent_pairs(
    n: int,
    vocab0: int = 50,
    vocab1: int = 60,
    *,
    max_len0: int = 1,
    max_len1: int = 1,
    task: str = "binary",
    num_classes: int = 2,
    latent_dim: int = 4,
    seed: int = 0,
    same_kind: bool = False,
) -> list[dict]:
    """``n`` records ``{"label", "in0", "in1"}``.

    ``same_kind=True`` gives both sides one token space (token i means the same in in0 and in1,
    as words do in sentence pairs; needs ``vocab0 == vocab1``), so the relation is symmetric and
    one shared encoder can learn it.

    ``task``: ``binary`` (label = dot > median), ``multiclass`` (dot split into ``num_classes``
    quantile bins) or ``regression`` (label = the dot, scaled to about unit variance).
    Sequence lengths are uniform in ``[1, max_len]``; token 0 is never used (a padding ID).
    """
    rng = np.random.default_rng(seed)
    z0 = rng.normal(size=(vocab0, latent_dim))
    z1 = rng.normal(size=(vocab1, latent_dim))
    if same_kind:
        if vocab0 != vocab1:
            raise ValueError(f"same_kind pairs need vocab0 == vocab1, got {vocab0} and {vocab1}")
        z1 = z0
    in0 = [rng.integers(1, vocab0, size=rng.integers(1, max_len0 + 1)).tolist() for _ in range(n)]
    in1 = [rng.integers(1, vocab1, size=rng.integers(1, max_len1 + 1)).tolist() for _ in range(n)]
    dots = np.array([z0[a].mean(0) @ z1[b].mean(0) for a, b in zip(in0, in1)])
    if task == "regression":
        labels: list = (dots / (dots.std() + 1e-9)).round(4).tolist()
    elif task in ("binary", "multiclass"):
        k = 2 if task == "binary" else num_classes
        edges = np.quantile(dots, np.linspace(0, 1, k + 1)[1:-1])
        labels = np.searchsorted(edges, dots).tolist()
    else:
        raise ValueError(f"unknown task {task!r}")
    return [{"label": y, "in0": a, "in1": b} for y, a, b in zip(labels, in0, in1)]


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path
