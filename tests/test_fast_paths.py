"""The encoders' fast paths against the plain computation they replace: pooling with
embedding_bag and row-sparse gradients, both sides in one pass, hcnn's convolution as a matrix
product, bilstm on padded batches, and the CPU dropout."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_c_kernels, torch_threads
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from object2vec import native
from object2vec.hyperparameters import parse_hyperparameters
from object2vec.nn import Object2VecNet
from object2vec.nn.dropout import keep_mask, keep_mask_numpy
from object2vec.nn.encoders import (
    RADIX_SORT_BOUND,
    Dropout,
    bag_means,
    masked_mean_max,
    padding_mask,
    real_tokens,
    stable_sort,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch(n: int, width: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded IDs with junk (not zeros) after each sequence, and lengths from 1 to ``width``."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (n,), generator=generator)
    lengths[0] = width
    return torch.randint(1, vocab, (n, width), generator=generator), lengths


def plain_mean(table: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = padding_mask(lengths, ids.shape[1]).unsqueeze(-1).to(table.dtype)
    return (table[ids] * mask).sum(1) / lengths.unsqueeze(-1).to(table.dtype)


@pytest.mark.parametrize("sparse", [True, False])
def test_pooling_and_its_table_gradient_match_the_masked_mean(sparse):
    table = torch.nn.Embedding(30, 6, sparse=sparse)
    (ids0, len0), (ids1, len1) = batch(9, 7, 30, seed=0), batch(5, 4, 30, seed=1)
    weights = torch.randn(9, 6), torch.randn(5, 6)
    pooled = bag_means(table, [(ids0, len0), (ids1, len1)])
    sum(((p * w).sum() for p, w in zip(pooled, weights)), torch.tensor(0.0)).backward()
    reference = table.weight.detach().clone().requires_grad_()
    expected = [plain_mean(reference, ids0, len0), plain_mean(reference, ids1, len1)]
    sum(((p * w).sum() for p, w in zip(expected, weights)), torch.tensor(0.0)).backward()
    for got, want in zip(pooled, expected):
        assert torch.allclose(got, want, atol=1e-6)
    grad = table.weight.grad
    assert grad.is_sparse == sparse
    if sparse:  # each used row once, sorted: what SparseRowAdam takes without sorting again
        rows = grad._indices()[0]
        assert bool((rows[1:] > rows[:-1]).all())
        assert set(rows.tolist()) == set(
            ids0[padding_mask(len0, 7)].tolist() + ids1[padding_mask(len1, 4)].tolist()
        )
        grad = grad.to_dense()
    assert torch.allclose(grad, reference.grad, atol=1e-6)


def test_real_tokens_are_the_masked_ids_in_order():
    ids, lengths = batch(40, 9, 500, seed=3)
    lengths[5] = 0  # an empty sequence (cut to nothing by max_len=0) gives no token
    got = real_tokens(ids, lengths)
    assert got.dtype == ids.dtype and torch.equal(got, ids[padding_mask(lengths, 9)])
    narrow, short = ids[:, :4], lengths.clamp(max=4)  # a strided view of the batch
    assert torch.equal(real_tokens(narrow, short), narrow[padding_mask(short, 4)])


@pytest.mark.parametrize("bound", [30, RADIX_SORT_BOUND, RADIX_SORT_BOUND + 1])
def test_the_token_sort_is_torch_stable_sort(bound):
    """Radix sort (16-bit IDs) or torch.sort: the same permutation, equal IDs in position order."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, bound, (5000,), generator=generator)
    ids[::7] = bound - 1  # many repeats, and the largest ID
    expected = torch.sort(ids, stable=True)
    got = stable_sort(ids, bound)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert [t.tolist() for t in stable_sort(ids[:0], bound)] == [[], []]


def net(network: str, **settings) -> Object2VecNet:
    torch.manual_seed(0)
    hp = {
        "enc0_network": network,
        "enc0_max_seq_len": 9,
        "enc0_vocab_size": 30,
        "enc0_token_embedding_dim": 8,
        "enc0_layers": 2,
        "enc_dim": 8,
        "mlp_layers": 1,
        "mlp_dim": 8,
        **settings,
    }
    return Object2VecNet(parse_hyperparameters(hp)).eval()


@pytest.mark.parametrize("network", ["pooled_embedding", "hcnn", "bilstm"])
@pytest.mark.parametrize(
    "tying",
    [
        {"tied_encoder_weight": True},
        {"tied_token_embedding_weight": True, "enc1_network": "enc0"},
        {"tied_token_embedding_weight": True, "token_embedding_storage_type": "row_sparse"},
        {},
    ],
)
def test_both_sides_in_one_pass_equal_each_side_alone(network, tying):
    model = net(network, **tying)
    (ids0, len0), (ids1, len1) = batch(6, 9, 30, seed=2), batch(4, 5, 30, seed=3)  # widths differ
    together = model.encode_pair(ids0[:4], len0[:4], ids1, len1)
    alone = model.encode(0, ids0[:4], len0[:4]), model.encode(1, ids1, len1)
    for got, want in zip(together, alone):
        assert torch.allclose(got, want, atol=1e-5)


def test_hcnn_convolution_is_conv1d_with_same_padding():
    model = net("hcnn", enc0_cnn_filter_width=2, enc0_layers=3)  # even width: padding one-sided
    encoder = model.encoder(0)
    h = torch.randn(5, 11, 8)
    for conv in encoder.convs:
        total = conv.dilation[0] * (encoder.filter_width - 1)
        expected = conv(torch.nn.functional.pad(h.transpose(1, 2), (total // 2, total - total // 2)))
        assert torch.allclose(encoder._convolve(conv, h), expected.transpose(1, 2), atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_equals_the_packed_bidirectional_lstm(layers):
    encoder = net("bilstm", enc0_layers=layers).encoder(0).train()  # dropout 0: training is exact
    ids, lengths = batch(7, 9, 30, seed=4)
    out = encoder(ids, lengths)
    vectors = encoder.embedding(ids)
    packed = pack_padded_sequence(vectors, lengths, batch_first=True, enforce_sorted=False)
    states, _ = pad_packed_sequence(encoder.lstm(packed)[0], batch_first=True, total_length=9)
    expected = encoder.project(masked_mean_max(states, padding_mask(lengths, 9)))
    assert torch.allclose(out, expected, atol=1e-5)
    weights = list(encoder.lstm.parameters())
    got, want = torch.autograd.grad(out.sum(), weights), torch.autograd.grad(expected.sum(), weights)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_dropout_keeps_1_minus_p_scaled_and_is_off_in_eval(kernels_or_fallback):
    torch.manual_seed(0)
    dropout, x = Dropout(0.4), torch.ones(200_000)
    assert isinstance(dropout, torch.nn.Dropout)
    out = dropout(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.6) < 0.005
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / 0.6))
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0)(x), x)
    x.requires_grad_(True)
    Dropout(0.4)(x).sum().backward()  # the gradient passes where the value was kept, scaled
    assert x.grad.unique().tolist() == [0.0, pytest.approx(1 / 0.6)]


@needs_c_kernels
@pytest.mark.parametrize(
    "shape, threads",
    [
        ((1,), 1),
        ((7,), 2),
        ((3, 5, 7), 2),
        ((512, 512), 1),
        ((512, 512), 2),
        ((100_001,), 3),
        ((3, 33_335), 7),
    ],
)
def test_dropout_masks_are_the_same_bits_from_c_and_from_numpy(shape, threads, monkeypatch):
    """The stream is counter-based: any split of a mask over threads (odd sizes cut into several
    parts included), and numpy where the C loop was not built, give the same mask for a seed."""
    state = torch.get_rng_state()
    with torch_threads(threads):
        from_c = keep_mask(shape, 0.3)
    torch.set_rng_state(state)
    monkeypatch.setattr(native, "kernels", None)
    assert torch.equal(keep_mask(shape, 0.3), from_c)


def test_dropout_masks_follow_torch_manual_seed_and_differ_between_calls():
    torch.manual_seed(7)
    first, second = keep_mask((1000,), 0.5), keep_mask((1000,), 0.5)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((1000,), 0.5), first) and not torch.equal(first, second)


def test_dropout_stream_is_splitmix64_and_its_threshold_is_p():
    """Draw i is the low (even i) or high (odd i) half of splitmix64's word i // 2 (its published
    first output for seed 0 is 0xE220A8397B1DCDAF), kept when at least the threshold."""
    first_word = 0xE220A8397B1DCDAF
    low, high = first_word & 0xFFFFFFFF, first_word >> 32
    assert keep_mask_numpy(2, 0, low).tolist() == [True, high >= low]
    assert keep_mask_numpy(2, 0, low + 1).tolist() == [False, high >= low + 1]
    draws = keep_mask_numpy(1_000_001, 12345, round(0.25 * 2**32))
    assert abs(draws.mean() - 0.75) < 0.002


def test_dropout_in_float64_scales_in_float64():
    mask = keep_mask((10_000,), 0.3, dtype=torch.float64)
    assert mask.dtype == torch.float64
    assert mask.unique().tolist() == [0.0, 1 / 0.7]
