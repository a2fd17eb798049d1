"""Batch transform streams: the reader stays a bounded number of batches ahead of the writer, a
batch holds at most ``max_records`` lines, ``.gz`` and CRLF inputs answer exactly as plain LF
ones, and a truncated ``.gz`` input fails the command (exit 2) without leaving an output."""

from __future__ import annotations

import gzip

import orjson
import pytest
from conftest import train_short_sequence_model

from object2vec import cli
from object2vec.inputs import ReadError
from object2vec.sample_data import latent_pairs
from object2vec.serving import transform as transform_module
from object2vec.serving.transform import transform

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 30


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    trained = train_short_sequence_model(root, VOCAB, dim=4, records=100)
    return trained, trained.save(root / "model")


def mixed_lines(n: int) -> list[bytes]:
    """Pairs, single inputs of either side and a bad line now and then."""
    records = latent_pairs(n, VOCAB, VOCAB, max_len0=4, max_len1=4, seed=7)
    lines = []
    for i, r in enumerate(records):
        kind = i % 4
        body = {0: {"in0": r["in0"], "in1": r["in1"]}, 1: {"in0": r["in0"]}, 2: {"in1": r["in1"]}}.get(kind)
        lines.append(orjson.dumps(body) if body else b'{"in0": [' + str(VOCAB).encode() + b"]}")
    return lines


def run(model, source, out, **options):
    return transform(model.predictor, source, out, progress=False, log=lambda *_: None, **options)


def test_the_reader_stays_a_bounded_number_of_batches_ahead(model, tmp_path, monkeypatch):
    source = tmp_path / "big.jsonl"
    source.write_bytes(b"\n".join(mixed_lines(3000)) + b"\n")
    pulled, ahead = [0], []
    stream = transform_module.stream_lines

    def counting(path, limit):
        for line in stream(path, limit):
            pulled[0] += 1
            yield line

    answer = transform_module.answer_batch

    def answering(predictor, batch, job):
        ahead.append(pulled[0] - batch[0][0])  # lines read beyond the first line of this batch
        return answer(predictor, batch, job)

    monkeypatch.setattr(transform_module, "stream_lines", counting)
    monkeypatch.setattr(transform_module, "answer_batch", answering)
    summary = run(model[0], source, tmp_path / "out", max_records=100, concurrency=2)
    assert summary.lines == 3000 and len(ahead) == 30
    assert max(ahead) < (2 * 2 + 1) * 100  # the window (2 x concurrency batches) and the one being read


def test_gzip_and_crlf_inputs_answer_as_the_plain_file(model, tmp_path):
    lines = mixed_lines(400)
    (tmp_path / "in").mkdir()
    plain = tmp_path / "in" / "a.jsonl"
    plain.write_bytes(b"\n".join(lines))  # no final newline
    (tmp_path / "in" / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    (tmp_path / "in" / "c.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    summary = run(model[0], tmp_path / "in", tmp_path / "out", max_records=7)
    outputs = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert sorted(outputs) == ["a.jsonl.out", "b.jsonl.gz.out", "c.jsonl.out"]
    assert outputs["a.jsonl.out"] == outputs["b.jsonl.gz.out"] == outputs["c.jsonl.out"]
    assert outputs["a.jsonl.out"].count(b"\n") == 400 and summary.errors == 3 * 100
    again = run(model[0], tmp_path / "in", tmp_path / "out")  # the .gz counts as complete too
    assert len(again.skipped) == 3 and not again.written


def test_a_truncated_gzip_input_fails_without_an_output(model, tmp_path, capsys):
    source = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"\n".join(mixed_lines(2000)))
    source.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ReadError, match=r"cut.jsonl.gz:\d+: the gzip data ends early"):
        run(model[0], source, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # neither .out nor .partial
    args = [
        "transform",
        "--model-dir",
        str(model[1]),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "o"),
    ]
    assert cli.main([*args, "--no-progress"]) == 2
    assert "truncated" in capsys.readouterr().err
