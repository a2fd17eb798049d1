"""SparseRowAdam: torch.optim.SparseAdam's update on the used rows, other rows left bit for bit.

Both ways of making the update are tested: the C loop (``object2vec/_kernels.c``) and PyTorch's
kernels, which run where the extension was not built (``way`` below)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_c_kernels, torch_threads

from object2vec import native
from object2vec.training.sparse_adam import SparseRowAdam, distinct_rows, lazy_zeros

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sparse_grad(rows: list[int] | torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, check_invariants=True)


@pytest.mark.parametrize("chunk", [None, 7])  # one block per step, or rows in chunks of 7
def test_matches_sparse_adam_step_for_step(chunk, kernels_or_fallback, monkeypatch):
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


def test_unused_rows_and_their_moments_stay_untouched(kernels_or_fallback):
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


def test_dense_gradients_are_refused(kernels_or_fallback):
    table = torch.nn.Parameter(torch.zeros(5, 2))
    table.grad = torch.ones(5, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        SparseRowAdam([table]).step()


@needs_c_kernels
@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="the C loop follows PyTorch's kernel for CPUs with FMA (its other kernels round differently)",
)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.999), (0.3, 0.99)])  # 1 - beta1 below, at, over 0.5
def test_the_c_extension_gives_the_bits_of_pytorchs_kernel(threads, betas, monkeypatch):
    """The same weights and moments, bit for bit, after 20 steps (rows of 16 values in blocks of
    5,000 rows: PyTorch's kernel then takes every value through its vector loop, whose arithmetic
    the C loop follows; its scalar loop for values left over at the end of a block rounds
    differently). 80,000 values a step: over the C loop's threshold for a second thread."""
    torch.manual_seed(3)
    tables = [torch.nn.Parameter(torch.randn(8000, 16)) for _ in range(2)]
    tables[1].data.copy_(tables[0].data)
    optimizers = [SparseRowAdam([table], lr=0.01, betas=betas) for table in tables]
    extension = native.kernels
    with torch_threads(threads):
        for _ in range(20):
            rows = torch.randperm(8000)[:5000]
            grad = sparse_grad(rows, torch.randn(5000, 16), (8000, 16))
            for table, optimizer, module in zip(tables, optimizers, (extension, None)):
                monkeypatch.setattr(native, "kernels", module)
                table.grad = grad
                optimizer.step()
    assert torch.equal(tables[0], tables[1])
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizers[0].state[tables[0]][name], optimizers[1].state[tables[1]][name])


@needs_c_kernels
def test_the_c_extension_splits_rows_between_threads_without_changing_them():
    """2,000 rows of 64 values: over the extension's threshold for a second and a third thread."""
    results = []
    for threads in (1, 2, 3):
        torch.manual_seed(4)
        table = torch.nn.Parameter(torch.randn(5000, 64))
        optimizer = SparseRowAdam([table], lr=0.01)
        with torch_threads(threads):
            for _ in range(3):
                table.grad = sparse_grad(torch.randperm(5000)[:2000], torch.randn(2000, 64), (5000, 64))
                optimizer.step()
        results.append(table.detach().clone())
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@needs_c_kernels
@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's memory map")
def test_the_c_loops_share_torchs_openmp_runtime():
    """One libgomp in a process that loads torch and the extension: the extension's threads are
    torch's pool, not a second one competing with it for the cores (see ``run_split`` in
    ``_kernels.c``). In a process of its own: a test process may have loaded other libraries
    that bring their own runtime (faiss-cpu's wheel does)."""
    script = (
        "import pathlib, numpy as np, torch\n"
        "from object2vec import native\n"
        # a parallel region
        "native.kernels.dropout_mask(np.empty(1 << 17, np.float32), 1, 1 << 31, 2.0, 2)\n"
        "maps = pathlib.Path('/proc/self/maps').read_text().splitlines()\n"
        "print(sorted({line.split()[-1] for line in maps if 'gomp' in line}))\n"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert len(ast.literal_eval(found.stdout)) <= 1, found.stdout


def test_a_step_counts_as_a_change_of_the_tables(kernels_or_fallback):
    """Code that caches what it derives from a table (the projected token tables of
    ``nn/inference.py``) knows by the tensor's version that a step changed it."""
    table = torch.nn.Parameter(torch.randn(50, 4))
    optimizer = SparseRowAdam([table], lr=0.1)
    table.grad = sparse_grad([1, 2], torch.ones(2, 4), (50, 4))
    before = table._version
    optimizer.step()
    assert table._version > before
    assert all(optimizer.state[table][name]._version > 0 for name in ("exp_avg", "exp_avg_sq"))


@needs_c_kernels
def test_the_c_extension_refuses_what_it_cannot_update_safely():
    """Checked before any row is written: a bad call changes nothing."""
    extension = native.kernels
    weight, exp_avg, exp_avg_sq = (np.ones((10, 4), np.float32) for _ in range(3))
    grad = np.ones((2, 4), np.float32)
    coefficients = (0.001, 0.1, 0.999, 0.001, 1.0, 1e-8, 1)

    def call(*, rows=(1, 3), weight=weight, grad=grad):
        extension.row_adam_step(weight, exp_avg, exp_avg_sq, grad, np.asarray(rows, np.int64), *coefficients)

    with pytest.raises(IndexError, match="row 10 is outside a table of 10 rows"):
        call(rows=(1, 10))
    with pytest.raises(IndexError, match="row -1"):
        call(rows=(-1, 3))
    with pytest.raises(ValueError, match="strictly increasing"):
        call(rows=(3, 3))
    with pytest.raises(ValueError, match="one row of the weight's width"):
        call(grad=np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="weight must be a 2-D C-contiguous float32 array"):
        call(weight=np.ones((10, 4), np.float64))
    with pytest.raises(TypeError, match="rows must be a 1-D contiguous int64 array"):
        rows = np.asarray([1, 3], np.int32)
        extension.row_adam_step(weight, exp_avg, exp_avg_sq, grad, rows, *coefficients)
    with pytest.raises((TypeError, ValueError, BufferError)):
        call(weight=np.ones((4, 10), np.float32).T)  # not C-contiguous
    assert (weight == 1).all() and (exp_avg == 1).all() and (exp_avg_sq == 1).all()
    call()
    assert not (weight[[1, 3]] == 1).any() and (weight[[0, 2, 4]] == 1).all()


def test_tables_the_c_extension_cannot_take_are_updated_by_pytorchs_kernels():
    """float64 tables (and tables on other devices) take the PyTorch path: same update."""
    torch.manual_seed(5)
    single = torch.nn.Parameter(torch.randn(50, 8))
    double = torch.nn.Parameter(single.detach().double())
    optimizers = [SparseRowAdam([single], lr=0.01), SparseRowAdam([double], lr=0.01)]
    for _ in range(5):
        rows, values = torch.randint(0, 50, (20,)), torch.randn(20, 8)
        single.grad = sparse_grad(rows, values, (50, 8))
        double.grad = sparse_grad(rows, values.double(), (50, 8))
        for optimizer in optimizers:
            optimizer.step()
    assert torch.allclose(single.double(), double, atol=1e-6)


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
