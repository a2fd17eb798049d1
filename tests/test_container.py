"""The SageMaker container contract, end to end in a temporary ``/opt/ml``: the image's
entrypoint (``docker/entrypoint train`` / ``serve``, what ``docker run IMAGE train`` runs) trains
from the layout, writes ``output/failure`` and exits non-zero on a bad hyperparameter, and
serves the tarred model on port 8080's stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from object2vec import artifact
from object2vec.cli import main
from object2vec.container import Layout, serve_target
from object2vec.sample_data import latent_pairs, write_jsonl

ENTRYPOINT = Path(__file__).resolve().parents[1] / "docker" / "entrypoint"
#: As SageMaker writes it: every value a string, and the internal keys of the notebooks.
HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "1",
    "enc0_vocab_size": "50",
    "enc1_vocab_size": "60",
    "enc0_token_embedding_dim": "16",
    "enc_dim": "16",
    "mlp_layers": "1",
    "mlp_dim": "32",
    "mlp_activation": "relu",
    "learning_rate": "0.01",
    "epochs": "8",
    "mini_batch_size": "32",
    "_kvstore": "device",
    "_num_gpus": "auto",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_ml_root(root: Path, hyperparameters: dict[str, str]) -> Path:
    """A training container's /opt/ml: config, and the channels as directories of files."""
    records = latent_pairs(1200, latent_dim=2, seed=3)
    write_jsonl(records[:1000], root / "input" / "data" / "train" / "part-0.jsonl")
    write_jsonl(records[1000:1100], root / "input" / "data" / "validation" / "validation.jsonl")
    write_jsonl(records[1100:], root / "input" / "data" / "test" / "test.jsonl")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    return root


def run_entrypoint(*args: str, ml_root: Path, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    """The image's entrypoint, as `docker run IMAGE <args>`, with /opt/ml moved to ``ml_root``."""
    env = {
        **os.environ,
        "OBJECT2VEC_ML_ROOT": str(ml_root),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for variable in ("SM_MODEL_DIR", "SM_OUTPUT_DIR", "SM_INPUT_CONFIG_DIR", "WORLD_SIZE", "RANK"):
        env.pop(variable, None)
    if kwargs.pop("background", False):
        return subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def trained_ml_root(tmp_path_factory) -> Path:
    """One training job through the entrypoint, shared by the tests that read its model."""
    root = make_ml_root(tmp_path_factory.mktemp("ml"), HYPERPARAMETERS)
    done = run_entrypoint("train", "--seed", "0", "--no-progress", ml_root=root)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


# --- the layout ----------------------------------------------------------------------------


def test_layout_paths_follow_the_root_option_then_the_environment(tmp_path):
    assert Layout.find(environ={}).root == Path("/opt/ml")
    assert Layout.find(environ={"OBJECT2VEC_ML_ROOT": str(tmp_path)}).model_dir == tmp_path / "model"
    layout = Layout.find(tmp_path / "explicit", environ={"OBJECT2VEC_ML_ROOT": str(tmp_path)})
    assert layout.hyperparameters_file == tmp_path / "explicit" / "input" / "config" / "hyperparameters.json"
    assert layout.failure_file == tmp_path / "explicit" / "output" / "failure"
    sm = Layout.find(
        tmp_path,
        environ={
            "SM_MODEL_DIR": "/m",
            "SM_OUTPUT_DIR": "/o",
            "SM_INPUT_CONFIG_DIR": "/c",
            "SM_CHANNEL_TRAIN": str(tmp_path),
        },
    )
    assert (sm.model_dir, sm.failure_file, sm.hyperparameters_file) == (
        Path("/m"),
        Path("/o/failure"),
        Path("/c/hyperparameters.json"),
    )
    assert sm.channel("train") == tmp_path and sm.channel("validation") is None  # absent channel
    assert not Layout.find(tmp_path / "nothing", environ={}).is_training_job()


def test_serve_binds_every_interface_only_in_container_mode(tmp_path):
    assert serve_target("model/", None) == ("model/", "127.0.0.1")
    assert serve_target("model/", "0.0.0.0") == ("model/", "0.0.0.0")
    assert serve_target(None, None, str(tmp_path)) == (str(tmp_path / "model"), "0.0.0.0")
    assert serve_target(None, "127.0.0.1", str(tmp_path))[1] == "127.0.0.1"


def test_the_image_runs_the_entrypoint_these_tests_run():
    dockerfile = (ENTRYPOINT.parent / "Dockerfile").read_text()
    assert "COPY docker/entrypoint /usr/local/bin/object2vec-entrypoint" in dockerfile
    assert 'ENTRYPOINT ["object2vec-entrypoint"]' in dockerfile and "EXPOSE 8080" in dockerfile
    script = ENTRYPOINT.read_text()
    assert "exec object2vec train" in script and "exec object2vec serve" in script


# --- train ---------------------------------------------------------------------------------


def test_train_writes_the_model_from_the_layout(trained_ml_root):
    model_dir = trained_ml_root / "model"
    assert {"hyperparameters.json", "model.safetensors", "metrics.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    saved = json.loads((model_dir / "hyperparameters.json").read_text())
    assert saved["mlp_dim"] == "32" and "_kvstore" not in saved
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) == {
        "validation:accuracy",
        "validation:cross_entropy",
        "test:accuracy",
        "test:cross_entropy",
    }
    assert metrics["test:accuracy"] >= 0.8
    assert not (trained_ml_root / "output" / "failure").exists()


def test_train_in_process_takes_key_value_overrides(tmp_path, capsys):
    root = make_ml_root(tmp_path / "ml", {**HYPERPARAMETERS, "epochs": "1"})
    assert main(["train", "--ml-root", str(root), "--seed", "0", "--no-progress", "mlp_dim=8"]) == 0
    assert f"model saved to {root / 'model'}" in capsys.readouterr().out
    assert json.loads((root / "model" / "hyperparameters.json").read_text())["mlp_dim"] == "8"


def test_bad_hyperparameter_writes_the_failure_and_exits_non_zero(tmp_path):
    root = make_ml_root(tmp_path / "ml", {**HYPERPARAMETERS, "mlp_layers": "11"})
    done = run_entrypoint("train", ml_root=root)
    assert done.returncode == 2
    reason = (root / "output" / "failure").read_text().splitlines()[0]
    assert reason.startswith("HyperparameterError:") and "mlp_layers" in reason and "11" in reason
    assert "mlp_layers" in done.stderr
    assert not (root / "model").exists()


def test_missing_train_channel_is_a_failure_too(tmp_path):
    root = make_ml_root(tmp_path / "ml", HYPERPARAMETERS)
    shutil.rmtree(root / "input" / "data" / "train")
    done = run_entrypoint("train", ml_root=root)
    assert done.returncode == 2
    assert "no train channel" in (root / "output" / "failure").read_text()


def test_train_without_data_or_layout_names_both_ways(tmp_path, capsys):
    assert main(["train", "--ml-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--train PATH and --model-dir DIR" in err and str(tmp_path) in err


# --- serve ---------------------------------------------------------------------------------


def test_serve_loads_the_tarred_model_and_answers_ping(trained_ml_root, tmp_path, free_port):
    hosting = tmp_path / "hosting"  # what SageMaker hands an endpoint: model.tar.gz in /opt/ml/model
    (hosting / "model").mkdir(parents=True)
    artifact.archive(trained_ml_root / "model", hosting / "model" / "model.tar.gz")
    port = free_port()
    server = run_entrypoint("serve", "--port", str(port), ml_root=hosting, background=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                ping = httpx.get(f"{url}/ping", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start within 60 s"
                time.sleep(0.2)
        assert ping.status_code == 200
        answer = httpx.post(f"{url}/invocations", json={"instances": [{"in0": [1], "in1": [2]}]})
        assert answer.status_code == 200
        scores = answer.json()["predictions"][0]["scores"]
        assert len(scores) == 2 and sum(scores) == pytest.approx(1, abs=1e-5)
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert "0.0.0.0" in output  # container mode listens on every interface
