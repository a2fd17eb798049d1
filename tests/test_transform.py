"""Batch transform: one output line per input line in order, error lines, payload batching,
strategies, concurrency, directories, resuming, and the command's exit status."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from conftest import direct_embeddings, direct_scores, train_short_sequence_model

import object2vec
from object2vec import cli
from object2vec.inputs import LongLine
from object2vec.sample_data import latent_pairs
from object2vec.serving import transform as transform_module
from object2vec.serving.transform import TransformError, plan_batches, transform

VOCAB = 60


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("transform")
    trained = train_short_sequence_model(root, VOCAB, dim=8, records=200, mini_batch_size="64")
    return trained.save(root / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return object2vec.load(model_dir, device="cpu")


BAD_LINE = 5


def pairs_file(tmp_path, n: int = 12):
    """``n`` pair lines, the labels of training data left in, with a broken line in the middle."""
    records = latent_pairs(n, VOCAB, VOCAB, max_len0=4, max_len1=4, seed=3)
    lines = [orjson.dumps(r) for r in records]
    lines[BAD_LINE] = b'{"in0": [1, 2], "in1": [-7]}'
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "in" / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, records


def read_out(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    "strategy, payload_mb, concurrency",
    [("MultiRecord", 6, 1), ("MultiRecord", 100 / 2**20, 2), ("SingleRecord", 6, 3)],
)
def test_one_output_line_per_input_line_in_order_with_the_bad_line_marked(
    model, tmp_path, strategy, payload_mb, concurrency
):
    source, records = pairs_file(tmp_path)
    summary = transform(
        model.predictor,
        source,
        tmp_path / "out",
        strategy=strategy,
        max_payload_mb=payload_mb,
        concurrency=concurrency,
        progress=False,
        log=lambda *_: None,
    )
    out = read_out(tmp_path / "out" / "pairs.jsonl.out")
    assert len(out) == len(records) and summary.lines == len(records)
    assert summary.errors == 1 and not summary.ok
    assert out[BAD_LINE] == {"error": f"line {BAD_LINE + 1}: 'in1' token ID -7 is outside [0, {VOCAB})"}
    good = [i for i in range(len(records)) if i != BAD_LINE]
    expected = model.predict([records[i]["in0"] for i in good], [records[i]["in1"] for i in good])
    np.testing.assert_allclose(np.float32([out[i]["scores"] for i in good]), expected, rtol=1e-6)
    network = direct_scores(model.net, [records[i]["in0"] for i in good], [records[i]["in1"] for i in good])
    np.testing.assert_allclose(np.float32([out[i]["scores"] for i in good]), network, rtol=1e-5, atol=1e-6)


def test_embeddings_blank_lines_and_oversized_records(model, tmp_path):
    big = b'{"in1": [' + b"3, " * 400 + b"3]}"
    source = tmp_path / "embed.jsonl"
    source.write_bytes(b'{"in0": [4, 5]}\n\n{"in1": [9]}\n' + big + b'\nnot json\n{"in1": [7, 8, 9]}')
    summary = transform(
        model.predictor,
        source,
        tmp_path / "out",
        max_payload_mb=1000 / 2**20,
        progress=False,
        log=lambda *_: None,
    )
    out = read_out(tmp_path / "out" / "embed.jsonl.out")
    assert len(out) == 6 and summary.errors == 3
    np.testing.assert_allclose(np.float32(out[0]["embeddings"]), model.embed(in0=[[4, 5]])[0], rtol=1e-6)
    np.testing.assert_allclose(
        np.float32([out[2]["embeddings"], out[5]["embeddings"]]), model.embed(in1=[[9], [7, 8, 9]]), rtol=1e-6
    )
    np.testing.assert_allclose(  # in1 lines through enc1 itself, in0 lines through enc0
        np.float32([out[2]["embeddings"], out[5]["embeddings"]]),
        direct_embeddings(model.net, 1, [[9], [7, 8, 9]]),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.float32(out[0]["embeddings"]), direct_embeddings(model.net, 0, [[4, 5]])[0], rtol=1e-5, atol=1e-6
    )
    assert out[1]["error"] == "line 2: empty line; expected a JSON object"
    assert out[3]["error"].startswith(
        "line 4: the record is 1212 bytes, over the payload limit of 1000 bytes"
    )
    assert out[4]["error"].startswith("line 5: invalid JSON")


def test_json_documents_per_line_and_infer_max_seqlens(model, tmp_path):
    source = tmp_path / "docs.jsonl"
    source.write_bytes(
        b'{"instances": [{"in0": [1, 2, 3]}, {"in0": [4]}]}\n'
        b'{"instances": [{"in0": [1], "in1": [2]}, {"in1": [3]}]}\n'
    )
    summary = transform(
        model.predictor,
        source,
        tmp_path / "out",
        content_type="application/json; infer_max_seqlens=1,4",
        accept="application/json",
        progress=False,
        log=lambda *_: None,
    )
    first, second = read_out(tmp_path / "out" / "docs.jsonl.out")
    vectors = np.float32([p["embeddings"] for p in first["predictions"]])
    np.testing.assert_allclose(vectors, model.embed(in0=[[1], [4]]), rtol=1e-6)  # in0 capped at 1
    assert second["error"].startswith("line 2: instance 0 has both in0 and in1") and summary.errors == 1


@pytest.mark.parametrize("content_type", ["application/jsonlines", "application/json"])
def test_infer_max_seqlens_caps_in1_with_the_second_number(model, tmp_path, content_type):
    longs = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15]]
    if content_type == "application/json":
        lines = [orjson.dumps({"instances": [{"in1": s} for s in longs]})]
        lines.append(orjson.dumps({"instances": [{"in0": a, "in1": b} for a, b in zip(longs, longs[::-1])]}))
    else:
        lines = [orjson.dumps({"in1": s}) for s in longs]
        lines += [orjson.dumps({"in0": a, "in1": b}) for a, b in zip(longs, longs[::-1])]
    source = tmp_path / "capped.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    summary = transform(
        model.predictor,
        source,
        tmp_path / "out",
        content_type=f"{content_type}; infer_max_seqlens=3,1",
        accept=content_type,
        progress=False,
        log=lambda *_: None,
    )
    out = read_out(tmp_path / "out" / "capped.jsonl.out")
    assert summary.ok
    if content_type == "application/json":
        vectors = np.float32([p["embeddings"] for p in out[0]["predictions"]])
        scores = np.float32([p["scores"] for p in out[1]["predictions"]])
    else:
        vectors = np.float32([o["embeddings"] for o in out[:3]])
        scores = np.float32([o["scores"] for o in out[3:]])
    np.testing.assert_allclose(vectors, direct_embeddings(model.net, 1, longs, cap=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        scores, direct_scores(model.net, longs, longs[::-1], caps=(3, 1)), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(vectors, direct_embeddings(model.net, 1, longs, cap=3), atol=1e-4)


def test_an_interrupted_transform_leaves_no_output_and_a_rerun_completes_it(model, tmp_path, monkeypatch):
    source, records = pairs_file(tmp_path, n=20)
    out_dir, target = tmp_path / "out", tmp_path / "out" / "pairs.jsonl.out"
    one_by_one = {"strategy": "SingleRecord", "progress": False, "log": lambda *_: None}
    complete = transform(model.predictor, source, tmp_path / "reference", **one_by_one)
    expected = (tmp_path / "reference" / "pairs.jsonl.out").read_bytes()
    assert complete.lines == 20

    answer_batch, calls = transform_module.answer_batch, []

    def fail_on_the_fifth_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("the machine went away")
        return answer_batch(*args, **kwargs)

    monkeypatch.setattr(transform_module, "answer_batch", fail_on_the_fifth_batch)
    with pytest.raises(RuntimeError, match="went away"):
        transform(model.predictor, source, out_dir, **one_by_one)
    assert 5 <= len(calls) < 20  # it failed part-way through the file (batches in flight ran on)
    assert list(out_dir.iterdir()) == []  # never a complete-looking output, no half-written one left

    monkeypatch.setattr(transform_module, "answer_batch", answer_batch)
    again = transform(model.predictor, source, out_dir, **one_by_one)
    assert again.written == [target] and again.lines == 20
    assert target.read_bytes() == expected and sorted(out_dir.iterdir()) == [target]


def test_directory_input_resumes_and_skips_complete_outputs(model, tmp_path):
    source, records = pairs_file(tmp_path)
    nested = tmp_path / "in" / "more" / "b.jsonl"
    nested.parent.mkdir()
    nested.write_bytes(b'{"in0": [1], "in1": [2]}\n')
    out_dir = tmp_path / "out"
    first = transform(model.predictor, tmp_path / "in", out_dir, progress=False, log=lambda *_: None)
    assert [p.relative_to(out_dir).as_posix() for p in first.written] == [
        "more/b.jsonl.out",
        "pairs.jsonl.out",
    ]
    done = (out_dir / "pairs.jsonl.out").read_bytes()
    (out_dir / "more" / "b.jsonl.out").write_bytes(b"")  # an interrupted run's leftover
    again = transform(model.predictor, tmp_path / "in", out_dir, progress=False, log=lambda *_: None)
    assert [p.name for p in again.skipped] == ["pairs.jsonl.out"] and [p.name for p in again.written] == [
        "b.jsonl.out"
    ]
    assert (out_dir / "pairs.jsonl.out").read_bytes() == done and len(
        read_out(out_dir / "more/b.jsonl.out")
    ) == 1
    assert not list(out_dir.rglob("*.partial"))


def numbers(batches) -> list[list[int]]:
    return [[number for number, _ in batch] for batch in batches]


def test_batches_stay_within_the_payload_limit_and_the_record_cap():
    lines = [b"x" * 9] * 7 + [b"y" * 40, b"z"]  # 10 bytes each with the newline
    assert numbers(plan_batches(lines, 30, single_record=False)) == [[1, 2, 3], [4, 5, 6], [7], [8], [9]]
    assert numbers(plan_batches(lines[:3], 30, single_record=True)) == [[1], [2], [3]]
    assert numbers(plan_batches(lines, 1000, False, max_records=4)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert numbers(plan_batches([b"a", LongLine(99), b"b"], 30, False)) == [[1], [2], [3]]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"strategy": "Everything"}, "--strategy"),
        ({"content_type": "text/csv"}, "not supported"),
        ({"accept": "text/csv"}, "not supported"),
        ({"max_payload_mb": 0}, "positive"),
        ({"max_records": 0}, "--max-records"),
        ({"content_type": "application/jsonlines; infer_max_seqlens=0,1"}, "infer_max_seqlens"),
    ],
)
def test_bad_job_settings_are_refused(model, tmp_path, options, message):
    with pytest.raises(TransformError, match=message):
        transform(model.predictor, tmp_path, tmp_path / "out", progress=False, **options)


def test_cli_exit_status_follows_the_summary(model_dir, tmp_path, capsys):
    source, records = pairs_file(tmp_path)
    args = [
        "transform",
        "--model-dir",
        str(model_dir),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
        "--concurrency",
        "2",
    ]
    assert cli.main(args) == 1
    assert "1 error line(s)" in capsys.readouterr().err
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b'{"in0": [1], "in1": [2]}\n{"in1": [3]}\n')
    assert (
        cli.main(args[:3] + ["--input", str(clean), "--output", str(tmp_path / "out2"), "--no-progress"]) == 0
    )
    assert "2 line(s), 0 error line(s)" in capsys.readouterr().out
    assert cli.main(args[:3] + ["--input", str(tmp_path / "missing"), "--output", str(tmp_path)]) == 2


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/jsonlines"])
def test_accept_is_resolved_as_the_server_does_and_lines_stay_aligned(model, tmp_path, accept, monkeypatch):
    """A missing or wildcard Accept is the container's default, else the content type; the
    output is one object per input line whichever type it resolves to."""
    monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    source, records = pairs_file(tmp_path)
    summary = transform(
        model.predictor, source, tmp_path / "out", accept=accept, progress=False, log=lambda *_: None
    )
    out = read_out(tmp_path / "out" / "pairs.jsonl.out")
    assert len(out) == len(records) and summary.errors == 1 and "scores" in out[0]


def test_a_bad_default_accept_variable_stops_the_command_in_one_line(
    model_dir, tmp_path, monkeypatch, capsys
):
    source, _ = pairs_file(tmp_path)
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "text/csv")
    args = [
        "transform",
        "--model-dir",
        str(model_dir),
        "--input",
        str(source),
        "--output",
        str(tmp_path / "o"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT='text/csv'" in err


def test_the_platform_payload_limit_admits_a_10_mb_request_line(model_dir, tmp_path, monkeypatch, capsys):
    """``--content-type application/json``: each line is a whole request (a mini-batch). With
    SAGEMAKER_MAX_PAYLOAD_IN_MB=20 a 10 MB one is answered; the 6 MB default refuses it."""
    instance = orjson.dumps({"in0": [1] * 500, "in1": [2, 3]})
    count = 10 * 1024 * 1024 // (len(instance) + 1) + 1
    source = tmp_path / "big.jsonl"
    source.write_bytes(b'{"instances": [' + b",".join([instance] * count) + b"]}\n")
    assert source.stat().st_size > 10 * 1024 * 1024
    args = [
        "transform",
        "--model-dir",
        str(model_dir),
        "--input",
        str(source),
        "--content-type",
        "application/json",
    ]
    assert cli.main([*args, "--output", str(tmp_path / "default"), "--no-progress"]) == 1
    assert "over the payload limit" in read_out(tmp_path / "default" / "big.jsonl.out")[0]["error"]
    monkeypatch.setenv("SAGEMAKER_MAX_PAYLOAD_IN_MB", "20")
    assert cli.main([*args, "--output", str(tmp_path / "platform"), "--no-progress"]) == 0
    (answer,) = read_out(tmp_path / "platform" / "big.jsonl.out")
    assert len(answer["predictions"]) == count and "scores" in answer["predictions"][0]
