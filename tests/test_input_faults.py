"""Broken training input: a truncated or corrupt ``.gz``, bytes that are not UTF-8, a 100 MB line,
NaN or infinite labels, an unreadable file in a channel directory. Each stops ``object2vec
train`` with one line ``file:line: what is wrong`` (or ``file: ...``) and exit status 2, never a
traceback; and the line reader under it splits exactly as ``bytes.split`` would."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from object2vec import inputs
from object2vec.cli import main
from object2vec.inputs import LongLine, ReadError, count_lines, read_lines
from object2vec.training import data

GOOD = {"label": 1, "in0": [1], "in1": [2]}
PARAMS = ["enc0_max_seq_len=1", "enc0_vocab_size=50", "enc1_vocab_size=60", "enc_dim=8", "epochs=1"]


def train(train_path: Path, tmp_path: Path, *params: str) -> list[str]:
    return ["train", "--train", str(train_path), "--model-dir", str(tmp_path / "model"), *PARAMS, *params]


def assert_one_line_error(capsys, args: list[str], *expected: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def lines_bytes(records, n: int = 200) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records * n)


def test_a_truncated_gzip_file_names_the_file_and_the_line_where_it_ends(tmp_path, capsys):
    path = tmp_path / "train.jsonl.gz"
    whole = gzip.compress(lines_bytes([GOOD], 5000))
    path.write_bytes(whole[: len(whole) // 2])
    err = assert_one_line_error(
        capsys, train(path, tmp_path), "the gzip data ends early; the file is truncated"
    )
    line = int(err.split(f"{path}:")[1].split(":")[0])
    assert 1 < line <= 5001  # where reading stopped, past the records read
    assert not (tmp_path / "model").exists()


def test_corrupt_gzip_data(tmp_path, capsys):
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(b"this was never gzip data")
    assert_one_line_error(capsys, train(path, tmp_path), f"{path}:1: not valid gzip data")


def test_bytes_that_are_not_utf8(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines_bytes([GOOD], 2) + b'{"label": 1, "in0": [1], "in1": [2], "note": "caf\xe9"}\n')
    assert_one_line_error(capsys, train(path, tmp_path), f"{path}:3: not valid UTF-8 (byte 0xe9 at byte 50")


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + lines_bytes([GOOD], 3))
    assert [number for _, number, _ in data.iter_json_lines(path)] == [1, 2, 3]


def test_a_100_mb_line_is_refused_without_reading_it_into_memory(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    with open(path, "wb") as out:
        out.write(orjson.dumps(GOOD) + b"\n" + b'{"label": 1, "in0": [')
        for _ in range(50):
            out.write(b"1," * (1 << 20))
        out.write(b"1]}\n")
    size = path.stat().st_size - len(orjson.dumps(GOOD)) - 2  # the second line, without newlines
    assert size > 100 << 20
    assert_one_line_error(
        capsys,
        train(path, tmp_path),
        f"{path}:2: the line is {size} bytes, over the 16 MiB a record may take",
    )


@pytest.mark.parametrize(
    "label, output, expected",
    [
        (b"NaN", "softmax", "not valid JSON: NaN and Infinity are not JSON numbers (column 11)"),
        (b"-Infinity", "mean_squared_error", "not valid JSON: NaN and Infinity are not JSON numbers"),
        (b"1e999", "mean_squared_error", "not valid JSON (number is infinity"),
        (b"1e300", "mean_squared_error", "field 'label' 1e+300 is outside the float32 range"),
        (b"0.5", "softmax", "field 'label' must be an integer class in [0, 2), got 0.5"),
    ],
)
def test_labels_that_are_not_finite(tmp_path, capsys, label, output, expected):
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines_bytes([GOOD], 1) + b'{"label": ' + label + b', "in0": [1], "in1": [2]}\n')
    assert_one_line_error(capsys, train(path, tmp_path, f"output_layer={output}"), f"{path}:2: {expected}")


def test_a_directory_with_an_unreadable_file(tmp_path, capsys, monkeypatch):
    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "a.jsonl").write_bytes(lines_bytes([GOOD], 2))
    locked = channel / "b.jsonl"
    locked.write_bytes(lines_bytes([GOOD], 2))
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # as root permissions do not stop reading: refuse it the same way
        real_open = open

        def refusing_open(file, *args, **kwargs):
            if Path(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(inputs, "open", refusing_open, raising=False)
    assert_one_line_error(capsys, train(channel, tmp_path), f"{locked}: cannot read it (Permission denied)")


# --- the line reader -----------------------------------------------------------------------


@given(
    st.lists(st.sampled_from([b"", b"a", b"bb", b"\r", b'{"x": 1}', b"y" * 9]), max_size=12), st.booleans()
)
def test_lines_are_split_as_bytes_split_would(tmp_path_factory, pieces, final_newline):
    body = b"\n".join(pieces) + (b"\n" if final_newline and pieces else b"")
    path = tmp_path_factory.mktemp("lines") / "f.gz"
    path.write_bytes(gzip.compress(body))
    expected = body.split(b"\n")[:-1] if body.endswith(b"\n") else (body.split(b"\n") if body else [])
    limit = 8
    got = list(read_lines(path, limit))
    assert got == [line if len(line) <= limit else LongLine(len(line)) for line in expected]
    assert count_lines(path) == len(expected)


def test_a_long_line_is_skipped_in_chunks_and_reading_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "CHUNK", 7)
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"ok\n" + b"z" * 100 + b"\nnext\n" + b"w" * 30)
    assert list(read_lines(path, 10)) == [b"ok", LongLine(100), b"next", LongLine(30)]


def test_count_lines_reports_a_truncated_file(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(b"a\n" * 1000)[:20])
    with pytest.raises(ReadError, match="truncated"):
        count_lines(path)
