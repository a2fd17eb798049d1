"""The serving fast paths give the answers of the eager float32 path: encoders without padding work,
columnar token checks, columnar request decoding and byte-for-byte answer encoding."""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import orjson
import pytest
import torch
from conftest import needs_c_kernels, torch_threads

from object2vec import native
from object2vec.columns import InvalidSequence, SequenceColumn, token_problem
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet, inference
from object2vec.nn.inference import chunk_threads, encode_column, length_chunks, projected_table
from object2vec.serving import protocol
from object2vec.serving.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VOCAB = 300


def network(encoder: str, max_len: int = 24) -> Object2VecNet:
    torch.manual_seed(0)
    hp = parse_hyperparameters(
        {
            "enc0_network": encoder,
            "enc1_network": "enc0",
            "enc0_vocab_size": str(VOCAB),
            "enc1_vocab_size": str(VOCAB),
            "enc0_max_seq_len": str(max_len),
            "enc1_max_seq_len": str(max_len),
            "enc0_token_embedding_dim": "16",
            "enc1_token_embedding_dim": "16",
            "enc0_layers": "2",
            "enc1_layers": "2",
            "enc_dim": "12",
            "mlp_dim": "8",
            "num_classes": "3",
        }
    )
    return Object2VecNet(hp).eval()


@pytest.fixture(autouse=True)
def pooled_in_c_at_any_size(monkeypatch):
    """Every pooled pass here goes through the C loop where it was built, whatever its size, so
    that the tests of pooled encodings test it (the server keeps it to small passes)."""
    monkeypatch.setattr(inference, "C_BAG_MAX_TOKENS", 10**9)


def sequences(n: int, max_len: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, VOCAB, size=rng.integers(1, max_len + 1)).tolist() for _ in range(n)]


@pytest.mark.parametrize(
    "encoder, max_len", [("pooled_embedding", 24), ("pooled_embedding", 1), ("hcnn", 24), ("bilstm", 24)]
)
@pytest.mark.parametrize("batch_size", [7, 1024])
def test_encodings_match_the_eager_padded_forward(encoder, max_len, batch_size, kernels_or_fallback):
    net = network(encoder, max_len)
    column = SequenceColumn.from_lists(sequences(150, max_len))
    ids, lengths = column.padded(np.arange(len(column)))  # one batch, padded to the longest
    with torch.inference_mode():
        eager = net.encoder(0)(ids, lengths)
    fast = encode_column(net.encoder(0), column, torch.device("cpu"), batch_size)
    assert fast.shape == eager.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, eager, rtol=1e-6, atol=1e-6)


def test_a_pooled_sequence_cut_to_no_tokens_pools_to_zeros(kernels_or_fallback):
    """``max_len=0`` through the Python API leaves empty sequences: the pooled encoder then gives
    the projection of zeros (``embedding_bag``'s mean of an empty bag), never a division by 0."""
    net = network("pooled_embedding")
    column = SequenceColumn.from_lists([[1, 2, 3], [4]]).truncated(0)
    assert column.lengths.tolist() == [0, 0]
    fast = encode_column(net.encoder(0), column, torch.device("cpu"), 1024)
    with torch.inference_mode():
        expected = net.encoder(0).project(torch.zeros(2, 16))
    torch.testing.assert_close(fast, expected)


def test_predictor_scores_match_the_network_within_1e6():
    net = network("hcnn")
    predictor = Predictor(net.hp, net, device="cpu")
    in0, in1 = sequences(60, 24, seed=1), sequences(60, 24, seed=2)
    col0, col1 = SequenceColumn.from_lists(in0), SequenceColumn.from_lists(in1)
    with torch.inference_mode():
        rows = np.arange(60)
        expected = net.scores(*col0.padded(rows), *col1.padded(rows)).numpy()
    np.testing.assert_allclose(predictor.predict(in0, in1), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ["linear", "relu", "tanh"])
def test_eval_outputs_equal_the_whole_mlp_with_its_dropout_and_identity_layers(activation):
    """In eval mode the network skips the MLP's no-op layers (dropout, the ``linear`` activation's
    identity): the outputs must be those of running every layer."""
    torch.manual_seed(0)
    hp = network("pooled_embedding").hp.replace(dropout="0.5", mlp_activation=activation, mlp_layers="2")
    net = Object2VecNet(hp).eval()
    a, b = torch.randn(9, 12), torch.randn(9, 12)
    with torch.inference_mode():
        every_layer = net.head(net.mlp(net.compare(a, b)))
        assert torch.equal(net.outputs(a, b), every_layer)
    net.train()  # training keeps the dropout layers: two passes differ
    assert not torch.equal(net.outputs(a, b), net.outputs(a, b))


def test_length_chunks_cover_every_row_within_the_budget():
    lengths = np.sort(np.random.default_rng(0).integers(1, 300, size=1000))
    chunks = list(length_chunks(lengths, max_rows=64, budget=2048))
    assert [c.start for c in chunks] == [0] + [c.stop for c in chunks[:-1]] and chunks[-1].stop == 1000
    for chunk in chunks:
        rows = chunk.stop - chunk.start
        assert rows <= 64 and (rows == 1 or rows * lengths[chunk.stop - 1] <= 2048)
    assert list(length_chunks(np.array([5000]), 64, 2048)) == [slice(0, 1)]  # too long: alone


def pooled_against_eager(net: Object2VecNet, column: SequenceColumn) -> None:
    ids, lengths = column.padded(np.arange(len(column)))
    with torch.inference_mode():
        eager = net.encoder(0)(ids, lengths)
    fast = encode_column(net.encoder(0), column, torch.device("cpu"), 64)
    torch.testing.assert_close(fast, eager, rtol=1e-6, atol=1e-6)


def test_pooled_encodings_come_from_the_projected_table_and_follow_changed_weights(kernels_or_fallback):
    """The pooled pass gathers rows of the token table already projected; when the weights change
    in place (an optimizer step, ``load_state_dict``) the table is made again."""
    net = network("pooled_embedding")  # enc_dim 12 <= token dim 16
    encoder = net.encoder(0)
    column = SequenceColumn.from_lists(sequences(80, 24, seed=4))
    assert encoder not in inference._projected_tables
    pooled_against_eager(net, column)
    assert encoder in inference._projected_tables  # made by the pass
    table = projected_table(encoder)
    assert table is not None and table.shape == (VOCAB, 12) and projected_table(encoder) is table
    with torch.no_grad():
        encoder.project.weight.mul_(2.0)
        encoder.embedding.weight[5:9] += 1.0
    assert projected_table(encoder) is not table
    pooled_against_eager(net, column)
    net.load_state_dict(network("pooled_embedding").state_dict())
    pooled_against_eager(net, column)
    encoder.project.weight = torch.nn.Parameter(torch.randn(12, 16))  # a new tensor, version 0
    pooled_against_eager(net, column)
    for _ in range(5):  # other memory, same version; twice between passes, so that the second
        with torch.no_grad():  # may land where the table's own weights were
            encoder.embedding.weight.data = torch.randn(VOCAB, 16)
            encoder.embedding.weight.data = torch.randn(VOCAB, 16)
        pooled_against_eager(net, column)
    encoder.project = torch.nn.Linear(16, 12)  # another module
    pooled_against_eager(net, column)
    assert projected_table(encoder) is projected_table(encoder)  # kept while nothing changes


def test_no_projected_table_where_it_would_cost_more_memory(monkeypatch, kernels_or_fallback):
    wide = network("pooled_embedding")
    wide.encoder(0).project = torch.nn.Linear(16, 40)  # enc_dim 40 > token dim 16
    wide.encoder(0).enc_dim = 40
    assert projected_table(wide.encoder(0)) is None
    pooled_against_eager(wide, SequenceColumn.from_lists(sequences(30, 24)))
    monkeypatch.setattr(inference, "PROJECTED_TABLE_MAX_BYTES", VOCAB * 12 * 4 - 1)
    net = network("pooled_embedding")
    assert projected_table(net.encoder(0)) is None
    pooled_against_eager(net, SequenceColumn.from_lists(sequences(30, 24)))
    with torch.inference_mode():  # weights without a version counter
        frozen = network("pooled_embedding")
    monkeypatch.undo()
    assert projected_table(frozen.encoder(0)) is None


@needs_c_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("projected", [True, False])
def test_the_c_loop_gives_the_bits_of_embedding_bag(monkeypatch, threads, projected):
    """``bag_mean`` against the ``embedding_bag`` path it stands in for: the same bits, whether the
    bags are split over threads (1,500 sequences are enough) or not, empty bags included."""
    net = network("pooled_embedding")
    if not projected:
        monkeypatch.setattr(inference, "PROJECTED_TABLE_MAX_BYTES", 0)
    column = SequenceColumn.from_lists(sequences(1500, 24, seed=5) + [[3]]).truncated(20)
    column = SequenceColumn.concat([column, SequenceColumn.from_lists([[1, 2]]).truncated(0)])
    with torch_threads(threads):
        in_c = encode_column(net.encoder(0), column, torch.device("cpu"), 1024)
        monkeypatch.setattr(native, "kernels", None)
        in_torch = encode_column(net.encoder(0), column, torch.device("cpu"), 1024)
    assert torch.equal(in_c, in_torch)


@needs_c_kernels
def test_without_a_projected_table_the_c_loop_projects_in_batches_as_the_torch_path(monkeypatch):
    """A linear layer's sums depend on how many rows it takes at once: the pooled rows must be
    projected ``batch_size`` at a time on both paths (wide enough layers show it)."""
    monkeypatch.setattr(inference, "PROJECTED_TABLE_MAX_BYTES", 0)
    torch.manual_seed(0)
    encoder = network("pooled_embedding").encoder(0)
    encoder.embedding = torch.nn.Embedding(VOCAB, 300)
    encoder.project = torch.nn.Linear(300, 256)
    encoder.enc_dim = 256
    column = SequenceColumn.from_lists(sequences(200, 5, seed=6))
    with torch.no_grad(), torch_threads(2):  # the sums' order moves with the rows and threads
        in_c = encode_column(encoder, column, torch.device("cpu"), 7)
        monkeypatch.setattr(native, "kernels", None)
        in_torch = encode_column(encoder, column, torch.device("cpu"), 7)
    assert projected_table(encoder) is None and torch.equal(in_c, in_torch)
    with torch.no_grad():  # no sequences: no rows, on either path
        nothing = encode_column(encoder, SequenceColumn.from_lists([]), torch.device("cpu"), 7)
    assert nothing.shape == (0, 256)


@needs_c_kernels
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("max_len", [None, 3, 0])
def test_pooled_encodings_column_by_column_are_the_bits_of_one_joined_pass(monkeypatch, threads, max_len):
    net = network("pooled_embedding")
    encoder = net.encoder(0)
    columns = [SequenceColumn.from_lists(sequences(n, 9, seed=n)) for n in (1, 40, 7)]
    columns.insert(1, SequenceColumn.from_lists([]))
    with torch_threads(threads), torch.inference_mode():
        blocks = inference.pooled_encodings(encoder, columns, max_len)
        joined = SequenceColumn.concat(columns).truncated(max_len)
        monkeypatch.setattr(native, "kernels", None)  # the reference: embedding_bag
        whole = encode_column(encoder, joined, torch.device("cpu"), 1024).numpy()
    assert [len(b) for b in blocks] == [1, 0, 40, 7]
    assert np.array_equal(np.concatenate(blocks), whole)


@needs_c_kernels
def test_pooled_encodings_follow_the_weights_changed_in_place_or_replaced():
    net = network("pooled_embedding")
    encoder = net.encoder(0)
    column = SequenceColumn.from_lists(sequences(30, 9, seed=8))

    def same_as_a_joined_pass() -> bool:
        with torch.inference_mode():
            blocks = inference.pooled_encodings(encoder, [column], None)
            whole = encode_column(encoder, column, torch.device("cpu"), 1024).numpy()
        return np.array_equal(blocks[0], whole)

    assert same_as_a_joined_pass()
    with torch.no_grad():
        encoder.project.bias.add_(1.0)
        encoder.embedding.weight[:50] *= 2.0
    assert same_as_a_joined_pass()
    encoder.project.bias = torch.nn.Parameter(torch.randn(12))
    assert same_as_a_joined_pass()


def test_a_predictors_pass_of_single_inputs_is_the_same_by_either_path(monkeypatch):
    """Embedding requests of one side, the other and both mixed: the answers of the C loop
    column by column equal those of one pass over the columns joined."""
    net = network("pooled_embedding", max_len=5)
    predictor = Predictor(net.hp, net, device="cpu")
    rng = np.random.default_rng(3)

    def request(sides: list[str]) -> protocol.Request:
        instances = [{side: rng.integers(0, VOCAB, rng.integers(1, 9)).tolist()} for side in sides]
        return protocol.decode_request(
            orjson.dumps({"instances": instances}), protocol.BodyFormat(), (VOCAB, VOCAB)
        )

    batch = [request(["in0"] * 3), request(["in1"]), request(["in1", "in0", "in0", "in1"])]
    by_columns = predictor.answer(batch)
    monkeypatch.setattr(native, "kernels", None)  # the reference: one embedding_bag pass
    joined = predictor.answer(batch)
    assert all(np.array_equal(a, b) for a, b in zip(by_columns, joined))


@needs_c_kernels
def test_a_pass_over_the_token_limit_is_not_made_column_by_column(monkeypatch):
    monkeypatch.setattr(inference, "C_BAG_MAX_TOKENS", 10)
    net = network("pooled_embedding")
    columns = [SequenceColumn.from_lists([[1] * 6]), SequenceColumn.from_lists([[2] * 4])]
    assert inference.pooled_encodings(net.encoder(0), columns, None) is not None  # 10 tokens
    columns.append(SequenceColumn.from_lists([[3]]))
    assert inference.pooled_encodings(net.encoder(0), columns, None) is None  # 11


@needs_c_kernels
def test_small_passes_are_pooled_in_c_and_large_ones_by_embedding_bag(monkeypatch):
    monkeypatch.setattr(inference, "C_BAG_MAX_TOKENS", 100)
    calls = []
    bag_mean = native.kernels.bag_mean
    monkeypatch.setattr(
        native, "kernels", SimpleNamespace(bag_mean=lambda *a: calls.append(1) or bag_mean(*a))
    )
    net = network("pooled_embedding")
    for count in (100, 101):
        encode_column(net.encoder(0), SequenceColumn.from_lists([[1] * count]), torch.device("cpu"), 64)
    assert calls == [1]


@needs_c_kernels
def test_what_the_bag_loop_refuses():
    table, out = np.zeros((10, 4), np.float32), np.zeros((2, 4), np.float32)
    tokens, offsets = np.array([1, 2, 3], np.int64), np.array([0, 1, 3], np.int64)
    bag_mean = native.kernels.bag_mean
    bag_mean(table, tokens, offsets, np.zeros(4, np.float32), out, -1, 1)  # fine
    with pytest.raises(IndexError, match="token 10 is outside a table of 10 rows"):
        bag_mean(table, np.array([1, 2, 10], np.int64), offsets, None, out, -1, 1)
    with pytest.raises(IndexError, match="token -1"):
        bag_mean(table, np.array([-1, 2, 3], np.int64), offsets, None, out, -1, 1)
    for bad in ([0, 2, 1], [0, 1, 4], [-1, 1, 3]):
        with pytest.raises(ValueError, match="non-decreasing and within the tokens"):
            bag_mean(table, tokens, np.array(bad, np.int64), None, out, -1, 1)
    with pytest.raises(ValueError, match="out must have exactly one row for each bag"):
        bag_mean(table, tokens, offsets, None, np.zeros((3, 4), np.float32), -1, 1)
    with pytest.raises(ValueError, match="out must have exactly one row for each bag"):
        bag_mean(table, tokens, offsets, None, np.zeros((1, 4), np.float32), -1, 1)
    out_of_two = np.full((4, 4), 7.0, np.float32)
    with pytest.raises(IndexError, match="token 10"):  # the second column refused before any is done
        bag_mean(table, [tokens, np.array([1, 2, 10], np.int64)], [offsets] * 2, None, out_of_two, -1, 1)
    assert (out_of_two == 7.0).all()
    with pytest.raises(ValueError, match="out must have the table's width"):
        bag_mean(table, tokens, offsets, None, np.zeros((2, 5), np.float32), -1, 1)
    with pytest.raises(TypeError, match="two arrays or two lists of one length"):
        bag_mean(table, [tokens, tokens], [offsets], None, np.zeros((4, 4), np.float32), -1, 1)
    with pytest.raises(IndexError, match="token 10"):  # in the second column
        bag_mean(
            table,
            [tokens, np.array([1, 2, 10], np.int64)],
            [offsets] * 2,
            None,
            np.zeros((4, 4), np.float32),
            -1,
            1,
        )
    with pytest.raises(ValueError, match="bias must have the table's width"):
        bag_mean(table, tokens, offsets, np.zeros(3, np.float32), out, -1, 1)
    with pytest.raises(TypeError, match="tokens must be a 1-D contiguous int64 array"):
        bag_mean(table, tokens.astype(np.int32), offsets, None, out, -1, 1)
    with pytest.raises(TypeError, match="table must be a 2-D C-contiguous float32 array"):
        bag_mean(table.astype(np.float64), tokens, offsets, None, out, -1, 1)


@pytest.fixture
def two_torch_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("encoder", ["hcnn", "bilstm"])
def test_chunks_run_side_by_side_on_one_torch_thread_each_with_the_same_encodings(encoder, two_torch_threads):
    """With two torch threads a pass of many chunks runs them on two chunk threads at once (the
    first two forwards wait for each other), each computing with one torch thread; the encodings
    are those of one chunk after another."""
    net = network(encoder)
    column = SequenceColumn.from_lists(sequences(300, 24, seed=3))
    seen, calls = set(), []
    meet = threading.Barrier(2, timeout=30)  # chunks one after another: the first forward times out
    forward = net.encoder(0).forward

    def recording_forward(ids, lengths):
        seen.add((threading.current_thread().name, torch.get_num_threads()))
        calls.append(None)
        if len(calls) <= 2:
            meet.wait()
        return forward(ids, lengths)

    net.encoder(0).forward = recording_forward
    side_by_side = encode_column(net.encoder(0), column, torch.device("cpu"), 16)
    assert {name.split("_")[0] for name, _ in seen} == {"object2vec-chunks"} and len(seen) == 2
    assert {count for _, count in seen} == {1}
    torch.set_num_threads(1)
    seen.clear()
    one_after_another = encode_column(net.encoder(0), column, torch.device("cpu"), 16)
    assert seen == {(threading.current_thread().name, 1)}
    torch.testing.assert_close(side_by_side, one_after_another, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sequence_count", [5, 40])  # one chunk; a few, fewer than the threads
def test_a_pass_of_fewer_chunks_than_threads_runs_on_the_callers_threads(sequence_count):
    net = network("hcnn")
    seen = []
    forward = net.encoder(0).forward

    def recording_forward(ids, lengths):
        seen.append(threading.current_thread())
        return forward(ids, lengths)

    net.encoder(0).forward = recording_forward
    column = SequenceColumn.from_lists(sequences(sequence_count, 24))
    with torch_threads(8):
        encode_column(net.encoder(0), column, torch.device("cpu"), 16)
    assert 1 <= len(seen) < 8 and set(seen) == {threading.current_thread()}


def in_new_thread(work):
    """``work()`` run on a thread of its own (a caller with no chunk threads yet); its result."""
    result = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join()
    return result[0]


def test_chunk_threads_leave_other_threads_torch_thread_count_alone(two_torch_threads):
    """``set_num_threads(1)`` on a chunk thread also changes the count threads started later begin
    with; making the pool sets that back, for the caller and for any thread started after."""

    def start_a_pool():
        torch.set_num_threads(2)
        pool = chunk_threads(3)
        assert chunk_threads(3) is pool
        return sorted(pool.map(lambda _: torch.get_num_threads(), range(30))), torch.get_num_threads()

    assert in_new_thread(start_a_pool) == ([1] * 30, 2)
    assert in_new_thread(torch.get_num_threads) == 2  # a thread's first torch call: the default


def test_each_calling_thread_has_its_own_chunk_threads(two_torch_threads):
    """Concurrent callers (a batch transform's workers, each with its share of the cores) do not
    share one pool of that share."""
    mine = chunk_threads(2)
    theirs = in_new_thread(lambda: chunk_threads(2))
    assert mine is chunk_threads(2) and theirs is not mine


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_starts_chunk_threads_of_its_own(two_torch_threads):
    """A child forked after its parent made chunk threads has none of their threads: it must make
    its own rather than queue chunks for threads that do not exist (it would hang)."""
    net = network("hcnn")
    column = SequenceColumn.from_lists(sequences(300, 24, seed=5))
    parent = encode_column(net.encoder(0), column, torch.device("cpu"), 16).numpy()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its encodings' bytes down the pipe, then out without any cleanup
        try:
            os.write(write, encode_column(net.encoder(0), column, torch.device("cpu"), 16).numpy().tobytes())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish its pass")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as pipe:
        child = np.frombuffer(pipe.read(), dtype=np.float32).reshape(parent.shape)
    np.testing.assert_array_equal(child, parent)


def test_a_chunks_error_reaches_the_caller(two_torch_threads):
    net = network("hcnn")

    def failing(ids, lengths):
        raise RuntimeError("chunk failed")

    net.encoder(0).forward = failing
    with pytest.raises(RuntimeError, match="chunk failed"):
        encode_column(net.encoder(0), SequenceColumn.from_lists(sequences(100, 24)), torch.device("cpu"), 8)


BAD_COLUMNS = [
    [[1, 2], [3, True]],
    [[1], [2.0]],
    [[1], []],
    [[1], [VOCAB]],
    [[1], [-1]],
    [[1], "x"],
    [[1], None],
    [[1], [2**70]],
    [[1], [[2]]],
    [[1], ["7"]],
]


@pytest.mark.parametrize("column", BAD_COLUMNS, ids=[repr(c)[:30] for c in BAD_COLUMNS])
@pytest.mark.parametrize("size", [1, 600])  # Python's min/max below SMALL_COLUMN tokens, numpy above
def test_columnar_check_names_the_sequence_token_problem_names(column, size):
    column = [[3] * size] + column
    with pytest.raises(InvalidSequence) as info:
        SequenceColumn.checked(column, VOCAB)
    assert info.value.index == 2 and info.value.problem == token_problem(column[2], VOCAB)


def test_columnar_check_keeps_valid_input_of_every_kind():
    valid = [[0, 1], (2, 3), np.array([VOCAB - 1]), [np.int32(5)]]
    column = SequenceColumn.checked(valid, VOCAB)
    assert column.tokens.tolist() == [0, 1, 2, 3, VOCAB - 1, 5] and column.lengths.tolist() == [2, 2, 1, 1]
    assert SequenceColumn.checked([[1, 2, 3], [4]], VOCAB, may_hold_bools=False).lengths.tolist() == [3, 1]


def test_truncated_and_concat():
    column = SequenceColumn.from_lists([[1, 2, 3], [4], [5, 6, 7, 8]])
    assert column.truncated(2).tokens.tolist() == [1, 2, 4, 5, 6]
    assert column.truncated(2).lengths.tolist() == [2, 1, 2]
    assert column.truncated(4) is column and column.truncated(None) is column
    joined = SequenceColumn.concat([column, column.truncated(1)])
    assert joined.lengths.tolist() == [3, 1, 4, 1, 1, 1] and joined.get(4).tolist() == [4]


def random_body(rng: np.random.Generator, kind: str, n: int) -> dict:
    def seq():
        return rng.integers(0, 1100, size=rng.integers(1, 9)).tolist()

    if kind == "pairs":
        return {"instances": [{"in0": seq(), "in1": seq()} for _ in range(n)]}
    if kind == "in1":
        return {"instances": [{"in1": seq(), "label": 1} for _ in range(n)]}
    return {"instances": [{"in0": seq()} if rng.random() < 0.5 else {"in1": seq()} for _ in range(n)]}


@pytest.mark.parametrize("kind", ["pairs", "in1", "mixed sides"])
@pytest.mark.parametrize("caps", [(None, None), (3, 2)])
def test_columnar_decoding_equals_instance_by_instance(kind, caps):
    rng = np.random.default_rng(0)
    for n in (1, 5, 700):
        body = orjson.dumps(random_body(rng, kind, n))
        fmt = protocol.BodyFormat(False, *caps)
        fast = protocol.decode_request(body, fmt, (1100, 1100))
        objects, lines = protocol.decode_objects(body, fmt)
        exact = protocol._decode_each(objects, lines, fmt, (1100, 1100))
        assert (fast.mode, fast.size, fast.in0, fast.in1) == (exact.mode, exact.size, exact.in0, exact.in1)


@pytest.mark.parametrize("piece_values", [protocol.ENCODE_CHUNK_VALUES, 10])
@pytest.mark.parametrize("row_views_from", [1, 10**9])  # every row a view; none
def test_answers_are_the_bytes_of_one_object_per_row(
    monkeypatch, piece_values, row_views_from, answer_writer
):
    monkeypatch.setattr(protocol, "ENCODE_CHUNK_VALUES", piece_values)  # 10: a piece of 1 or 10 rows
    monkeypatch.setitem(protocol.ROW_VIEWS_FROM, protocol.JSON, row_views_from)
    monkeypatch.setitem(protocol.ROW_VIEWS_FROM, protocol.JSONLINES, row_views_from)
    rows = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    rows[0, :6] = [np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4028235e38]
    for accept in (protocol.JSON, protocol.JSONLINES):
        for key in (protocol.SCORES, protocol.EMBEDDINGS):
            strided = rows[:, ::2]  # not contiguous; then as float64
            for block in (rows, rows[:1], rows[:, :1], rows[:0], strided, strided.astype(np.float64)):
                objects = [protocol.encode_object({key: row.astype(np.float32)}) for row in block]
                expected = (
                    b"".join(o + b"\n" for o in objects)
                    if accept == protocol.JSONLINES
                    else b'{"predictions":[' + b",".join(objects) + b"]}"
                )
                assert protocol.encode_rows(block, key, accept) == expected
