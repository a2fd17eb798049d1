"""The SageMaker container contract, end to end in a temporary ``/opt/ml``: the image's
entrypoint (``docker/entrypoint train`` / ``serve``, what ``docker run IMAGE train`` runs) trains
from the layout, writes ``output/failure`` and exits non-zero on a bad hyperparameter, and
serves the tarred model on port 8080's stand-in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import object2vec
from object2vec import artifact, container
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


#: Variables of the test's own environment that would change what the entrypoint does.
FOREIGN = (
    "SM_MODEL_DIR",
    "SM_OUTPUT_DIR",
    "SM_INPUT_CONFIG_DIR",
    "SM_HOSTS",
    "SM_CURRENT_HOST",
    "WORLD_SIZE",
    "RANK",
)


def run_entrypoint(
    *args: str, ml_root: Path, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess | subprocess.Popen:
    """The image's entrypoint, as `docker run IMAGE <args>`, with /opt/ml moved to ``ml_root``
    and ``env`` added to the environment."""
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in FOREIGN and not k.startswith(("SAGEMAKER_", "OBJECT2VEC_"))
        },
        "OBJECT2VEC_ML_ROOT": str(ml_root),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
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
    (root / "output").mkdir(exist_ok=True)
    (root / "output" / "train.log").write_text(done.stdout + done.stderr)  # what the job's log holds
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
    assert 'exec python3 -m object2vec.container "$@"' in script  # container.launch decides


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
    assert metrics["test:accuracy"] >= 0.85  # the seeded run reaches 0.89
    assert not (trained_ml_root / "output" / "failure").exists()


def readme_metric_definitions() -> list[dict[str, str]]:
    """The ``metric_definitions`` of the README's Estimator, evaluated as the notebook would."""
    readme = (ENTRYPOINT.parents[1] / "README.md").read_text()
    source = re.search(r"metric_definitions=(\[.*?\n    \]),\n", readme, re.S).group(1)
    return eval(f"({source})", {})  # literal lists and a comprehension over literals


def test_the_readme_metric_definitions_read_one_value_per_epoch(trained_ml_root):
    """SageMaker reads a bring-your-own image's metrics with these regexes, line by line: each
    validation metric has a value per epoch, then the saved model's, which is also last."""
    log = (trained_ml_root / "output" / "train.log").read_text()
    series = {d["Name"]: re.findall(d["Regex"], log, re.M) for d in readme_metric_definitions()}
    epochs = len(re.findall(r"^epoch \d+/8 ", log, re.M))
    assert epochs >= 4
    saved = json.loads((trained_ml_root / "model" / "metrics.json").read_text())
    assert len(series["train:loss"]) == epochs
    for name in ("validation:accuracy", "validation:cross_entropy"):
        assert len(series[name]) == epochs + 1 and float(series[name][-1]) == pytest.approx(
            saved[name], rel=1e-5
        )
        assert float(series[name][-1]) in [
            pytest.approx(float(v), rel=1e-5) for v in series[name][:-1]
        ]  # best
    assert [len(series[f"test:{m}"]) for m in ("accuracy", "cross_entropy")] == [1, 1]
    assert not any(series[f"{c}:mean_squared_error"] for c in ("validation", "test"))  # a classifier


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


def test_a_bad_record_writes_the_failure_with_its_file_and_line_and_exits_2(tmp_path):
    root = make_ml_root(tmp_path / "ml", HYPERPARAMETERS)
    part = root / "input" / "data" / "train" / "part-0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    lines[2] = '{"label": 1, "in0": [3], "in1": [60]}\n'  # enc1_vocab_size is 60
    part.write_text("".join(lines))
    done = run_entrypoint("train", ml_root=root)
    assert done.returncode == 2
    reason = (root / "output" / "failure").read_text().splitlines()[0]
    assert reason.startswith("DataError:") and f"{part}:3:" in reason and "in1" in reason
    assert f"{part}:3:" in done.stderr and "Traceback" not in done.stderr
    assert not (root / "model").exists()


def test_an_unexpected_exception_writes_its_traceback_to_the_failure(tmp_path, monkeypatch):
    """A bug (not a user error) still leaves SageMaker a reason: the exception, then its traceback."""
    from object2vec import Object2Vec

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(Object2Vec, "fit", broken_fit)
    root = make_ml_root(tmp_path / "ml", HYPERPARAMETERS)
    with pytest.raises(RuntimeError, match="the disk went away"):
        main(["train", "--ml-root", str(root), "--no-progress"])
    failure = (root / "output" / "failure").read_text()
    assert failure.splitlines()[0] == "RuntimeError: the disk went away"
    assert "Traceback (most recent call last):" in failure and "in broken_fit" in failure
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


def wait_for_ping(server: subprocess.Popen, url: str, seconds: float = 180) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, server.stdout.read()
        try:
            return httpx.get(f"{url}/ping", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, f"the server did not start within {seconds} s"
            time.sleep(0.2)


def test_serve_loads_the_tarred_model_configured_by_sagemakers_variables(
    trained_ml_root, tmp_path, free_port
):
    """An endpoint's container (model.tar.gz in /opt/ml/model) run as a transform job with
    max_payload=20 and max_concurrent_transforms=2 and no accept: it listens on
    SAGEMAKER_BIND_TO_PORT with two workers, takes a 10 MB mini-batch and answers each JSON Lines
    line with a line, and says so at /execution-parameters and when it starts."""
    hosting = tmp_path / "hosting"
    (hosting / "model").mkdir(parents=True)
    artifact.archive(trained_ml_root / "model", hosting / "model" / "model.tar.gz")
    port = free_port()
    environ = {
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "2",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
    }
    # --host: tests listen on loopback only (container mode's 0.0.0.0 is tested with serve_target)
    server = run_entrypoint("serve", "--host", "127.0.0.1", ml_root=hosting, env=environ, background=True)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_ping(server, url).status_code == 200
        answer = httpx.post(f"{url}/invocations", json={"instances": [{"in0": [1], "in1": [2]}]})
        assert answer.status_code == 200
        scores = answer.json()["predictions"][0]["scores"]
        assert len(scores) == 2 and sum(scores) == pytest.approx(1, abs=1e-5)
        assert httpx.get(f"{url}/execution-parameters").json() == {
            "MaxConcurrentTransforms": 2,
            "BatchStrategy": "MultiRecord",
            "MaxPayloadInMB": 20,
        }
        line = json.dumps({"in0": [7] * 330, "in1": [5]}).encode() + b"\n"
        batch = line * (10 * 1024 * 1024 // len(line) + 1)
        answer = httpx.post(
            f"{url}/invocations",
            content=batch,
            headers={"Content-Type": "application/jsonlines"},
            timeout=120,
        )
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(
            "application/jsonlines"
        )
        lines = answer.content.splitlines()
        assert len(lines) == batch.count(b"\n") and len(json.loads(lines[-1])["scores"]) == 2
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert '"MaxConcurrentTransforms":2' in output and f"on port {port}" in output


# --- the launch: every GPU, every host -------------------------------------------------------


def layout_with_hosts(root: Path, current: str, hosts=("algo-1", "algo-2"), **config) -> Layout:
    """A training job's layout on ``current``, as SageMaker describes a job of several instances."""
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    resource = {"current_host": current, "hosts": list(hosts), **config}
    (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(resource))
    return Layout.find(root, environ={})


def command_options(launch: container.Launch) -> dict[str, str]:
    """torchrun's ``--name=value`` options of a launch."""
    return dict(arg[2:].split("=", 1) for arg in launch.command if arg.startswith("--") and "=" in arg)


@pytest.mark.parametrize(
    "variable, gpus, processes",
    [
        (None, 0, 1),  # a CPU machine: one process
        (None, 1, 1),
        (None, 8, 8),  # every GPU by default, as the reference
        ("1", 8, 1),  # the opt-out
        ("gpu", 4, 4),
        ("auto", 4, 4),
        ("3", 0, 3),  # CPU processes (gloo) when asked
    ],
)
def test_train_runs_one_process_per_gpu_unless_told(tmp_path, variable, gpus, processes):
    environ = {} if variable is None else {"OBJECT2VEC_NPROC_PER_NODE": variable}
    launch = container.launch(["train", "--seed", "0"], Layout.find(tmp_path, environ=environ), lambda: gpus)
    train = ["-m", "object2vec", "train", "--seed", "0"]
    if processes == 1:
        assert launch.command == [sys.executable, *train]
    else:
        assert launch.command[:3] == [sys.executable, "-m", "torch.distributed.run"]
        assert "--standalone" in launch.command and command_options(launch)["nproc_per_node"] == str(
            processes
        )
        assert launch.command[-len(train) :] == train


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_process_count_is_refused(tmp_path, value):
    with pytest.raises(container.ContainerError, match="OBJECT2VEC_NPROC_PER_NODE"):
        container.launch(
            ["train"], Layout.find(tmp_path, environ={"OBJECT2VEC_NPROC_PER_NODE": value}), lambda: 0
        )


def test_several_hosts_join_one_static_rendezvous(tmp_path):
    for current, rank in (("algo-1", "0"), ("algo-2", "1"), ("algo-3", "2")):
        layout = layout_with_hosts(tmp_path / current, current, hosts=("algo-1", "algo-2", "algo-3"))
        launch = container.launch(["train"], layout, lambda: 4)
        assert command_options(launch) == {
            "nnodes": "3",
            "node_rank": rank,
            "nproc_per_node": "4",
            "master_addr": "algo-1",
            "master_port": "29500",
        }
        assert "--standalone" not in launch.command and launch.environ == {}
        assert launch.command[-3:] == ["-m", "object2vec", "train"]


def test_the_toolkit_variables_and_overrides_win(tmp_path):
    layout_with_hosts(tmp_path, "algo-1", network_interface_name="eth0")
    environ = {
        "SM_HOSTS": '["algo-1", "algo-2"]',
        "SM_CURRENT_HOST": "algo-2",
        "OBJECT2VEC_MASTER_ADDR": "127.0.0.1",
        "OBJECT2VEC_MASTER_PORT": "6001",
    }
    launch = container.launch(["train"], Layout.find(tmp_path, environ=environ), lambda: 0)
    options = command_options(launch)
    assert (options["node_rank"], options["master_addr"], options["master_port"]) == (
        "1",
        "127.0.0.1",
        "6001",
    )
    from_file = container.launch(["train"], Layout.find(tmp_path, environ={}), lambda: 0)
    assert command_options(from_file)["node_rank"] == "0"
    assert from_file.environ == {"GLOO_SOCKET_IFNAME": "eth0", "NCCL_SOCKET_IFNAME": "eth0"}  # the instance's


def test_one_host_or_serve_or_another_command(tmp_path):
    single = layout_with_hosts(tmp_path, "algo-1", hosts=("algo-1",))
    assert container.launch(["train"], single, lambda: 0).command == [
        sys.executable,
        "-m",
        "object2vec",
        "train",
    ]
    assert container.launch([], single).command == [sys.executable, "-m", "object2vec", "serve"]
    assert container.launch(["serve", "--workers", "2"], single).command[-3:] == ["serve", "--workers", "2"]
    assert container.launch(["object2vec", "hyperparameters"], single).command == [
        "object2vec",
        "hyperparameters",
    ]


@pytest.mark.parametrize(
    "resource, message",
    [
        ("{not json", "invalid JSON"),
        ('{"current_host": "algo-9", "hosts": ["algo-1", "algo-2"]}', "algo-9"),
        ('{"current_host": "algo-1", "hosts": []}', "non-empty list"),
        ('{"current_host": "algo-1", "hosts": ["algo-1", "algo-1"]}', "once"),
    ],
)
def test_a_broken_resource_config_fails_the_job_in_one_line(tmp_path, resource, message, monkeypatch, capsys):
    """container.main, the entrypoint's body, stops before launching anything."""
    root = make_ml_root(tmp_path / "ml", HYPERPARAMETERS)
    (root / "input" / "config" / "resourceconfig.json").write_text(resource)
    monkeypatch.setenv("OBJECT2VEC_ML_ROOT", str(root))
    for variable in FOREIGN:
        monkeypatch.delenv(variable, raising=False)
    assert container.main(["train"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert message in (root / "output" / "failure").read_text()


def test_the_entrypoint_fails_a_job_that_cannot_start(tmp_path):
    root = make_ml_root(tmp_path / "ml", HYPERPARAMETERS)
    done = run_entrypoint("train", ml_root=root, env={"OBJECT2VEC_NPROC_PER_NODE": "many"})
    assert done.returncode == 2 and done.stderr.startswith(
        "object2vec container: error: OBJECT2VEC_NPROC_PER_NODE"
    )
    assert "OBJECT2VEC_NPROC_PER_NODE='many'" in (root / "output" / "failure").read_text()


#: Two processes step with twice the batch, half as often: more epochs at a higher rate.
TWO_HOST_PARAMS = ("epochs=16", "learning_rate=0.02", "early_stopping_patience=5")


def test_two_hosts_train_as_one_job(tmp_path, free_port):
    """Two "instances" of a SageMaker training job, each an entrypoint with its own /opt/ml and
    the same two-host resource config; the first host's name is mapped to loopback. They train
    data-parallel (gloo, CPU) on disjoint halves, the first host writes the model, and it
    loads and scores."""
    port, shards = str(free_port()), tmp_path / "shards"
    roots = {}
    for host in ("algo-1", "algo-2"):
        roots[host] = make_ml_root(tmp_path / host, HYPERPARAMETERS)  # FullyReplicated: same data
        layout_with_hosts(roots[host], host)
    environ = {
        "OBJECT2VEC_MASTER_ADDR": "127.0.0.1",
        "OBJECT2VEC_MASTER_PORT": port,
        "OBJECT2VEC_NPROC_PER_NODE": "1",
        "OBJECT2VEC_SHARD_LOG_DIR": str(shards),
        "GLOO_SOCKET_IFNAME": "lo",  # the processes talk over loopback only
    }
    hosts = {
        host: run_entrypoint(
            "train",
            "--seed",
            "0",
            "--no-progress",
            *TWO_HOST_PARAMS,
            ml_root=root,
            background=True,
            env=environ,
        )
        for host, root in roots.items()
    }
    outputs = {host: process.communicate(timeout=240)[0] for host, process in hosts.items()}
    for host, process in hosts.items():
        assert process.returncode == 0, f"{host}:\n{outputs[host]}"
    assert "--nnodes=2 --node_rank=0" in outputs["algo-1"] and "--node_rank=1" in outputs["algo-2"]

    # Rank 0, on the first host, prints the metrics and writes the model; the other host neither.
    assert "model saved to" in outputs["algo-1"] and "validation:accuracy=" in outputs["algo-1"]
    assert "validation:accuracy=" not in outputs["algo-2"] and not (roots["algo-2"] / "model").exists()
    halves = [set(json.loads((shards / f"rank{r}.json").read_text())["train"]["indices"]) for r in (0, 1)]
    assert not halves[0] & halves[1] and len(halves[0]) == len(halves[1]) == 500

    model = object2vec.load(roots["algo-1"] / "model", device="cpu")
    records = latent_pairs(1200, latent_dim=2, seed=3)[1100:]  # the test channel
    scores = model.predict([r["in0"] for r in records], [r["in1"] for r in records])
    accuracy = float(np.mean(scores.argmax(1) == np.array([r["label"] for r in records])))
    assert accuracy >= 0.8
    saved = json.loads((roots["algo-1"] / "model" / "metrics.json").read_text())
    assert accuracy == pytest.approx(saved["test:accuracy"], abs=1e-9)


def test_channels_sharded_by_s3_key_are_split_within_each_host(tmp_path):
    layout = layout_with_hosts(tmp_path, "algo-2")
    channels = {
        "train": {"S3DistributionType": "ShardedByS3Key", "TrainingInputMode": "File"},
        "validation": {"S3DistributionType": "FullyReplicated", "TrainingInputMode": "File"},
    }
    (tmp_path / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(channels))
    assert container.launch(["train"], layout, lambda: 2).environ == {
        "OBJECT2VEC_NODE_SHARDED_CHANNELS": "train"
    }
    one_host = layout_with_hosts(tmp_path, "algo-1", hosts=("algo-1",))
    assert container.launch(["train"], one_host, lambda: 2).environ == {}  # one host holds every part


def test_row_sparse_tables_train_on_every_gpu_like_dense_ones(tmp_path, capsys):
    """row_sparse tables train with several processes (only the used rows are exchanged), so
    such a job takes every GPU by default, as a dense one does, with nothing to warn about."""
    root = make_ml_root(tmp_path, {**HYPERPARAMETERS, "token_embedding_storage_type": "row_sparse"})
    launch = container.launch(["train"], Layout.find(root, environ={}), lambda: 4)
    assert command_options(launch)["nproc_per_node"] == "4"
    assert capsys.readouterr().err == ""
