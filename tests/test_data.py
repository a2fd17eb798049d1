"""JSON Lines channels: reading, per-record validation with file:line, batching, sampling."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch

from object2vec.columns import SequenceColumn
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.training.data import (
    DataError,
    PairDataset,
    batch_order,
    epoch_pairs,
    epoch_size,
    iter_json_lines,
    iterate_batches,
    load_pairs,
)

#: enc0 takes IDs in [0, 10) and up to 4 tokens; enc1 IDs in [0, 20) and up to 3 tokens.
SOFTMAX = parse_hyperparameters(
    {
        "enc0_max_seq_len": "4",
        "enc0_vocab_size": "10",
        "enc1_max_seq_len": "3",
        "enc1_vocab_size": "20",
        "num_classes": "3",
    }
)
REGRESSION = SOFTMAX.replace(output_layer="mean_squared_error")

GOOD = [
    {"label": 0, "in0": [1, 2], "in1": [3]},
    {"label": 2, "in0": [9], "in1": [19, 0, 5]},
    {"label": 1, "in0": [0, 1, 2, 3], "in1": [7, 8]},
]


def as_tuples(data: PairDataset) -> list[tuple]:
    return [
        (data.labels[i].item(), data.in0.get(i).tolist(), data.in1.get(i).tolist()) for i in range(len(data))
    ]


def records_as_tuples(records: list[dict]) -> list[tuple]:
    return [(r["label"], r["in0"], r["in1"]) for r in records]


# --- sources -------------------------------------------------------------------------------


def test_reads_a_file(write_jsonl):
    data = load_pairs(write_jsonl(GOOD), SOFTMAX)
    assert as_tuples(data) == records_as_tuples(GOOD)
    assert data.labels.dtype == np.int64


def test_reads_a_gzip_file(write_jsonl):
    data = load_pairs(write_jsonl(GOOD, "train.jsonl.gz"), SOFTMAX)
    assert as_tuples(data) == records_as_tuples(GOOD)


def test_reads_a_directory_of_plain_and_gzip_files(write_jsonl, tmp_path):
    write_jsonl(GOOD[:1], "channel/part-0.jsonl")
    write_jsonl(GOOD[1:2], "channel/part-1.jsonl.gz")
    write_jsonl(GOOD[2:], "channel/sub/part-2.jsonl")
    (tmp_path / "channel" / ".hidden").write_text("not json at all\n")
    data = load_pairs(tmp_path / "channel", SOFTMAX)
    assert sorted(as_tuples(data)) == sorted(records_as_tuples(GOOD))


def test_blank_lines_are_skipped_but_counted(write_jsonl):
    path = write_jsonl([GOOD[0], "", "   ", GOOD[1], "{broken"])
    assert [number for _, number, _ in islice(iter_json_lines(path), 2)] == [1, 4]
    with pytest.raises(DataError, match=rf"^{path}:5: "):
        load_pairs(path, SOFTMAX)


def test_reading_is_streamed(write_jsonl):
    """The first record is available before a later broken line is ever parsed."""
    records = iter_json_lines(write_jsonl([GOOD[0], "{broken"]))
    assert next(records)[2] == GOOD[0]
    with pytest.raises(DataError):
        next(records)


def test_regression_labels(write_jsonl):
    records = [{"label": 4.5, "in0": [1], "in1": [2]}, {"label": -3, "in0": [1], "in1": [2]}]
    data = load_pairs(write_jsonl(records), REGRESSION)
    assert data.labels.dtype == np.float32
    assert data.labels.tolist() == [4.5, -3.0]


def test_integral_float_class_label_is_accepted(write_jsonl):
    assert load_pairs(write_jsonl([{"label": 1.0, "in0": [1], "in1": [2]}]), SOFTMAX).labels.tolist() == [1]


@pytest.mark.parametrize("make", ["missing_file", "empty_dir", "empty_file"])
def test_missing_or_empty_channel(tmp_path, write_jsonl, make):
    path = {
        "missing_file": lambda: tmp_path / "nope.jsonl",
        "empty_dir": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
        "empty_file": lambda: write_jsonl([""]),
    }[make]()
    with pytest.raises(DataError) as err:
        load_pairs(path, SOFTMAX)
    assert str(path) in str(err.value)


# --- every kind of bad record: file:line and the field --------------------------------------

BAD_SOFTMAX = [
    ('{"label": 1, "in0": [1], "in1": [2]', "JSON"),
    ("not json", "JSON"),
    ("[1, [2], [3]]", "object"),
    ('{"in0": [1], "in1": [2]}', "label"),
    ('{"label": 1, "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1]}', "in1"),
    ('{"label": 1, "in0": 5, "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1], "in1": "2 3"}', "in1"),
    ('{"label": 1, "in0": [1], "in1": null}', "in1"),
    ('{"label": 1, "in0": [], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1], "in1": []}', "in1"),
    ('{"label": 1, "in0": [1.5], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [2.0], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": ["3"], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [[3]], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1], "in1": [null]}', "in1"),
    ('{"label": 1, "in0": [true], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1], "in1": [false]}', "in1"),
    ('{"label": 1, "in0": [-1], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [10], "in1": [2]}', "in0"),
    ('{"label": 1, "in0": [1], "in1": [20]}', "in1"),
    ('{"label": 1, "in0": [1, 2, 3, 4, 99], "in1": [2]}', "in0"),  # checked before truncation
    ('{"label": 3, "in0": [1], "in1": [2]}', "label"),
    ('{"label": -1, "in0": [1], "in1": [2]}', "label"),
    ('{"label": 1.5, "in0": [1], "in1": [2]}', "label"),
    ('{"label": "1", "in0": [1], "in1": [2]}', "label"),
    ('{"label": true, "in0": [1], "in1": [2]}', "label"),
    ('{"label": null, "in0": [1], "in1": [2]}', "label"),
]

BAD_REGRESSION = [
    ('{"label": "4.5", "in0": [1], "in1": [2]}', "label"),
    ('{"label": "NaN", "in0": [1], "in1": [2]}', "label"),
    ('{"label": null, "in0": [1], "in1": [2]}', "label"),
    ('{"label": true, "in0": [1], "in1": [2]}', "label"),
    ('{"label": [1.0], "in0": [1], "in1": [2]}', "label"),
    ('{"label": NaN, "in0": [1], "in1": [2]}', "JSON"),
    ('{"label": 1e999, "in0": [1], "in1": [2]}', "JSON"),
]


def assert_bad_line(path, hp, field: str, line: int) -> None:
    with pytest.raises(DataError) as err:
        load_pairs(path, hp)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert field in message.split(": ", 1)[1], message
    assert "\n" not in message


@pytest.mark.parametrize("line, field", BAD_SOFTMAX)
def test_bad_softmax_record(write_jsonl, line, field):
    assert_bad_line(write_jsonl([GOOD[0], GOOD[1], line, GOOD[2]]), SOFTMAX, field, 3)


@pytest.mark.parametrize("line, field", BAD_REGRESSION)
def test_bad_regression_record(write_jsonl, line, field):
    assert_bad_line(write_jsonl([GOOD[0], line]), REGRESSION, field, 2)


def test_bad_record_in_gzip_and_directory_names_the_file(write_jsonl, tmp_path):
    bad = '{"label": 1, "in0": [1], "in1": [99]}'
    gz = write_jsonl([GOOD[0], GOOD[1], bad], "d/b.jsonl.gz")
    write_jsonl(GOOD, "d/a.jsonl")
    with pytest.raises(DataError) as err:
        load_pairs(tmp_path / "d", SOFTMAX)
    assert str(err.value).startswith(f"{gz}:3: ") and "in1" in str(err.value)


def test_out_of_range_message_states_the_valid_range(write_jsonl):
    with pytest.raises(DataError) as err:
        load_pairs(write_jsonl(['{"label": 1, "in0": [1], "in1": [25]}']), SOFTMAX)
    assert "25" in str(err.value) and "20" in str(err.value)
    with pytest.raises(DataError) as err:
        load_pairs(write_jsonl(['{"label": 7, "in0": [1], "in1": [2]}']), SOFTMAX)
    assert "7" in str(err.value) and "3" in str(err.value)


# --- truncation and padding ----------------------------------------------------------------


def test_sequences_are_truncated_to_max_seq_len(write_jsonl):
    data = load_pairs(write_jsonl([{"label": 0, "in0": [1, 2, 3, 4, 5, 6], "in1": [9, 8, 7, 6, 5]}]), SOFTMAX)
    assert data.in0.get(0).tolist() == [1, 2, 3, 4]
    assert data.in1.get(0).tolist() == [9, 8, 7]


def test_padding_keeps_tokens_and_true_lengths():
    sequences = [[5, 6, 7], [1], [2, 3], [9, 9, 9, 9, 9]]
    column = SequenceColumn.from_lists(sequences)
    ids, lengths = column.padded(np.array([2, 0, 3, 1]))
    assert ids.dtype == torch.int64 and ids.shape == (4, 5)
    assert lengths.tolist() == [2, 3, 5, 1]
    assert ids.tolist() == [[2, 3, 0, 0, 0], [5, 6, 7, 0, 0], [9, 9, 9, 9, 9], [1, 0, 0, 0, 0]]
    ids, lengths = column.padded(np.array([1, 2]))
    assert ids.tolist() == [[1, 0], [2, 3]] and lengths.tolist() == [1, 2]


def test_batches_cover_each_record_once_with_correct_padding(write_jsonl):
    data = load_pairs(write_jsonl(GOOD * 5), SOFTMAX)
    seen = []
    for batch in iterate_batches(data, 4, shuffle=True, rng=np.random.default_rng(0)):
        assert len(batch) <= 4
        for row in range(len(batch)):
            n0, n1 = batch.len0[row].item(), batch.len1[row].item()
            assert batch.in0[row, n0:].eq(0).all() and batch.in1[row, n1:].eq(0).all()
            seen.append(
                (batch.labels[row].item(), batch.in0[row, :n0].tolist(), batch.in1[row, :n1].tolist())
            )
    assert Counter(map(repr, seen)) == Counter(map(repr, as_tuples(data)))
    assert epoch_size(data, 0) == len(data)


# --- shuffling -----------------------------------------------------------------------------


def epoch_label_order(data: PairDataset, rng, shuffle=True) -> list[int]:
    return [x for b in iterate_batches(data, 8, shuffle=shuffle, rng=rng) for x in b.in0[:, 0].tolist()]


def test_shuffled_differently_every_epoch():
    data = PairDataset.from_sequences([[i] for i in range(100)], [[1]] * 100, np.zeros(100))
    rng = np.random.default_rng(0)
    epochs = [epoch_label_order(data, rng) for _ in range(3)]
    assert all(sorted(order) == list(range(100)) for order in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != list(range(100))
    assert epoch_label_order(data, np.random.default_rng(0), shuffle=False) == list(range(100))
    assert epoch_label_order(data, np.random.default_rng(0)) == epochs[0]  # same seed, same order


# --- negative sampling ---------------------------------------------------------------------


def positives(n: int, regression: bool = False) -> PairDataset:
    """Record i is ([i], [100 + i], label 1): every pair is identifiable from its tokens."""
    return PairDataset.from_sequences(
        [[i] for i in range(n)], [[100 + i] for i in range(n)], np.ones(n), regression
    )


@pytest.mark.parametrize("rate", [1, 3, 5])
def test_negative_sampling_makes_k_negatives_per_positive(rate):
    n = 40
    data = positives(n)
    idx0, idx1, labels = epoch_pairs(data, rate, np.random.default_rng(1))
    assert len(idx0) == len(idx1) == len(labels) == n * (1 + rate)
    negative = labels == 0
    assert negative.sum() == n * rate and (labels[~negative] == 1).all()
    assert Counter(idx0[negative].tolist()) == {i: rate for i in range(n)}
    assert (idx1[negative] != idx0[negative]).all()  # never the record itself
    assert set(idx1[negative].tolist()) <= set(range(n))
    assert len(set(idx1[negative].tolist())) > n // 2  # drawn from many other records


def test_negative_sampling_in_batches_and_fresh_each_epoch():
    n, rate = 30, 2
    data = positives(n)
    rng = np.random.default_rng(2)
    epochs = []
    for _ in range(2):
        pairs = []
        for batch in iterate_batches(data, 7, shuffle=True, negative_rate=rate, rng=rng):
            pairs += zip(batch.in0[:, 0].tolist(), batch.in1[:, 0].tolist(), batch.labels.tolist())
        assert len(pairs) == n * (1 + rate)
        assert sorted(p for p in pairs if p[2] == 1) == [(i, 100 + i, 1) for i in range(n)]
        negatives = [p for p in pairs if p[2] == 0]
        assert len(negatives) == n * rate and all(b != 100 + a for a, b, _ in negatives)
        epochs.append(sorted(negatives))
    assert epochs[0] != epochs[1]
    assert epoch_size(data, rate) == n * (1 + rate)


def test_negatives_are_made_only_for_positive_records():
    data = positives(10)
    data.labels[:4] = 0  # four records are already negatives
    idx0, idx1, labels = epoch_pairs(data, 3, np.random.default_rng(0))
    assert len(labels) == 10 + 6 * 3 and (labels[10:] == 0).all()
    assert sorted(set(idx0[10:].tolist())) == list(range(4, 10))
    assert epoch_size(data, 3) == len(labels)


def test_negative_labels_are_zero_for_regression():
    _, _, labels = epoch_pairs(positives(10, regression=True), 2, np.random.default_rng(0))
    assert labels.dtype == np.float32 and (labels[10:] == 0).all() and (labels[:10] == 1).all()


def test_no_negative_sampling_by_default():
    idx0, idx1, labels = epoch_pairs(positives(10), 0, np.random.default_rng(0))
    assert idx0.tolist() == idx1.tolist() == list(range(10)) and (labels == 1).all()


# --- bucketing -----------------------------------------------------------------------------


def test_bucketing_groups_similar_lengths():
    rng = np.random.default_rng(0)
    lengths0 = rng.integers(1, 30, size=500)
    lengths1 = rng.integers(1, 30, size=500)
    width, size = 5, 16
    batches = batch_order(lengths0, lengths1, size, width, np.random.default_rng(1))
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for batch in batches:
        assert 1 <= len(batch) <= size
        for lengths in (lengths0[batch], lengths1[batch]):
            assert len(set(((lengths - 1) // width).tolist())) == 1
            assert lengths.max() - lengths.min() < width
    plain = batch_order(lengths0, lengths1, size, 0, np.random.default_rng(1))
    assert [len(b) for b in plain] == [16] * 31 + [4]
    spread = max(lengths0[b].max() - lengths0[b].min() for b in plain)
    assert spread >= width  # without bucketing, lengths mix


def test_bucketed_batches_through_iterate_batches():
    sequences = [[1] * (1 + i % 12) for i in range(120)]
    data = PairDataset.from_sequences(sequences, sequences, np.zeros(120))
    total = 0
    for batch in iterate_batches(data, 8, shuffle=True, bucket_width=3, rng=np.random.default_rng(0)):
        assert batch.len0.max() - batch.len0.min() < 3
        assert batch.in0.shape[1] == batch.len0.max()
        total += len(batch)
    assert total == 120
