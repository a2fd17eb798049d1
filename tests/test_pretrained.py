"""Pretrained token rows from the auxiliary channel: loaded, frozen or trained, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import object2vec
from object2vec import Object2Vec, cli
from object2vec.hyperparameters import HyperparameterError, parse_hyperparameters
from object2vec.sample_data import latent_pairs, write_jsonl
from object2vec.text import TextError
from object2vec.training import build_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM = 8
VOCAB = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, **{f"w{i}": i for i in range(4, 30)}}
IN_FILE = [f"w{i}" for i in range(4, 14)]  # ten vocabulary words have vectors


def write_aux(tmp_path, dim: int = DIM):
    aux = tmp_path / "aux"
    aux.mkdir(exist_ok=True)
    (aux / "vocab.json").write_text(json.dumps(VOCAB))
    rng = np.random.default_rng(0)
    vectors = {w: rng.normal(size=dim).round(4) for w in IN_FILE + ["notinvocab"]}
    (aux / "glove.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    return aux, vectors


def hyperparameters(**extra):
    return {
        "enc0_network": "pooled_embedding",
        "enc0_max_seq_len": "5",
        "enc0_vocab_size": "30",
        "enc0_token_embedding_dim": str(DIM),
        "enc_dim": "8",
        "mlp_layers": "1",
        "mlp_dim": "8",
        "enc0_vocab_file": "vocab.json",
        "enc0_pretrained_embedding_file": "glove.txt",
        "tied_token_embedding_weight": "True",
        "tied_encoder_weight": "False",
        "epochs": "3",
        "learning_rate": "0.01",
        **extra,
    }


def loaded_rows(vectors) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([VOCAB[w] for w in IN_FILE])
    return ids, torch.tensor(np.stack([vectors[w] for w in IN_FILE]), dtype=torch.float32)


def train(tmp_path, **extra) -> Object2Vec:
    data = latent_pairs(400, vocab0=30, vocab1=30, max_len0=5, max_len1=5, seed=1)
    aux, _ = write_aux(tmp_path)
    return Object2Vec(hyperparameters(**extra)).fit(
        write_jsonl(data[:320], tmp_path / "t.jsonl"),
        write_jsonl(data[320:], tmp_path / "v.jsonl"),
        auxiliary=aux,
        seed=0,
        log=lambda _: None,
    )


def test_rows_found_are_loaded_and_counted(tmp_path):
    aux, vectors = write_aux(tmp_path)
    lines: list[str] = []
    net, files = build_network(parse_hyperparameters(hyperparameters()), aux, lines.append)
    ids, expected = loaded_rows(vectors)
    assert torch.equal(net.encoder(0).embedding.weight[ids], expected)
    assert lines == [f"enc0: 10 of {len(VOCAB)} vocabulary tokens found in glove.txt (frozen)"]
    assert [f.name for f in files] == ["vocab.json"]


@pytest.mark.parametrize(
    "extra",
    [
        {"weight_decay": "0.1"},
        {"optimizer": "sgd", "weight_decay": "0.1"},
        {"token_embedding_storage_type": "row_sparse"},
    ],
)
def test_frozen_rows_unchanged_after_training_others_trained(tmp_path, extra):
    _, vectors = write_aux(tmp_path)
    ids, expected = loaded_rows(vectors)
    model = train(tmp_path, **extra)
    table = model.net.encoder(0).embedding.weight.detach()
    assert torch.equal(table[ids], expected)
    others = torch.tensor([i for i in range(1, 30) if i not in set(ids.tolist())])
    torch.manual_seed(0)  # the seed fit used: same initial rows
    untrained = build_network(parse_hyperparameters(hyperparameters()), tmp_path / "aux", lambda _: None)[0]
    assert (table[others] - untrained.encoder(0).embedding.weight[others]).abs().max() > 1e-3

    model.save(tmp_path / "model")  # the saved model holds the pretrained values and the vocabulary
    reloaded = object2vec.load(tmp_path / "model")
    assert torch.equal(reloaded.net.encoder(0).embedding.weight[ids], expected)
    assert json.loads((tmp_path / "model" / "vocab.json").read_text()) == VOCAB


def test_unfrozen_rows_train(tmp_path):
    _, vectors = write_aux(tmp_path)
    ids, expected = loaded_rows(vectors)
    model = train(tmp_path, enc0_freeze_pretrained_embedding="False")
    moved = (model.net.encoder(0).embedding.weight.detach()[ids] - expected).abs().amax(1)
    assert (moved > 1e-3).all()


def test_vocab_file_alone_is_carried_into_the_model(tmp_path):
    aux, _ = write_aux(tmp_path)
    net, files = build_network(parse_hyperparameters(hyperparameters(enc0_pretrained_embedding_file="")), aux)
    assert [f.name for f in files] == ["vocab.json"]


def error_of(tmp_path, aux, **extra) -> str:
    with pytest.raises((TextError, HyperparameterError)) as info:
        build_network(parse_hyperparameters(hyperparameters(**extra)), aux, lambda _: None)
    return str(info.value)


def test_bad_auxiliary_files_give_clear_errors(tmp_path):
    aux, _ = write_aux(tmp_path)
    assert "auxiliary channel" in error_of(tmp_path, None)
    assert "enc0_pretrained_embedding_file=missing.txt" in error_of(
        tmp_path, aux, enc0_pretrained_embedding_file="missing.txt"
    )
    assert "needs enc0_vocab_file" in error_of(tmp_path, aux, enc0_vocab_file="")
    message = error_of(tmp_path, aux, enc0_token_embedding_dim="6")
    assert "glove.txt:1:" in message and "expected 6" in message
    (aux / "glove.txt").write_text("w4 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8\nw5 0.1 x 0.3 0.4 0.5 0.6 0.7 0.8\n")
    assert "glove.txt:2:" in error_of(tmp_path, aux) and "not all numbers" in error_of(tmp_path, aux)
    (aux / "vocab.json").write_text("{not json")
    assert "vocab.json" in error_of(tmp_path, aux) and "not a valid JSON" in error_of(tmp_path, aux)
    (aux / "vocab.json").write_text(json.dumps({"<pad>": 0, "big": 30}))
    assert "outside [0, 30)" in error_of(tmp_path, aux)
    (aux / "vocab.json").write_text(json.dumps({"a": 1, "b": 1}))
    assert "share id 1" in error_of(tmp_path, aux)
    (aux / "vocab.json").write_text(json.dumps(["a", "b"]))
    assert "JSON object" in error_of(tmp_path, aux)


def test_cli_reports_bad_pretrained_file_in_one_line(tmp_path, capsys):
    aux, _ = write_aux(tmp_path, dim=5)
    data = write_jsonl(latent_pairs(20, vocab0=30, vocab1=30, max_len0=3, max_len1=3), tmp_path / "t.jsonl")
    params = [f"{k}={v}" for k, v in hyperparameters().items()]
    code = cli.main(
        ["train", "--train", str(data), "--auxiliary", str(aux), "--model-dir", str(tmp_path / "m"), *params]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "glove.txt:1:" in err and "expected 8" in err


def test_tied_tables_take_enc0s_files_and_refuse_different_enc1_files(tmp_path):
    aux, vectors = write_aux(tmp_path)
    (aux / "other.txt").write_text("w20 " + " ".join(["1"] * DIM) + "\n")
    lines: list[str] = []
    same = hyperparameters(enc1_vocab_file="vocab.json", enc1_pretrained_embedding_file="glove.txt")
    net, files = build_network(parse_hyperparameters(same), aux, lines.append)
    ids, expected = loaded_rows(vectors)
    assert net.encoder(1).embedding is net.encoder(0).embedding
    assert torch.equal(net.encoder(1).embedding.weight[ids], expected)
    assert lines == [f"enc0: 10 of {len(VOCAB)} vocabulary tokens found in glove.txt (frozen)"]
    assert [f.name for f in files] == ["vocab.json"]
    message = error_of(
        tmp_path, aux, enc1_vocab_file="vocab.json", enc1_pretrained_embedding_file="other.txt"
    )
    assert (
        "tied_token_embedding_weight=True" in message
        and "enc1_pretrained_embedding_file=other.txt" in message
    )
    (aux / "vocab1.json").write_text((aux / "vocab.json").read_text())
    message = error_of(tmp_path, aux, enc1_vocab_file="vocab1.json")  # a vocabulary alone is refused too
    assert "enc1_vocab_file=vocab1.json" in message and "enc0_vocab_file=vocab.json" in message
    message = error_of(
        tmp_path,
        aux,
        enc1_vocab_file="vocab.json",
        enc1_pretrained_embedding_file="glove.txt",
        enc1_freeze_pretrained_embedding="False",
    )
    assert "enc1_freeze_pretrained_embedding=False" in message


def test_one_encoder_takes_enc0s_files_and_says_why_enc1_files_are_refused(tmp_path):
    aux, vectors = write_aux(tmp_path)
    net, files = build_network(
        parse_hyperparameters(hyperparameters(tied_encoder_weight="True")), aux, lambda _: None
    )
    ids, expected = loaded_rows(vectors)
    assert net.encoder(1) is net.encoder(0) and torch.equal(net.encoder(1).embedding.weight[ids], expected)
    assert [f.name for f in files] == ["vocab.json"]
    (aux / "other.txt").write_text("w20 " + " ".join(["1"] * DIM) + "\n")
    message = error_of(
        tmp_path,
        aux,
        tied_encoder_weight="True",
        enc1_vocab_file="vocab.json",
        enc1_pretrained_embedding_file="other.txt",
    )
    assert (
        "(implied by tied_encoder_weight=True)" in message
        and "enc1_pretrained_embedding_file=other.txt" in message
    )


def test_words_missing_from_the_file_start_at_the_scale_of_the_loaded_vectors(tmp_path):
    aux, vectors = write_aux(tmp_path)
    net, _ = build_network(parse_hyperparameters(hyperparameters()), aux, lambda _: None)
    ids, loaded = loaded_rows(vectors)
    missing = torch.ones(len(VOCAB), dtype=torch.bool)
    missing[ids] = False
    drawn = net.encoder(0).embedding.weight[missing]
    assert drawn.std().item() == pytest.approx(loaded.std().item(), rel=0.2)
