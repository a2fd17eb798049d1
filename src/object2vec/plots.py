"""Pictures of a trained model: its training curves and a 2-D map of item embeddings.

The curves come from the model directory's ``history.json`` (train loss and every validation
metric per epoch); the map embeds the items of a records file with the model, projects them to
two dimensions (t-SNE on cosine distances by default, or PCA) and colours each point by one
field of its record (e.g. a genre). Drawn with matplotlib's object API (no global pyplot
state), so it works without a display and in threads.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import Object2VecError
from .neighbors import read_items
from .training.data import iter_json_lines

if TYPE_CHECKING:
    from .api import Object2Vec

MAPS = ("tsne", "pca")


class PlotError(Object2VecError):
    """The picture cannot be drawn from what was given."""


#: Labels drawn in their own colour; the rarer ones are drawn grey as "other".
MAX_LABELS = 10


def project(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """``[n, d]`` -> ``[n, 2]``. t-SNE keeps neighbourhoods (what an index searches by);
    PCA keeps the largest directions of variance and is deterministic and fast."""
    if method not in MAPS:
        raise PlotError(f"map={method!r}; valid: {', '.join(MAPS)}")
    if len(vectors) < 3:
        raise PlotError(f"a map needs at least 3 items, got {len(vectors)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(
        n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed
    ).fit_transform(vectors)


def read_labels(path: str | os.PathLike, field: str) -> list[str]:
    """The ``field`` of every record, as text (``"?"`` where a record lacks it)."""
    return [str(obj.get(field, "?")) if isinstance(obj, dict) else "?" for _, _, obj in iter_json_lines(path)]


def draw_curves(ax: Any, history: Sequence[dict]) -> None:
    """Losses on the left axis, accuracy (when there is one) on a right axis, per epoch."""
    from matplotlib.ticker import MaxNLocator

    if not history:
        ax.text(0.5, 0.5, "no training history in this model directory", ha="center", va="center")
        ax.set_axis_off()
        return
    epochs = [record["epoch"] for record in history]
    names = [n for n in history[0] if n.startswith(("train:", "validation:")) and not n.endswith("accuracy")]
    for name in names:
        ax.plot(
            epochs, [record.get(name, np.nan) for record in history], marker="o", markersize=3, label=name
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    lines, labels = ax.get_legend_handles_labels()
    if "validation:accuracy" in history[0]:
        right = ax.twinx()
        right.plot(
            epochs,
            [r.get("validation:accuracy", np.nan) for r in history],
            color="black",
            linestyle="--",
            marker="s",
            markersize=3,
            label="validation:accuracy",
        )
        right.set_ylabel("accuracy")
        more_lines, more_labels = right.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    ax.legend(lines, labels, fontsize=8)
    ax.set_title("training curves")
    ax.grid(alpha=0.3)


def draw_map(ax: Any, points: np.ndarray, labels: Sequence[str] | None, title: str) -> None:
    """A scatter of the projected items, one colour per frequent label (rare ones grey)."""
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7)
    else:
        counts = Counter(labels)
        shown = [label for label, _ in counts.most_common(MAX_LABELS)]
        other = np.array([label not in shown for label in labels])
        if other.any():
            ax.scatter(
                points[other, 0],
                points[other, 1],
                s=5,
                c="lightgrey",
                alpha=0.6,
                label=f"other ({int(other.sum())})",
            )
        colours = [f"C{i}" for i in range(MAX_LABELS)]
        for colour, label in zip(colours, shown):
            mask = np.array([value == label for value in labels])
            ax.scatter(
                points[mask, 0], points[mask, 1], s=7, c=colour, alpha=0.8, label=f"{label} ({counts[label]})"
            )
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def plot(
    model: Object2Vec,
    output: str | os.PathLike,
    *,
    items: str | os.PathLike | None = None,
    label_field: str | None = None,
    method: str = "tsne",
    seed: int = 0,
) -> Path:
    """Write a PNG: the training curves of ``model`` (its ``history``, which a loaded model reads
    from ``history.json``), and with ``items`` (a records file read by
    :func:`object2vec.neighbors.read_items`) the map of their embeddings coloured by ``label_field``."""
    from matplotlib.figure import Figure

    if label_field and items is None:
        raise PlotError("--label-field colours the map of --input items; give --input too")
    history = model.history
    fig = Figure(figsize=(15, 6.5) if items is not None else (7.5, 5), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(1, 1.3)) if items is not None else [fig.subplots()]
    draw_curves(axes[0], history)
    if items is not None:
        records = read_items(items, (model.hp.enc0_vocab_size, model.hp.enc1_vocab_size))
        vectors = model.embed(**{records.side: records.sequences})
        labels = read_labels(items, label_field) if label_field else None
        title = (
            f"{len(vectors)} {records.side} embeddings, {method.upper() if method == 'pca' else 't-SNE'}"
            + (f", coloured by '{label_field}'" if label_field else "")
        )
        draw_map(axes[1], project(vectors, method, seed), labels, title)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    return target
