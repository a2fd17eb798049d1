"""``object2vec train`` / ``hyperparameters`` / ``quickstart`` end to end, in process through
``object2vec.cli.main`` and once as a real ``python -m object2vec`` subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import object2vec
from object2vec.cli import main
from object2vec.hyperparameters import SCHEMA
from object2vec.sample_data import latent_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A SageMaker-style hyperparameters.json: every value a string, plus internal keys.
HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "1",
    "enc0_vocab_size": "50",
    "enc1_vocab_size": "60",
    "enc0_token_embedding_dim": "16",
    "enc_dim": "32",
    "mlp_layers": "1",
    "mlp_dim": "64",
    "mlp_activation": "relu",
    "learning_rate": "0.01",
    "epochs": "10",
    "early_stopping_patience": "5",
    "early_stopping_tolerance": "0.001",
    "_kvstore": "device",
    "_num_gpus": "auto",
}


@pytest.fixture
def channels(tmp_path, write_jsonl) -> dict[str, Path]:
    records = latent_pairs(2400, latent_dim=2, seed=5)
    hp_file = tmp_path / "hyperparameters.json"
    hp_file.write_text(json.dumps(HYPERPARAMETERS))
    return {
        "train": write_jsonl(records[:2000], "train/part.jsonl"),
        "validation": write_jsonl(records[2000:2200], "validation.jsonl.gz"),
        "test": write_jsonl(records[2200:], "test.jsonl"),
        "hyperparameters": hp_file,
    }


def train_args(
    channels: dict[str, Path], model_dir: Path, *params: str, progress: str | None = "--no-progress"
) -> list[str]:
    args = [
        "train",
        "--train",
        str(channels["train"]),
        "--validation",
        str(channels["validation"]),
        "--test",
        str(channels["test"]),
        "--hyperparameters",
        str(channels["hyperparameters"]),
        "--model-dir",
        str(model_dir),
        "--seed",
        "0",
        *params,
    ]
    return args + [progress] if progress else args


def assert_trained_model_dir(model_dir: Path, printed: dict[str, float], enc_dim: int) -> None:
    assert {"hyperparameters.json", "model.safetensors", "metrics.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    saved_hp = json.loads((model_dir / "hyperparameters.json").read_text())
    assert saved_hp["enc_dim"] == str(enc_dim) and saved_hp["mlp_dim"] == "64"  # override, and file value
    assert not any(key.startswith("_") for key in saved_hp)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (
        set(metrics)
        == set(printed)
        == {"validation:accuracy", "validation:cross_entropy", "test:accuracy", "test:cross_entropy"}
    )
    assert printed == pytest.approx(metrics, rel=1e-5)
    assert metrics["test:accuracy"] >= 0.93  # the seeded run (enc_dim 16) reaches 0.955
    model = object2vec.load(model_dir)
    assert model.embed(in1=[[1], [2]]).shape == (2, enc_dim)


# --- train ---------------------------------------------------------------------------------


def test_train_in_process(channels, tmp_path, capsys, printed_metrics):
    model_dir = tmp_path / "model"
    assert main(train_args(channels, model_dir, "enc_dim=16")) == 0
    out, err = capsys.readouterr()
    assert err == ""  # --no-progress: plain lines only, on stdout
    assert re.search(r"^epoch 1/10 ", out, re.M)
    assert_trained_model_dir(model_dir, printed_metrics(out), 16)
    assert any(line.startswith("model saved to") and str(model_dir) in line for line in out.splitlines())


def test_train_same_seed_same_metrics(channels, tmp_path, capsys):
    for name in ("a", "b"):
        assert main(train_args(channels, tmp_path / name, "epochs=2")) == 0
    capsys.readouterr()
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("a", "b")]
    assert metrics[0] == metrics[1]


def test_train_as_a_subprocess(channels, tmp_path, printed_metrics):
    model_dir = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "object2vec", *train_args(channels, model_dir, "enc_dim=16", progress=None)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "\r" not in done.stderr  # not a terminal: no progress bar
    assert_trained_model_dir(model_dir, printed_metrics(done.stdout), 16)


def test_progress_bar_on_request(channels, tmp_path, capsys):
    assert main(train_args(channels, tmp_path / "m", "epochs=1", progress="--progress")) == 0
    assert "epoch 1/1" in capsys.readouterr().err


# --- user errors: exit 2 and one line ------------------------------------------------------


def assert_user_error(capsys, args: list[str], *expected: str) -> str:
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("object2vec train: error:"), err
    assert "Traceback" not in err
    for part in expected:
        assert part in lines[0], (part, err)
    return lines[0]


@pytest.mark.parametrize(
    "param, expected",
    [
        ("enc_dims=16", ["enc_dims", "16"]),
        ("enc_dim=2", ["enc_dim", "2", "4", "10000"]),
        ("learning_rate=fast", ["learning_rate", "fast"]),
        ("optimizer=momentum", ["optimizer", "momentum", "adam"]),
        ("enc_dim", ["key=value", "enc_dim"]),
    ],
)
def test_bad_hyperparameters_exit_2(channels, tmp_path, capsys, param, expected):
    assert_user_error(capsys, train_args(channels, tmp_path / "model", param), *expected)
    assert not (tmp_path / "model").exists()


def test_bad_data_exit_2_with_file_and_line(channels, tmp_path, capsys, write_jsonl):
    good = {"label": 1, "in0": [1], "in1": [2]}
    bad = write_jsonl([good, good, {"label": 1, "in0": [1], "in1": [60]}], "bad.jsonl")
    args = train_args(channels, tmp_path / "model")
    args[args.index("--validation") + 1] = str(bad)
    assert_user_error(capsys, args, f"{bad}:3:", "in1")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(
    "problem", ["missing_train", "missing_hp_file", "bad_hp_file", "no_train_arg", "sparse_rmsprop"]
)
def test_other_user_errors_exit_2(channels, tmp_path, capsys, problem):
    args = train_args(channels, tmp_path / "model")
    if problem == "missing_train":
        args[args.index("--train") + 1] = str(tmp_path / "nowhere.jsonl")
    elif problem == "missing_hp_file":
        args[args.index("--hyperparameters") + 1] = str(tmp_path / "nowhere.json")
    elif problem == "bad_hp_file":
        channels["hyperparameters"].write_text("{not json")
    elif problem == "no_train_arg":
        del args[args.index("--train") : args.index("--train") + 2]
    else:
        args += ["token_embedding_storage_type=row_sparse", "optimizer=rmsprop"]
    assert_user_error(capsys, args)


def test_user_error_in_a_subprocess_is_one_line(channels, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "object2vec", *train_args(channels, tmp_path / "m", "enc_dims=16")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().count("\n") == 0 and "enc_dims" in done.stderr and "Traceback" not in done.stderr
    )


# --- other commands ------------------------------------------------------------------------


def test_hyperparameters_command_prints_the_table(capsys):
    assert main(["hyperparameters"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[0].strip().strip("`"): line for line in out.splitlines() if "|" in line}
    assert set(SCHEMA) <= set(rows)
    assert "4096" in rows["enc_dim"] and "0.0004" in rows["learning_rate"] and "hcnn" in rows["enc0_network"]


def test_quickstart(tmp_path, capsys, printed_metrics):
    model_dir = tmp_path / "quick"
    assert main(["quickstart", "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr().out
    metrics = printed_metrics(out)
    assert metrics["validation:accuracy"] >= 0.94  # the seeded run reaches 0.967
    model = object2vec.load(model_dir)
    scores = model.predict(in0=[[1], [2]], in1=[[1], [2]])
    assert scores.shape == (2, 2) and np.allclose(scores.sum(1), 1, atol=1e-5)
