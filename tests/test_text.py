"""Text preparation: tokenizer, vocabulary, GloVe reading, the vocab and tokenize commands."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from object2vec import cli
from object2vec.text import (
    RESERVED,
    TextError,
    build_vocab,
    encode,
    pretrained_rows,
    read_vocab,
    tokenize,
    tokenize_file,
    write_vocab,
)


def test_tokenizer_is_simple_and_deterministic():
    assert tokenize("Don't stop, A man is   playing!") == [
        "don",
        "'",
        "t",
        "stop",
        ",",
        "a",
        "man",
        "is",
        "playing",
        "!",
    ]
    assert tokenize("Ｆｕｌｌｗｉｄｔｈ Café 42") == ["fullwidth", "café", "42"]
    assert tokenize("  ") == []


def test_vocab_reserves_ids_orders_by_count_then_alphabet():
    vocab = build_vocab(["b a b c", "c b d", "e"])
    assert [vocab[t] for t in RESERVED] == [0, 1, 2, 3]
    assert list(vocab)[4:] == ["b", "c", "a", "d", "e"]
    assert list(build_vocab(["b a b c", "c b d", "e"], min_count=2))[4:] == ["b", "c"]
    assert len(build_vocab(["b a b c", "c b d"], max_size=6)) == 6
    with pytest.raises(TextError, match="reserved"):
        build_vocab(["a"], max_size=3)


def test_encode_maps_unknown_words_and_boundaries():
    vocab = build_vocab(["a man runs"])
    assert encode("A man flies", vocab) == [vocab["a"], vocab["man"], 1]
    assert encode("a", vocab, add_boundaries=True) == [2, vocab["a"], 3]
    assert encode("", vocab) == [1]


def test_vocab_round_trip_and_errors(tmp_path):
    vocab = build_vocab(["x y z"])
    assert read_vocab(write_vocab(vocab, tmp_path / "v.json")) == vocab
    (tmp_path / "bad.json").write_text(json.dumps({"a": -1}))
    with pytest.raises(TextError, match=r"bad.json: token 'a' has id -1"):
        read_vocab(tmp_path / "bad.json")
    with pytest.raises(TextError, match="not found"):
        read_vocab(tmp_path / "missing.json")


def test_pretrained_rows_skip_header_pad_and_unknown_tokens(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("3 2\n<pad> 9 9\nman 0.5 -1\nzebra 1 1\nman 7 7\n")
    rows = pretrained_rows({"<pad>": 0, "<unk>": 1, "man": 2}, path, 2)
    assert rows.found == 1 and rows.ids.tolist() == [2] and np.allclose(rows.vectors, [[0.5, -1]])
    path.write_text("man 0.5 -1 3\n")
    with pytest.raises(TextError, match=r"vectors.txt:1: 3 values for 'man', expected 2"):
        pretrained_rows({"man": 2}, path, 2)
    path.write_text("man 0.5 nan\n")
    with pytest.raises(TextError, match="vectors.txt:1: .* not all finite"):
        pretrained_rows({"man": 2}, path, 2)


def write_tsv(path, rows):
    path.write_text("id\tA\tB\tlabel\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_vocab_and_tokenize_commands(tmp_path, capsys):
    tsv = write_tsv(
        tmp_path / "pairs.tsv", [(1, "A dog runs", "A cat sleeps", "YES"), (2, "Dogs bark", "A dog", "NO")]
    )
    assert cli.main(["vocab", str(tsv), "--fields", "A,B", "--output", str(tmp_path / "vocab.json")]) == 0
    assert "vocabulary of 11 tokens" in capsys.readouterr().out
    vocab = read_vocab(tmp_path / "vocab.json")
    assert (
        cli.main(
            [
                "tokenize",
                str(tsv),
                "--vocab",
                str(tmp_path / "vocab.json"),
                "--output",
                str(tmp_path / "train.jsonl"),
                "--text0",
                "A",
                "--text1",
                "B",
                "--label",
                "label",
                "--classes",
                "NO,YES",
            ]
        )
        == 0
    )
    lines = [orjson.loads(x) for x in (tmp_path / "train.jsonl").read_bytes().splitlines()]
    assert lines[0] == {
        "label": 1,
        "in0": [vocab["a"], vocab["dog"], vocab["runs"]],
        "in1": [vocab["a"], vocab["cat"], vocab["sleeps"]],
    }
    assert lines[1]["label"] == 0
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text('{"text": "a dog barks loudly"}\n')
    assert (
        cli.main(
            [
                "tokenize",
                str(jsonl),
                "--vocab",
                str(tmp_path / "vocab.json"),
                "--output",
                str(tmp_path / "infer.jsonl"),
                "--text0",
                "text",
                "--max-len",
                "3",
            ]
        )
        == 0
    )
    assert orjson.loads((tmp_path / "infer.jsonl").read_bytes()) == {
        "in0": [vocab["a"], vocab["dog"], 1]
    }  # barks: unknown


def test_tokenize_errors_name_file_and_line(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "pairs.tsv", [(1, "a", "b", "YES"), (2, "a", "b", "MAYBE")])
    write_vocab(build_vocab(["a b"]), tmp_path / "v.json")
    args = [
        "tokenize",
        str(tsv),
        "--vocab",
        str(tmp_path / "v.json"),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--text0",
        "A",
        "--text1",
        "B",
        "--label",
        "label",
    ]
    assert cli.main([*args, "--classes", "NO,YES"]) == 2
    assert "pairs.tsv:3: label 'MAYBE' is not one of NO, YES" in capsys.readouterr().err
    assert cli.main(args) == 2
    assert "pairs.tsv:2: label 'YES' is not a number" in capsys.readouterr().err
    with pytest.raises(TextError, match="pairs.tsv:2: missing field 'C'"):
        tokenize_file(tsv, tmp_path / "o.jsonl", build_vocab(["a"]), text0="C")


def test_vocab_command_reads_plain_text_one_text_per_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Hello world.\n\nhello again\n")
    assert cli.main(["vocab", str(corpus), "--output", str(tmp_path / "v.json")]) == 0
    assert list(read_vocab(tmp_path / "v.json"))[4:] == ["hello", ".", "again", "world"]
