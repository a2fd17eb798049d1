"""Text preparation: the tokenizer, vocabularies, pretrained-vector files, and the ``vocab`` /
``tokenize`` commands that turn raw text into the JSON Lines the trainer reads."""

from __future__ import annotations

import json

import orjson
import pytest

from object2vec import text
from object2vec.cli import main
from object2vec.text import TextError


def test_tokenize_lowercases_normalises_and_splits_punctuation():
    assert text.tokenize("Don't stop!") == ["don", "'", "t", "stop", "!"]
    assert text.tokenize("  A man,  3 dogs.\tCafé ") == ["a", "man", ",", "3", "dogs", ".", "café"]
    # NFKC: full-width letters and digits become their ASCII forms.
    assert text.tokenize("ＨＥＬＬＯ １２") == ["hello", "12"]
    assert text.tokenize("") == []


def test_tokenize_is_deterministic():
    sentence = "The quick brown fox -- jumps over 2 lazy dogs?!"
    assert all(text.tokenize(sentence) == text.tokenize(sentence) for _ in range(3))


def test_vocab_reserves_special_ids_and_orders_by_count_then_alphabet():
    vocab = text.build_vocab(["b a c", "a b", "a", "d"])
    assert vocab == {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3, "a": 4, "b": 5, "c": 6, "d": 7}
    assert sorted(vocab.values()) == list(range(len(vocab)))


def test_vocab_min_count_and_max_size():
    texts = ["a a a b b c", "b d"]
    assert list(text.build_vocab(texts, min_count=2))[4:] == ["a", "b"]  # a:3 b:3 -> alphabetical
    assert list(text.build_vocab(texts, max_size=6))[4:] == ["a", "b"]
    assert len(text.build_vocab(texts, max_size=4)) == 4
    with pytest.raises(TextError, match="reserved"):
        text.build_vocab(texts, max_size=3)


def test_encode_maps_unknown_words_to_unk():
    vocab = text.build_vocab(["a man plays"])
    assert text.encode("A man sings", vocab) == [vocab["a"], vocab["man"], 1]
    assert text.encode("man", vocab, add_boundaries=True) == [2, vocab["man"], 3]
    assert text.encode("", vocab) == [1]


def test_vocab_file_round_trip(tmp_path):
    vocab = text.build_vocab(["ünïcode words", "words"])
    assert text.read_vocab(text.write_vocab(vocab, tmp_path / "v.json")) == vocab


@pytest.mark.parametrize("body, message", [
    ("{not json", "not a valid JSON vocabulary"),
    ("[1, 2]", "non-empty JSON object"),
    ('{"a": -1}', "non-negative integers"),
    ('{"a": "1"}', "non-negative integers"),
    ('{"a": 1.5}', "non-negative integers"),
    ('{"a": 1, "b": 1}', "share id 1"),
    ('{"a": 0, "b": 10}', r"outside \[0, 10\)"),
])
def test_bad_vocabulary_files_name_the_file(tmp_path, body, message):
    path = tmp_path / "vocab.json"
    path.write_text(body)
    with pytest.raises(TextError, match=message) as caught:
        text.read_vocab(path, vocab_size=10)
    assert str(path) in str(caught.value)


def test_pretrained_file_header_skipped_and_bad_width_names_line(tmp_path):
    good = tmp_path / "vectors.txt"
    good.write_text("3 2\nman 0.5 -1\n<pad> 9 9\nzebra 1 1\ndog 2 3e-1\n")
    rows = text.pretrained_rows({"<pad>": 0, "<unk>": 1, "man": 4, "dog": 5}, good, dim=2)
    assert rows.found == 2 and rows.ids.tolist() == [4, 5]  # <pad> never loaded, zebra not in the vocabulary
    assert rows.vectors.ravel().tolist() == pytest.approx([0.5, -1.0, 2.0, 0.3])
    bad = tmp_path / "bad.txt"
    bad.write_text("man 0.5 -1\ndog 1 2 3\n")
    with pytest.raises(TextError, match=r"bad.txt:2: 3 values for 'dog', expected 2 \(encX_token_embedding_dim\)"):
        text.pretrained_rows({"dog": 5}, bad, dim=2)
    bad.write_text("man 0.5 x\n")
    with pytest.raises(TextError, match="bad.txt:1: .*not all numbers"):
        text.pretrained_rows({"man": 4}, bad, dim=2)


PAIRS_TSV = ("pair_ID\tsentence_A\tsentence_B\tjudgment\n"
             "1\tA man is playing.\tA man plays!\tENTAILMENT\n"
             "2\tThe dog sleeps\tNo dog is awake\tCONTRADICTION\n")


def _read_jsonl(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_vocab_and_tokenize_commands_on_tsv(tmp_path, capsys):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS_TSV)
    vocab_file, train = tmp_path / "vocab.json", tmp_path / "train.jsonl"
    assert main(["vocab", str(pairs), "--fields", "sentence_A,sentence_B", "--output", str(vocab_file)]) == 0
    vocab = json.loads(vocab_file.read_text())
    assert len(vocab) == 16 and vocab["<pad>"] == 0 and vocab["a"] == 4  # "a" and "dog" twice: alphabetical
    assert "encX_vocab_size=16" in capsys.readouterr().out
    assert main(["tokenize", str(pairs), "--vocab", str(vocab_file), "--output", str(train), "--text0", "sentence_A",
                 "--text1", "sentence_B", "--label", "judgment", "--classes", "ENTAILMENT,NEUTRAL,CONTRADICTION",
                 "--max-len", "4"]) == 0
    records = _read_jsonl(train)
    v = vocab
    assert records == [
        {"label": 0, "in0": [v["a"], v["man"], v["is"], v["playing"]], "in1": [v["a"], v["man"], v["plays"], v["!"]]},
        {"label": 2, "in0": [v["the"], v["dog"], v["sleeps"]], "in1": [v["no"], v["dog"], v["is"], v["awake"]]},
    ]


def test_tokenize_jsonl_with_numeric_labels_and_single_text_inference(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"q": "red apple", "d": "green apple", "score": 3.5}\n\n{"q": "Blue", "d": "red", "score": 1}\n')
    vocab_file, out = tmp_path / "vocab.json", tmp_path / "out.jsonl"
    assert main(["vocab", str(pairs), "--fields", "q,d", "--output", str(vocab_file), "--min-count", "2"]) == 0
    vocab = json.loads(vocab_file.read_text())
    assert list(vocab)[4:] == ["apple", "red"]
    assert main(["tokenize", str(pairs), "--vocab", str(vocab_file), "--output", str(out), "--text0", "q",
                 "--text1", "d", "--label", "score"]) == 0
    assert _read_jsonl(out) == [{"label": 3.5, "in0": [5, 4], "in1": [1, 4]}, {"label": 1, "in0": [1], "in1": [5]}]
    assert main(["tokenize", str(pairs), "--vocab", str(vocab_file), "--output", str(out), "--text0", "d"]) == 0
    assert _read_jsonl(out) == [{"in0": [1, 4]}, {"in0": [5]}]


def test_vocab_from_plain_text_lines(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Hello world.\n\nhello again\n")
    assert main(["vocab", str(corpus), "--output", str(tmp_path / "v.json")]) == 0
    assert list(json.loads((tmp_path / "v.json").read_text()))[4:] == ["hello", ".", "again", "world"]


@pytest.mark.parametrize("extra, message", [
    (["--text1", "missing", "--label", "judgment", "--classes", "ENTAILMENT,CONTRADICTION"],
     "pairs.tsv:2: missing field 'missing'"),
    (["--text1", "sentence_B", "--label", "judgment", "--classes", "ENTAILMENT"],
     "pairs.tsv:3: label 'CONTRADICTION' is not one of ENTAILMENT"),
    (["--text1", "sentence_B", "--label", "judgment"], "pairs.tsv:2: label 'ENTAILMENT' is not a number"),
    (["--label", "judgment"], "needs two texts"),
])
def test_tokenize_errors_name_file_line_and_field(tmp_path, capsys, extra, message):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS_TSV)
    vocab_file = text.write_vocab(text.build_vocab(["a man"]), tmp_path / "vocab.json")
    code = main(["tokenize", str(pairs), "--vocab", str(vocab_file), "--output", str(tmp_path / "o.jsonl"),
                 "--text0", "sentence_A", *extra])
    assert code != 0
    assert message in capsys.readouterr().err


def test_tokenize_bad_jsonl_line_names_file_and_line(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"q": "a"}\n{"q": \n')
    vocab_file = text.write_vocab(text.build_vocab(["a"]), tmp_path / "vocab.json")
    assert main(["tokenize", str(pairs), "--vocab", str(vocab_file), "--output", str(tmp_path / "o.jsonl"),
                 "--text0", "q"]) != 0
    assert "pairs.jsonl:2: not valid JSON" in capsys.readouterr().err
