"""What training leaves to look at: TensorBoard scalars, history.json, and ``object2vec plot``."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import object2vec
from object2vec import container
from object2vec.cli import main
from object2vec.container import Layout
from object2vec.sample_data import latent_pairs, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``object2vec train --tensorboard`` on a small softmax task:
    (model dir, TensorBoard dir, items file)."""
    from conftest import TINY_HYPERPARAMETERS

    root = tmp_path_factory.mktemp("monitor")
    records = latent_pairs(1200, seed=7)
    for name, part in (("train", records[:1000]), ("validation", records[1000:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (root / "items.jsonl").write_text(
        "".join(
            json.dumps({"in1": [i], "id": i, "parity": "even" if i % 2 == 0 else "odd"}) + "\n"
            for i in range(1, 60)
        )
    )
    params = [f"{k}={v}" for k, v in TINY_HYPERPARAMETERS.items()]
    code = main(
        [
            "train",
            "--train",
            str(root / "train.jsonl"),
            "--validation",
            str(root / "validation.jsonl"),
            "--model-dir",
            str(root / "model"),
            "--tensorboard",
            str(root / "tb"),
            "--seed",
            "0",
            "--no-progress",
            *params,
        ]
    )
    assert code == 0
    return root / "model", root / "tb", root / "items.jsonl"


def test_every_epoch_metric_is_a_tensorboard_scalar(trained):
    model_dir, tensorboard_dir, _ = trained
    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history) == 3  # TINY_HYPERPARAMETERS: 3 epochs
    expected = {"train/loss", "samples_per_second", "validation/accuracy", "validation/cross_entropy"}
    assert set(events.Tags()["scalars"]) == expected
    for tag, key in (("train/loss", "train:loss"), ("validation/accuracy", "validation:accuracy")):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([record[key] for record in history], rel=1e-6)


def test_history_is_kept_beside_the_metrics(trained):
    model_dir, _, _ = trained
    history = json.loads((model_dir / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert all({"train:loss", "validation:accuracy", "validation:cross_entropy"} <= set(r) for r in history)
    assert "validation:accuracy" in json.loads((model_dir / "metrics.json").read_text())


@pytest.mark.parametrize(
    "extra", [[], ["--input", "ITEMS", "--label-field", "parity"], ["--input", "ITEMS", "--map", "pca"]]
)
def test_plot_writes_a_png(trained, tmp_path, capsys, extra):
    model_dir, _, items = trained
    output = tmp_path / "report.png"
    code = main(
        [
            "plot",
            "--model-dir",
            str(model_dir),
            "--output",
            str(output),
            *[str(items) if a == "ITEMS" else a for a in extra],
        ]
    )
    assert code == 0 and f"plot written to {output}" in capsys.readouterr().out
    data = output.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_plot_mistakes_exit_2(trained, tmp_path, capsys):
    model_dir, _, _ = trained
    code = main(
        ["plot", "--model-dir", str(model_dir), "--label-field", "genre", "--output", str(tmp_path / "r.png")]
    )
    assert code == 2 and "--label-field colours the map of --input items" in capsys.readouterr().err


def test_history_is_kept_when_a_loaded_model_is_saved_again(trained, tmp_path):
    model_dir, _, _ = trained
    history = json.loads((model_dir / "history.json").read_text())
    again = object2vec.load(model_dir).save(tmp_path / "again")
    assert json.loads((again / "history.json").read_text()) == history
    assert object2vec.load(again).history == history


def scalar_tags(log_dir) -> set[str]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_a_sagemaker_job_logs_to_output_tensorboard_when_present(tmp_path):
    from conftest import TINY_HYPERPARAMETERS

    root = tmp_path / "ml"
    write_jsonl(latent_pairs(300, seed=2), root / "input" / "data" / "train" / "train.jsonl")
    (root / "input" / "config").mkdir(parents=True)
    (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(TINY_HYPERPARAMETERS))
    layout = Layout.find(root, environ={})
    assert layout.tensorboard_dir is None  # a job without a TensorBoard output: nothing written
    container.train(layout, {"epochs": "1"}, seed=0, log=lambda *_: None)
    assert not (root / "output" / "tensorboard").exists()
    (root / "output" / "tensorboard").mkdir(parents=True)
    assert layout.tensorboard_dir == root / "output" / "tensorboard"
    container.train(layout, {"epochs": "2"}, seed=0, log=lambda *_: None)
    assert scalar_tags(root / "output" / "tensorboard") == {"train/loss", "samples_per_second"}
    container.train(layout, {"epochs": "1"}, seed=0, log=lambda *_: None, tensorboard=tmp_path / "mine")
    assert scalar_tags(tmp_path / "mine") == {"train/loss", "samples_per_second"}
