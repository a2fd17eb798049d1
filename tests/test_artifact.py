"""The model directory: what it holds, that loading gives back the very same model, that a
broken one is refused with ArtifactError, and that nothing is ever unpickled."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import object2vec
from object2vec import Object2Vec, artifact
from object2vec.artifact import ArtifactError
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.sample_data import latent_pairs
from object2vec.serving.predictor import InputError

BASE = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": 6,
    "enc0_vocab_size": 50,
    "enc1_vocab_size": 60,
    "enc1_max_seq_len": 4,
    "enc0_token_embedding_dim": 8,
    "enc_dim": 12,
    "mlp_layers": 1,
    "mlp_dim": 16,
    "epochs": 2,
    "learning_rate": 0.01,
    "comparator_list": "hadamard, abs_diff",
}

VARIANTS = {
    "softmax": {},
    "multiclass": {"num_classes": 3},
    "regression": {"output_layer": "mean_squared_error"},
    "tied": {"tied_token_embedding_weight": True, "enc1_vocab_size": 50, "tied_encoder_weight": False},
    "row_sparse": {"token_embedding_storage_type": "row_sparse"},
    "tied_row_sparse": {
        "tied_token_embedding_weight": True,
        "enc1_vocab_size": 50,
        "tied_encoder_weight": False,
        "token_embedding_storage_type": "row_sparse",
        "optimizer": "adagrad",
    },
    "tied_encoder": {"tied_encoder_weight": True, "enc1_vocab_size": 50},
    "tied_projection": {
        "tied_token_embedding_weight": True,
        "enc1_vocab_size": 50,
        "tied_encoder_projection": True,
    },
    "no_mlp_dropout_buckets": {"mlp_layers": 0, "dropout": 0.2, "bucket_width": 2, "mlp_activation": "tanh"},
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUERY0 = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12], [49]]
QUERY1 = [[7], [8, 9], [1, 2, 3, 4, 5, 6], [49]]


def train(name: str, tmp_path: Path) -> Object2Vec:
    hp = {**BASE, **VARIANTS[name]}
    task = {"regression": "regression", "multiclass": "multiclass"}.get(name, "binary")
    records = latent_pairs(
        600,
        vocab0=50,
        vocab1=hp["enc1_vocab_size"],
        max_len0=6,
        max_len1=4,
        task=task,
        num_classes=hp.get("num_classes", 2),
        seed=1,
    )
    train_path = tmp_path / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Object2Vec(**hp).fit(
        str(train_path), validation=str(train_path), seed=0, log=lambda line: None, progress=False
    )


def outputs(model: Object2Vec) -> list[np.ndarray]:
    return [model.embed(in0=QUERY0), model.embed(in1=QUERY1), model.predict(in0=QUERY0, in1=QUERY1)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Object2Vec, Path]:
    """A trained softmax model and its saved directory."""
    root = tmp_path_factory.mktemp("saved")
    model = train("softmax", root)
    return model, model.save(root / "model")


# --- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_save_load_round_trip_gives_identical_outputs(variant, tmp_path):
    model = train(variant, tmp_path)
    before = outputs(model)
    loaded = object2vec.load(model.save(tmp_path / "model"))
    after = outputs(loaded)
    for old, new in zip(before, after):
        assert new.dtype == np.float32
        np.testing.assert_array_equal(new, old)
    embed0, embed1, predicted = after
    assert embed0.shape == (4, 12) and embed1.shape == (4, 12)
    if variant == "regression":
        assert predicted.shape in ((4,), (4, 1))
    else:
        num_classes = model.hp.num_classes
        assert predicted.shape == (4, num_classes)
        np.testing.assert_allclose(predicted.sum(1), 1, atol=1e-5)
    assert loaded.hp == model.hp and loaded.metrics == pytest.approx(model.metrics)
    if "tied" in variant:
        assert loaded.net.encoder(0).embedding.weight is loaded.net.encoder(1).embedding.weight
    if variant == "tied_encoder":  # one encoder, saved once, answering for both inputs
        assert loaded.net.encoder(0) is loaded.net.encoder(1)
        with safe_open(str(tmp_path / "model" / artifact.WEIGHTS_FILE), "pt") as weights:
            assert not any(key.startswith("encoders.1.") for key in weights.keys())
        short = [0, 1, 3]  # QUERY1[2] is longer than enc1_max_seq_len (4), so in1 truncates it
        np.testing.assert_array_equal(loaded.embed(in0=QUERY1)[short], embed1[short])
        assert not np.array_equal(loaded.embed(in0=QUERY1)[2], embed1[2])


def test_a_model_saved_before_tied_encoder_weight_loads_and_scores_as_before(tmp_path):
    """Two encoders with a tied table, saved by code that had no tied_encoder_weight (no key in
    hyperparameters.json): the default auto must rebuild those two encoders, not one."""
    model = train("tied", tmp_path)
    model_dir = model.save(tmp_path / "model")
    path = model_dir / artifact.HYPERPARAMETERS_FILE
    saved = json.loads(path.read_text())
    assert saved["tied_encoder_weight"] == "False"
    del saved["tied_encoder_weight"]
    path.write_text(json.dumps(saved))
    loaded = object2vec.load(model_dir)
    assert loaded.net.encoder(0) is not loaded.net.encoder(1)
    for old, new in zip(outputs(model), outputs(loaded)):
        np.testing.assert_array_equal(new, old)


def test_loaded_model_can_be_saved_again_unchanged(saved, tmp_path):
    _, model_dir = saved
    again = object2vec.load(model_dir).save(tmp_path / "again")
    assert (again / "hyperparameters.json").read_text() == (model_dir / "hyperparameters.json").read_text()
    first, second = load_file(model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# --- the directory -------------------------------------------------------------------------


def test_directory_contents(saved):
    model, model_dir = saved
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "history.json",
        "hyperparameters.json",
        "metrics.json",
        "model.safetensors",
    ]
    history = json.loads((model_dir / "history.json").read_text())
    assert history == model.result.history  # one record per epoch, as training logged them
    assert [record["epoch"] for record in history] == list(range(1, len(history) + 1))
    assert history[-1].keys() >= {"train:loss", "validation:accuracy", "validation:cross_entropy"}
    hyperparameters = json.loads((model_dir / "hyperparameters.json").read_text())
    assert isinstance(hyperparameters, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in hyperparameters.items())
    assert parse_hyperparameters(hyperparameters) == model.hp
    assert (
        hyperparameters["enc_dim"] == "12"
        and hyperparameters["comparator_list"].replace(" ", "") == "hadamard,abs_diff"
    )
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) == {"validation:accuracy", "validation:cross_entropy"}
    assert metrics == pytest.approx(model.metrics)
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert names == set(model.net.state_dict())


def test_save_before_fit_and_use_before_fit_are_errors(tmp_path):
    model = Object2Vec(BASE)
    with pytest.raises(RuntimeError):
        model.save(tmp_path / "m")
    with pytest.raises(RuntimeError):
        model.embed(in0=[[1]])


# --- model.tar.gz --------------------------------------------------------------------------


def test_archive_and_load_tar_gz(saved, tmp_path):
    model, model_dir = saved
    expected = outputs(model)
    target = artifact.archive(model_dir, tmp_path / "model.tar.gz")
    with tarfile.open(target) as tar:
        assert sorted(tar.getnames()) == [
            "history.json",
            "hyperparameters.json",
            "metrics.json",
            "model.safetensors",
        ]
    for path in (target, tmp_path):  # the archive itself, or a directory holding only it
        for old, new in zip(expected, outputs(object2vec.load(path))):
            np.testing.assert_array_equal(new, old)


def test_archive_inside_the_model_directory(saved, tmp_path):
    model_dir = Path(shutil.copytree(saved[1], tmp_path / "copy"))
    archived = artifact.archive(model_dir)
    assert archived == model_dir / "model.tar.gz"
    with tarfile.open(archived) as tar:
        assert "model.tar.gz" not in tar.getnames()
    np.testing.assert_array_equal(object2vec.load(archived).embed(in0=QUERY0), saved[0].embed(in0=QUERY0))


def test_archive_with_a_subdirectory_is_found(saved, tmp_path):
    target = tmp_path / "model.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for file in saved[1].iterdir():
            tar.add(file, arcname=f"output/{file.name}")
    np.testing.assert_array_equal(object2vec.load(target).embed(in1=QUERY1), saved[0].embed(in1=QUERY1))


@pytest.fixture(params=["filter", "no filter"])
def tar_filter(request, monkeypatch):
    """With tarfile's extraction filters, and as on a Python without them (Debian bookworm's 3.11.2,
    the base of a locally built image)."""
    if request.param == "no filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_a_tar_gz_loads_with_or_without_extraction_filters(saved, tmp_path, tar_filter):
    target = tmp_path / "model.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for file in saved[1].iterdir():
            tar.add(file, arcname=f"output/{file.name}")
    np.testing.assert_array_equal(object2vec.load(target).embed(in1=QUERY1), saved[0].embed(in1=QUERY1))


@pytest.mark.usefixtures("tar_filter")
def test_archive_escaping_its_directory_is_refused(tmp_path):
    target = tmp_path / "evil.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        body = b'{"enc0_max_seq_len": "1", "enc0_vocab_size": "2"}'
        info = tarfile.TarInfo("../../escaped/hyperparameters.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    with pytest.raises(ArtifactError):
        artifact.load(target)
    assert not (tmp_path / "escaped").exists()


# --- broken or mismatched directories: ArtifactError ---------------------------------------


def broken_copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved[1], tmp_path / "broken"))


def test_corrupted_weights_file(saved, tmp_path):
    model_dir = broken_copy(saved, tmp_path)
    (model_dir / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file" * 4)
    with pytest.raises(ArtifactError, match="model.safetensors"):
        object2vec.load(model_dir)


def test_truncated_weights_file(saved, tmp_path):
    model_dir = broken_copy(saved, tmp_path)
    data = (model_dir / "model.safetensors").read_bytes()
    (model_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="model.safetensors"):
        object2vec.load(model_dir)


def test_weights_of_other_shapes(saved, tmp_path):
    model_dir = broken_copy(saved, tmp_path)
    hyperparameters = json.loads((model_dir / "hyperparameters.json").read_text())
    hyperparameters["enc_dim"] = "24"
    (model_dir / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        object2vec.load(model_dir)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_with_missing_or_extra_tensors(saved, tmp_path, change):
    model_dir = broken_copy(saved, tmp_path)
    tensors = load_file(model_dir / "model.safetensors")
    if change == "missing":
        del tensors["head.weight"]
    else:
        tensors["surprise"] = torch.zeros(2)
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(ArtifactError) as err:
        object2vec.load(model_dir)
    assert ("head.weight" if change == "missing" else "surprise") in str(err.value)


@pytest.mark.parametrize("remove", ["model.safetensors", "hyperparameters.json"])
def test_missing_files(saved, tmp_path, remove):
    model_dir = broken_copy(saved, tmp_path)
    (model_dir / remove).unlink()
    with pytest.raises(ArtifactError):
        object2vec.load(model_dir)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ArtifactError):
        object2vec.load(tmp_path)
    with pytest.raises(ArtifactError):
        object2vec.load(tmp_path / "does-not-exist")


def test_hyperparameters_json_not_json(saved, tmp_path):
    model_dir = broken_copy(saved, tmp_path)
    (model_dir / "hyperparameters.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="hyperparameters.json"):
        object2vec.load(model_dir)


def test_metrics_file_is_optional(saved, tmp_path):
    model_dir = broken_copy(saved, tmp_path)
    (model_dir / "metrics.json").unlink()
    assert object2vec.load(model_dir).metrics == {}


# --- never unpickle ------------------------------------------------------------------------


def test_package_source_never_unpickles():
    package = Path(object2vec.__file__).parent
    pattern = re.compile(
        r"\bpickle\b|torch\.load\b|\bdill\b|joblib|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
    )
    offenders = [
        f"{path.relative_to(package)}:{number}: {line.strip()}"
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line) and "never" not in line.lower() and "no pickle" not in line.lower()
    ]
    assert offenders == []


def test_loading_works_with_pickle_and_torch_load_disabled(saved, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model load must never unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, model_dir = saved
    np.testing.assert_array_equal(
        object2vec.load(model_dir).predict(in0=QUERY0, in1=QUERY1), model.predict(in0=QUERY0, in1=QUERY1)
    )


# --- the loaded model's inputs -------------------------------------------------------------


@pytest.mark.parametrize(
    "in0, field",
    [
        ([[1], [50]], "in0"),
        ([[1], []], "in0"),
        ([[1], [1.5]], "in0"),
        ([[1], [True]], "in0"),
        ([[1], 3], "in0"),
    ],
)
def test_bad_inference_input_names_instance_and_field(saved, in0, field):
    loaded = object2vec.load(saved[1])
    with pytest.raises(InputError) as err:
        loaded.embed(in0=in0)
    assert err.value.index == 1 and err.value.field == field and "instance 1" in str(err.value)


def test_inference_truncates_to_max_seq_len(saved):
    loaded = object2vec.load(saved[1])
    long = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    np.testing.assert_array_equal(loaded.embed(in0=[long]), loaded.embed(in0=[long[:6]]))
    assert not np.array_equal(loaded.embed(in0=[long[:6]]), loaded.embed(in0=[long[:5]]))


def test_inference_argument_errors(saved):
    loaded = object2vec.load(saved[1])
    with pytest.raises(InputError):
        loaded.embed(in0=[[1]], in1=[[1]])
    with pytest.raises(InputError):
        loaded.embed()
    with pytest.raises(InputError, match="in0 has 2 sequences but in1 has 1"):
        loaded.predict(in0=[[1], [2]], in1=[[3]])


def test_numpy_inputs_and_per_call_length_cap(saved):
    loaded = object2vec.load(saved[1])
    as_arrays = loaded.predict(in0=np.array([[1, 2, 3], [4, 5, 6]]), in1=[np.array([7]), np.array([8, 9])])
    np.testing.assert_array_equal(as_arrays, loaded.predict(in0=[[1, 2, 3], [4, 5, 6]], in1=[[7], [8, 9]]))
    np.testing.assert_array_equal(loaded.embed(in0=[[1, 2, 3, 4]], max_len=2), loaded.embed(in0=[[1, 2]]))
