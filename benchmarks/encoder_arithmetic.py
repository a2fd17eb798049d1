"""How close the sequence encoders' serving forward runs to this machine's arithmetic limit.

For ``hcnn`` and ``bilstm`` (``benchmarks/serve.py``'s model: 256-dimensional tokens, 2 layers,
``enc_dim`` 256) this embeds 1,000 sequences of 5-32 tokens through the serving path
(:meth:`Predictor.embed`: length-sorted chunks, no work on padding) and compares the FLOP rate it
reaches with a large float32 matrix product (2048 x 2048 x 2048) timed in the same process,
interleaved, with the same threads. The FLOPs are counted from the architecture, on real
tokens only (padding a chunk adds a little work not counted here, so the rate is a lower bound):

- ``hcnn``: per token and layer, one width-3 convolution over 256 channels: 3 x 256 x 256
  multiply-adds;
- ``bilstm``: per token, layer 1 (input 256) runs 4 gates of 256 over input and hidden state in
  each direction: 2 x (4 x 256 x (256 + 256)); layer 2 reads both directions (input 512):
  2 x (4 x 256 x (512 + 256)) multiply-adds.

The pooling and the final linear map are a few per cent and are not counted. A matrix product
of that size is the fastest float32 arithmetic these cores do, so "% of sgemm" says how much
faster any implementation of the same network could answer on them.

    python benchmarks/encoder_arithmetic.py [--threads 2] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serve import MAX_LEN, MIN_LEN, MODEL, VOCAB, write_model

from object2vec.serving.predictor import Predictor

TOKEN_DIM = int(MODEL["enc0_token_embedding_dim"])
SEQUENCES = 1000


def mac_per_token(encoder: str, dim: int = TOKEN_DIM) -> int:
    """Multiply-adds per real token of the 2-layer encoder (see the module docstring)."""
    if encoder == "hcnn":
        return 2 * 3 * dim * dim
    if encoder == "bilstm":
        return 2 * (4 * dim * (dim + dim)) + 2 * (4 * dim * (2 * dim + dim))
    raise ValueError(encoder)


def sgemm_gflops(size: int = 2048, products: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    started = time.perf_counter()
    for _ in range(products):
        a @ b
    return products * 2 * size**3 / (time.perf_counter() - started) / 1e9


def measure(encoder: str, root: Path, repeat: int) -> dict:
    predictor = Predictor.load(write_model(encoder, 256, root), device="cpu")
    rng = np.random.default_rng(0)
    sequences = [
        rng.integers(1, VOCAB, size=rng.integers(MIN_LEN, MAX_LEN + 1)).tolist() for _ in range(SEQUENCES)
    ]
    flop = 2 * mac_per_token(encoder) * sum(map(len, sequences))
    predictor.embed(in0=sequences)  # warm-up
    sgemm_gflops()
    gemm, seconds = [], []
    for _ in range(repeat):
        gemm.append(sgemm_gflops())
        started = time.perf_counter()
        predictor.embed(in0=sequences)
        seconds.append(time.perf_counter() - started)
    rate, forward = statistics.median(gemm), statistics.median(seconds)
    return {
        "encoder": encoder,
        "gflop": flop / 1e9,
        "ms": 1000 * forward,
        "gflops": flop / forward / 1e9,
        "sgemm": rate,
        "share": flop / forward / 1e9 / rate,
        "measured": SEQUENCES / forward,
        "bound": SEQUENCES * rate * 1e9 / flop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--encoders", default="hcnn,bilstm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = f"{SEQUENCES:,} sequences of {MIN_LEN}-{MAX_LEN} tokens"
    print(f"{args.threads} thread(s), {shape}, median of {args.repeat}")
    print(
        "| encoder | GFLOP per 1,000 | forward ms | GFLOP/s | sgemm GFLOP/s | % of sgemm "
        "| embeddings/s | bound at sgemm rate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in args.encoders.split(","):
            r = measure(encoder, Path(tmp), args.repeat)
            print(
                f"| {encoder} | {r['gflop']:.1f} | {r['ms']:,.0f} | {r['gflops']:.1f} | {r['sgemm']:.1f} "
                f"| {r['share']:.0%} | {r['measured']:,.0f} | {r['bound']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
