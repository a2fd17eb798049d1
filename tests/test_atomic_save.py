"""Atomic saves: a process killed (SIGKILL) at any line of ``artifact`` while it saves a model over
another and archives it leaves a directory that loads as exactly the old model or exactly the new
one, never a mix; the same for the in-place fallback (where the directory is then briefly not a
model at all) and for the atomic file writer used by every output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from object2vec import artifact
from object2vec.artifact import ArtifactError
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill driver forks")

HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "1",
    "enc0_vocab_size": "50",
    "enc1_vocab_size": "60",
    "enc0_token_embedding_dim": "8",
    "enc_dim": "8",
    "mlp_layers": "1",
    "mlp_dim": "8",
}

#: Runs in a child process, for each mode (a directory swapped in whole, then the file-by-file
#: fallback): resets ``target`` to the old model, then forks a process that saves the new model
#: over it and archives it, killing itself with SIGKILL at the k-th line of artifact.py it
#: executes (the lines that only flush to disk aside); k = 1, 2, ... until a save completes.
#: After each kill the whole parent directory (target and any work directories beside it) is
#: copied to ``results/<mode>/k``.
DRIVER = r"""
import os, shutil, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from object2vec import artifact

old, new, work, results = map(Path, sys.argv[1:5])
target = work / "model"
hp, net, metrics = artifact.load(new)
extra = sorted(p for p in new.iterdir() if p.suffix == ".json" and p.name.startswith("vocab"))
os.fsync = lambda fd: None  # what a kill leaves does not depend on it (a power cut's would)
FLUSHING = ("fsync_tree", "fsync_directory")  # change nothing a reader sees: not kill points

def save_new(kill_at):
    lines = 0
    def local(frame, event, arg):
        nonlocal lines
        if event == "line":
            lines += 1
            if lines == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return local
    def calls(frame, event, arg):
        code = frame.f_code
        return local if code.co_filename == artifact.__file__ and code.co_name not in FLUSHING else None
    sys.settrace(calls)
    artifact.save(target, hp, net, metrics, extra)
    artifact.archive(target)
    sys.settrace(None)

for mode in ("swap", "in_place"):
    if mode == "in_place":
        artifact._swappable = lambda root: False
    kill_at = 0
    while True:
        kill_at += 1
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(old, target)
        pid = os.fork()
        if pid == 0:
            try:
                save_new(kill_at)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status):
            break
        assert os.WTERMSIG(status) == signal.SIGKILL, status
        shutil.copytree(work, results / mode / f"{kill_at:04d}", symlinks=True)
"""


def make_model(root: Path, seed: int, vocab_files: dict[str, str], **changes: str) -> Path:
    """A model directory of random weights (``seed``), its own metrics and vocabulary files, and
    an archive of itself; models made with equal shapes load each other's weights."""
    torch.manual_seed(seed)
    hp = parse_hyperparameters({**HYPERPARAMETERS, **changes})
    sources = root / f"sources{seed}"
    sources.mkdir(parents=True)
    for name, text in vocab_files.items():
        (sources / name).write_text(text)
    model_dir = artifact.save(
        root / f"model{seed}", hp, Object2VecNet(hp), {"seed": seed}, sorted(sources.iterdir())
    )
    artifact.archive(model_dir)
    return model_dir


def visible_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")}


def model_files(directory: Path) -> dict[str, bytes]:
    """What makes the model (the archive aside, checked on its own)."""
    return {k: v for k, v in visible_files(directory).items() if k != artifact.ARCHIVE_FILE}


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    old = make_model(root, 1, {"vocab.json": '{"a": 0}', "vocab_old.json": "{}"}, learning_rate="0.01")
    new = make_model(root, 2, {"vocab.json": '{"b": 0}', "vocab1.json": '{"c": 1}'}, mlp_activation="relu")
    assert model_files(old) != model_files(new)
    return old, new


@pytest.fixture(scope="module")
def killed_saves(old_and_new, tmp_path_factory) -> Path:
    """``results/<mode>/<k>``: what each kill left, for both modes."""
    old, new = old_and_new
    root = tmp_path_factory.mktemp("kills")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(old), str(new), str(root / "work"), str(root / "results")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return root / "results"


def check_crashed_state(state: Path, old: Path, new: Path) -> str:
    """``"old"`` or ``"new"`` (the directory loads as exactly that model, its archive too if
    present) or ``"none"`` (not a model directory); fails on anything mixed."""
    target = state / "model"
    if not (target / artifact.HYPERPARAMETERS_FILE).is_file():
        with pytest.raises(ArtifactError, match="not a model directory"):
            artifact.load(target)
        return "none"
    artifact.load(target)  # loads, and is one of the two models file for file
    files = model_files(target)
    which = "old" if files == model_files(old) else "new"
    assert files == model_files(new if which == "new" else old), f"{state.name}: a mixed model directory"
    archive = target / artifact.ARCHIVE_FILE
    if archive.exists():
        with tarfile.open(archive) as tar:
            packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert packed == files, f"{state.name}: the archive holds another model than the directory"
    return which


def test_killed_at_every_line_of_a_save_leaves_the_old_or_the_new_model(old_and_new, killed_saves):
    old, new = old_and_new
    states = sorted((killed_saves / "swap").iterdir())
    assert len(states) > 40  # a kill at every line it ran
    seen = [check_crashed_state(state, old, new) for state in states]
    assert "none" not in seen  # a reader always finds a model
    assert seen.index("new") > 0 and seen[0] == "old" and seen[-1] == "new"
    # a save after the last crash cleans up the leftovers beside the directory and succeeds
    crashed = states[seen.index("new") - 1]
    assert any(p.name.startswith(".model.") for p in crashed.iterdir())
    hp, net, metrics = artifact.load(new)
    artifact.save(crashed / "model", hp, net, metrics, [new / "vocab.json", new / "vocab1.json"])
    assert [p.name for p in crashed.iterdir()] == ["model"]
    assert model_files(crashed / "model") == model_files(new)


def test_killed_during_an_in_place_save_is_never_a_mixed_model(old_and_new, killed_saves):
    """A directory that cannot be swapped (a mount point): replaced file by file, with
    hyperparameters.json removed first and written last."""
    old, new = old_and_new
    states = sorted((killed_saves / "in_place").iterdir())
    assert len(states) > 40
    seen = [check_crashed_state(state, old, new) for state in states]
    assert {"old", "none", "new"} == set(seen)
    assert seen == sorted(seen, key=["old", "none", "new"].index)  # old, then none, then new


def test_saving_refuses_a_directory_that_is_not_a_model(old_and_new, tmp_path):
    hp, net, metrics = artifact.load(old_and_new[1])
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="holds files but no hyperparameters.json"):
        artifact.save(tmp_path, hp, net, metrics)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(ArtifactError, match="not a directory"):
        artifact.save(tmp_path / "notes.txt", hp, net, metrics)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert artifact.load(artifact.save(empty, hp, net, metrics))[2] == metrics


def test_a_saved_directory_keeps_the_usual_permissions(old_and_new, tmp_path):
    hp, net, metrics = artifact.load(old_and_new[1])
    umask = os.umask(0o022)
    try:
        saved = artifact.save(tmp_path / "model", hp, net, metrics)
    finally:
        os.umask(umask)
    assert saved.stat().st_mode & 0o777 == 0o755


def test_an_atomic_file_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    artifact.atomic_write_bytes(path, b'{"old": 1}')
    with pytest.raises(RuntimeError), artifact.atomic_file(path) as handle:
        handle.write(b'{"new": ')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_bytes()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left
