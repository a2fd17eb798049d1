"""One step of ``SparseRowAdam`` alone: the C loop (``object2vec/_kernels.c``) against PyTorch's path.

The row-sparse update of a step touches a few thousand rows scattered over a large table. For
each case below (the StarSpace-shaped, document-embedding and million-row tables, with a step's
typical number of distinct rows), a fresh table and optimizer per way, the same sorted random rows
and gradient every step, the two ways alternating round by round, ``--steps`` timed steps each
after three untimed ones; the table gives the median ms a step and the ratio. The C loop is the
way training takes where the extension was built; PyTorch's path (rows gathered, stepped by the
fused Adam kernel, written back) is the fallback without it.

    python benchmarks/sparse_adam.py [--threads 2] [--steps 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from object2vec import native
from object2vec.training.sparse_adam import SparseRowAdam

#: (table rows, row width, distinct rows a step): StarSpace-shaped, document embedding, million-row.
CASES = [(50_000, 300, 6_700), (267_522, 300, 13_000), (3_000_000, 64, 13_000)]


def step_ms(rows: int, dim: int, used: int, kernels, steps: int) -> float:
    """Median ms of ``steps`` optimizer steps on ``used`` rows of a ``rows x dim`` table."""
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(rows - 1, generator=generator)[:used].add_(1).sort().values
    grad = torch.sparse_coo_tensor(
        chosen.unsqueeze(0), torch.randn(used, dim, generator=generator), (rows, dim), is_coalesced=True
    )
    table = torch.nn.Parameter(torch.randn(rows, dim, generator=generator))
    optimizer = SparseRowAdam([table])
    saved, native.kernels = native.kernels, kernels
    try:
        times = []
        for index in range(steps + 3):
            table.grad = grad
            started = time.perf_counter()
            optimizer.step()
            if index >= 3:
                times.append(time.perf_counter() - started)
    finally:
        native.kernels = saved
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if native.kernels is None:
        raise SystemExit("the C extension was not built: run `pip install -e .` with a C compiler")
    torch.set_num_threads(args.threads)
    print(f"SparseRowAdam step, {args.threads} thread(s), median of {args.steps} steps, {args.rounds} rounds")
    print("| table | rows a step | round | C loop ms | PyTorch path ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for rows, dim, used in CASES:
        for round_ in range(1, args.rounds + 1):
            c_loop = step_ms(rows, dim, used, native.kernels, args.steps)
            pytorch = step_ms(rows, dim, used, None, args.steps)
            print(
                f"| {rows:,} x {dim} | {used:,} | {round_} | {c_loop:.2f} | {pytorch:.2f} | "
                f"{pytorch / c_loop:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
