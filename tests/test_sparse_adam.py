"""SparseRowAdam: torch.optim.SparseAdam's update on the used rows, other rows left bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from object2vec.training.sparse_adam import SparseRowAdam, distinct_rows, lazy_zeros

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sparse_grad(rows: list[int] | torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=True)


@pytest.mark.parametrize("chunk", [None, 7])  # one block per step, or rows in chunks of 7
def test_matches_sparse_adam_step_for_step(chunk, monkeypatch):
    if chunk:
        monkeypatch.setattr("object2vec.training.sparse_adam.CHUNK_ELEMENTS", chunk * 16)
    torch.manual_seed(0)
    reference = torch.nn.Parameter(torch.randn(200, 16))
    ours = torch.nn.Parameter(reference.detach().clone())
    expected, got = torch.optim.SparseAdam([reference], lr=0.01), SparseRowAdam([ours], lr=0.01)
    for _ in range(30):
        rows = torch.randint(0, 100, (60,))  # duplicates, unsorted; rows 100.. never used
        values = torch.randn(60, 16)
        reference.grad, ours.grad = (sparse_grad(rows, values, (200, 16)) for _ in range(2))
        expected.step()
        got.step()
    assert torch.allclose(ours, reference, atol=1e-6, rtol=1e-5)
    state = got.state[ours]
    assert torch.allclose(state["exp_avg"], expected.state[reference]["exp_avg"], atol=1e-7)
    assert torch.allclose(state["exp_avg_sq"], expected.state[reference]["exp_avg_sq"], atol=1e-9)
    assert float(state["step"]) == 30


def test_unused_rows_and_their_moments_stay_untouched():
    torch.manual_seed(1)
    table = torch.nn.Parameter(torch.randn(50, 4))
    before = table.detach().clone()
    optimizer = SparseRowAdam([table], lr=0.1)
    for _ in range(5):
        table.grad = sparse_grad([3, 7, 7, 40], torch.randn(4, 4), (50, 4))
        optimizer.step()
    used = torch.zeros(50, dtype=torch.bool)
    used[[3, 7, 40]] = True
    assert torch.equal(table[~used], before[~used])
    assert not torch.equal(table[used], before[used])
    assert not optimizer.state[table]["exp_avg"][~used].any()


def test_dense_gradients_are_refused():
    table = torch.nn.Parameter(torch.zeros(5, 2))
    table.grad = torch.ones(5, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        SparseRowAdam([table]).step()


def test_distinct_rows_sorts_and_sums_only_when_needed():
    values = torch.arange(8.0).view(4, 2)
    rows, summed = distinct_rows(sparse_grad([5, 1, 5, 2], values, (10, 2)))
    assert rows.tolist() == [1, 2, 5] and summed.tolist() == [[2, 3], [6, 7], [4, 6]]
    ordered = sparse_grad([1, 2, 5, 9], values, (10, 2))  # sorted, distinct, flag unset
    rows, same = distinct_rows(ordered)
    assert rows.tolist() == [1, 2, 5, 9] and same.data_ptr() == ordered._values().data_ptr()


def test_lazy_zeros_are_zeros_of_the_right_shape():
    like = torch.ones(1000, 3)
    zeros = lazy_zeros(like)
    assert zeros.shape == like.shape and zeros.dtype == like.dtype and not zeros.any()
    zeros[5] = 1.0
    assert zeros.sum() == 3


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads resident memory from /proc")
def test_lazy_zeros_take_memory_only_for_the_rows_written():
    """64 MB of moments, 100 rows written far apart: a few hundred KB become resident (4 KB pages),
    not the 64 MB that huge pages or ``torch.zeros`` would take."""
    before = resident_kb()
    zeros = lazy_zeros(torch.empty(262_144, 64))
    zeros[torch.arange(0, 262_144, 2_622)] = 1.0
    assert resident_kb() - before < 8 * 1024
    assert zeros.sum() == 100 * 64


def resident_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
