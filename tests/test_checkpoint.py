"""Checkpoints and resume: a training process killed (SIGKILL) in the middle of an epoch and
started again with the same command and checkpoint directory ends with the very weights (bit for
bit, on a CPU with one thread) of a run never stopped, for every optimizer, row_sparse tables,
dropout, negative sampling, bucketing, early stopping and two torchrun processes; checkpoints of
other hyperparameters or data are refused; at most two are kept; nothing is pickled."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from object2vec import Object2Vec, container
from object2vec.cli import main
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.sample_data import latent_pairs, write_jsonl
from object2vec.training import checkpoint
from object2vec.training.checkpoint import CheckpointError
from object2vec.training.data import epoch_size, load_pairs
from object2vec.training.distributed import shard_indices

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill driver forks"),
]

BASE = [
    "enc0_network=pooled_embedding",
    "enc0_max_seq_len=4",
    "enc1_max_seq_len=4",
    "enc0_vocab_size=40",
    "enc1_vocab_size=40",
    "enc0_token_embedding_dim=8",
    "enc_dim=8",
    "mlp_layers=1",
    "mlp_dim=8",
    "mini_batch_size=16",
    "epochs=3",
    "dropout=0.2",
    "negative_sampling_rate=1",
    "bucket_width=1",
    "learning_rate=0.01",
]
EVERY_STEP = "1e-9"  # minutes: a checkpoint after every step, so a kill resumes mid-epoch

#: (name, extra hyperparameters, --checkpoint-every-minutes, steps after which each successive
#: process kills itself). An epoch here takes about 28 steps (with its negatives), 3 epochs in all.
SCENARIOS = [
    ("adam", [], EVERY_STEP, [40]),
    ("adam_epoch_ends_killed_twice", [], None, [40, 35]),
    ("row_sparse_adam", ["token_embedding_storage_type=row_sparse"], EVERY_STEP, [81]),  # 2 optimizers
    ("adagrad", ["optimizer=adagrad"], EVERY_STEP, [40]),
    ("sgd", ["optimizer=sgd"], EVERY_STEP, [40]),
    ("rmsprop", ["optimizer=rmsprop"], EVERY_STEP, [40]),
    ("adadelta", ["optimizer=adadelta"], EVERY_STEP, [40]),
    ("early_stop", ["early_stopping_patience=1", "early_stopping_tolerance=0.1"], EVERY_STEP, [40]),
]

#: Runs in a child process: imports and warms up torch once (one short training run), then forks
#: one process per training run, which is fast. A run given ``kill_at`` kills itself with SIGKILL
#: right after its kill_at-th optimizer step (a global optimizer hook). Prints one JSON line of
#: outcomes: per scenario, each run's exit status and the checkpoints left after it.
DRIVER = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from torch.optim.optimizer import register_optimizer_step_post_hook
from object2vec.cli import main
from object2vec.hyperparameters import parse_hyperparameters

scenarios, train, validation, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
os.fsync = lambda fd: None  # durability is not what these kills test; they only get faster

def run(args, kill_at=None):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if kill_at:
                steps = [0]
                def hook(optimizer, hook_args, hook_kwargs):
                    steps[0] += 1
                    if steps[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                register_optimizer_step_post_hook(hook)
            code = main(args)
        finally:
            sys.stdout.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)

warm_up = ["train", "--train", train, "--no-progress", "--model-dir", str(out / "warm-up"), *scenarios[0][1]]
assert main(warm_up + ["epochs=1"]) == 0  # the forked runs then find torch's lazy imports done
outcomes = {}
for name, params, every, kills in scenarios:
    common = ["train", "--train", train, "--validation", validation, "--seed", "0", "--no-progress", *params]
    checkpoints = out / name / "checkpoints"
    def resumable(model_dir):
        every_args = ["--checkpoint-every-minutes", every] if every else []
        target = ["--model-dir", str(out / name / model_dir)]
        return common + target + ["--checkpoint-dir", str(checkpoints), *every_args]
    base = run(common + ["--model-dir", str(out / name / "uninterrupted")])
    runs = []
    for kill_at in [*kills, None]:
        status = run(resumable("resumed"), kill_at)
        runs.append([status, sorted(p.name for p in checkpoints.glob("checkpoint-*"))])
    outcomes[name] = {"uninterrupted": base, "runs": runs, "again": run(resumable("again"))}
print(json.dumps(outcomes))
"""


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    records = latent_pairs(300, 40, 40, max_len0=4, max_len1=4, latent_dim=2, seed=3)
    return write_jsonl(records[:200], root / "train.jsonl"), write_jsonl(records[200:], root / "val.jsonl")


def same_model(a: Path, b: Path) -> None:
    """Bit-identical weights and identical metrics."""
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def position(name: str) -> tuple[int, int]:
    epochs, batches = re.match(r"checkpoint-(\d+)-(\d+)$", name).groups()
    return int(epochs), int(batches)


@pytest.fixture(scope="module")
def killed_runs(channels, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("runs")
    scenarios = [(name, BASE + params, every, kills) for name, params, every, kills in SCENARIOS]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(scenarios), str(channels[0]), str(channels[1]), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_killed_and_restarted_training_ends_with_the_uninterrupted_weights(killed_runs, scenario):
    outcomes, out = killed_runs
    name, _, every, kills = scenario
    result = outcomes[name]
    assert result["uninterrupted"] == 0 and result["again"] == 0
    *killed, (final_status, kept) = result["runs"]
    assert [status for status, _ in killed] == [-9] * len(kills) and final_status == 0
    for _, left in killed:
        assert 1 <= len(left) <= checkpoint.KEEP
        epochs, batches = position(left[-1])
        assert epochs >= 1  # killed in epoch 2 or later: there was something to resume
        assert (batches > 0) == (every is not None)  # resumed mid-epoch when checkpointing within epochs
    assert len(kept) <= checkpoint.KEEP
    if name == "early_stop":  # training had ended early when it was resumed the last time
        state = json.loads((out / name / "checkpoints" / kept[-1] / "state.json").read_text())
        assert state["stopped"] and state["epochs"] < 3
    same_model(out / name / "uninterrupted", out / name / "resumed")
    same_model(out / name / "uninterrupted", out / name / "again")  # a finished run resumes at its end


def test_a_checkpoint_holds_safetensors_and_json_only_and_loads_without_pickle(
    killed_runs, channels, tmp_path, monkeypatch, capsys
):
    _, out = killed_runs
    source = out / "adam" / "checkpoints"
    newest = checkpoint.checkpoints(source)[-1]
    assert sorted(p.name for p in newest.iterdir()) == [
        "best.safetensors",
        "state.json",
        "training.safetensors",
        "weights.safetensors",
    ]
    state = json.loads((newest / "state.json").read_text())
    assert state["hyperparameters"]["optimizer"] == "adam" and state["data"]["train"]["records"] == 200
    tensors = load_file(newest / "training.safetensors")
    assert tensors["rng.0.torch"].dtype == torch.uint8 and "optimizer.0.0.exp_avg" in tensors

    def refuse(*_args, **_kwargs):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    train, validation = channels
    args = ["train", "--train", str(train), "--validation", str(validation), "--seed", "0", "--no-progress"]
    assert main([*args, *BASE, "--model-dir", str(tmp_path / "m"), "--checkpoint-dir", str(source)]) == 0
    assert "resuming from" in capsys.readouterr().out
    same_model(out / "adam" / "uninterrupted", tmp_path / "m")


# --- two torchrun processes ----------------------------------------------------------------

#: torchrun runs this script on every rank: rank 0 kills itself with SIGKILL after its
#: ``KILL_AT_STEP``-th optimizer step (when set), then torchrun stops the other rank.
KILLER = """
import os, signal, sys
from torch.optim.optimizer import register_optimizer_step_post_hook
from object2vec.cli import main
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.training import distributed

kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
if kill_at and os.environ["RANK"] == "0":
    steps = [0]
    def hook(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    register_optimizer_step_post_hook(hook)
code = main(sys.argv[1:])
distributed.exit_worker(code)
sys.exit(code)
"""
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def torchrun(script: Path, args: list[str], kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", KILL_AT_STEP=str(kill_at))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    return subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=600)


def steps_per_epoch_of_two_ranks(train: Path) -> int:
    """What every rank takes per epoch under torchrun: the fewer batches of the two shards."""
    data = load_pairs(train, parse_hyperparameters(dict(p.split("=") for p in BASE)))
    shards = [data.subset(shard_indices(len(data), rank, 2, equal=True)) for rank in (0, 1)]
    return min(math.ceil(epoch_size(shard, 1) / 16) for shard in shards)


def test_two_torchrun_processes_killed_and_restarted_end_with_the_uninterrupted_weights(channels, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    records = latent_pairs(400, 40, 40, max_len0=4, max_len1=4, latent_dim=2, seed=4)
    train, validation = write_jsonl(records, tmp_path / "train.jsonl"), channels[1]
    steps = steps_per_epoch_of_two_ranks(train)
    assert steps > checkpoint.SYNC_EVERY + 2
    kill_at = steps + checkpoint.SYNC_EVERY + 2  # in epoch 2, after its first timed checkpoint
    common = ["train", "--train", str(train), "--validation", str(validation), "--seed", "0", "--no-progress"]
    common += ["--device", "cpu", *BASE]
    resumable = ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every-minutes", EVERY_STEP]
    done = torchrun(script, common + ["--model-dir", str(tmp_path / "uninterrupted")])
    assert done.returncode == 0, done.stderr[-3000:]

    killed = torchrun(script, common + ["--model-dir", str(tmp_path / "resumed"), *resumable], kill_at)
    assert killed.returncode != 0 and not (tmp_path / "resumed").exists()
    left = [position(p.name) for p in checkpoint.checkpoints(tmp_path / "ckpt")]
    assert left == [(1, 0), (1, checkpoint.SYNC_EVERY)]  # the newest is within epoch 2

    resumed = torchrun(script, common + ["--model-dir", str(tmp_path / "resumed"), *resumable])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming from") == 1  # printed by rank 0; every rank resumed
    same_model(tmp_path / "uninterrupted", tmp_path / "resumed")


# --- refusals, retention, damage -----------------------------------------------------------


def small_fit(train, validation, checkpoints: Path, log=None, **changes):
    hp = {p.split("=")[0]: p.split("=")[1] for p in BASE} | {"epochs": "2"} | changes
    return Object2Vec(hp).fit(
        train, validation, seed=0, progress=False, log=log or (lambda _: None), checkpoint_dir=checkpoints
    )


def test_a_checkpoint_of_other_hyperparameters_or_data_is_refused(channels, tmp_path, capsys):
    train, validation = channels
    small_fit(train, validation, tmp_path / "ckpt")
    with pytest.raises(
        CheckpointError, match=r"other hyperparameters \(learning_rate=0.01 there, 0.02 now\)"
    ):
        small_fit(train, validation, tmp_path / "ckpt", learning_rate="0.02")
    fewer = write_jsonl(latent_pairs(199, 40, 40, max_len0=4, max_len1=4, seed=3), tmp_path / "fewer.jsonl")
    with pytest.raises(CheckpointError, match=r"other data \(train: 200 records \w+ there, 199 records"):
        small_fit(fewer, validation, tmp_path / "ckpt")
    args = [
        "train",
        "--train",
        str(fewer),
        "--validation",
        str(validation),
        "--model-dir",
        str(tmp_path / "m"),
    ]
    assert main([*args, *BASE, "epochs=2", "--checkpoint-dir", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "written for other data" in err and "--checkpoint-dir" in err


@pytest.mark.parametrize(
    "added_later", ["weight_average_epochs", "weight_decay_scope", "tied_encoder_projection"]
)
def test_a_checkpoint_written_before_a_hyperparameter_existed_resumes(channels, tmp_path, added_later):
    """A checkpoint without a hyperparameter added since was trained with its default: it
    belongs to a run that leaves that hyperparameter at its default, and to no other."""
    train, validation = channels
    small_fit(train, validation, tmp_path / "ckpt")
    first, last = checkpoint.checkpoints(tmp_path / "ckpt")  # after epochs 1 and 2
    shutil.rmtree(last)
    state = json.loads((first / "state.json").read_text())
    del state["hyperparameters"][added_later]
    (first / "state.json").write_text(json.dumps(state))
    lines: list[str] = []
    resumed = small_fit(train, validation, tmp_path / "ckpt", log=lines.append)
    assert any("resuming from" in line for line in lines)
    assert [r["epoch"] for r in resumed.result.history] == [1, 2]
    changed = {
        "weight_average_epochs": "3",
        "weight_decay_scope": "token_tables",
        "tied_encoder_projection": "True",
    }
    with pytest.raises(CheckpointError, match=rf"other hyperparameters \({added_later}="):
        small_fit(train, validation, tmp_path / "ckpt", **{added_later: changed[added_later]})


def test_the_newest_two_are_kept_and_a_damaged_one_is_passed_over(channels, tmp_path):
    train, validation = channels
    small_fit(train, validation, tmp_path / "ckpt", epochs="4")
    kept = checkpoint.checkpoints(tmp_path / "ckpt")
    assert [p.name for p in kept] == ["checkpoint-00003-000000000", "checkpoint-00004-000000000"]
    assert [p.name for p in (tmp_path / "ckpt").iterdir() if p.name not in {k.name for k in kept}] == []
    (kept[-1] / "training.safetensors").write_bytes(b"damaged")
    lines = []
    small_fit(train, validation, tmp_path / "ckpt", log=lines.append, epochs="4")
    assert any(line.startswith(f"warning: checkpoint {kept[-1]} cannot be read") for line in lines)
    assert f"resuming from {kept[0]}: 3 epoch(s) done" in lines
    for path in checkpoint.checkpoints(tmp_path / "ckpt"):
        (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no checkpoint can be read"):
        small_fit(train, validation, tmp_path / "ckpt", epochs="4")


def test_checkpoint_options_are_checked_before_training(channels, tmp_path, capsys):
    train, validation = channels
    args = ["train", "--train", str(train), "--model-dir", str(tmp_path / "m"), *BASE]
    assert main([*args, "--checkpoint-dir", str(tmp_path / "m" / "ckpt")]) == 2
    assert "inside --model-dir" in capsys.readouterr().err
    assert main([*args, "--checkpoint-dir", str(tmp_path / "c"), "--checkpoint-every-minutes", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main([*args, "--checkpoint-every-minutes", "5"]) == 2
    assert "needs a checkpoint directory" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_container_checkpoints_to_opt_ml_checkpoints_when_it_exists(channels, tmp_path):
    root = tmp_path / "ml"
    (root / "input" / "data" / "train").mkdir(parents=True)
    (root / "input" / "data" / "train" / "train.jsonl").write_bytes(channels[0].read_bytes())
    (root / "checkpoints").mkdir()
    overrides = {p.split("=")[0]: p.split("=")[1] for p in BASE} | {"epochs": "1"}
    container.train(container.Layout.find(root), overrides, seed=0, progress=False, log=lambda _: None)
    assert [p.name for p in checkpoint.checkpoints(root / "checkpoints")] == ["checkpoint-00001-000000000"]
    assert (root / "model" / "model.safetensors").is_file()
