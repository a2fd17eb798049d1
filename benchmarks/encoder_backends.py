"""A sequence encoder's inference pass: eager PyTorch against ``torch.compile`` and ONNX Runtime.

The server runs hcnn and bilstm through their own ``forward`` on length-sorted chunks
(``object2vec.nn.inference``). This script times that pass for 1,000 sequences of 5-32 tokens
with ``benchmarks/serve.py``'s model (20,000-token vocabulary, 256-dimensional tokens,
``enc_dim`` 256, two layers), chunk after chunk on ``--threads`` torch threads (with 2 or more,
every operation is split over them, where the server would run chunks side by side on one
thread each: ``--threads 1`` is the server's case), and the same chunks through:

- ``compile``: ``torch.compile(encoder, dynamic=True)`` (its warm-up, compilation included, is
  printed apart);
- ``onnxruntime``: the encoder exported by ``torch.onnx.export`` (dynamic batch and length) and
  run by an ONNX Runtime session with as many intra-op threads (needs ``pip install onnxruntime
  onnx``; skipped when absent).

Eager runs alternate with each backend's, ``--repeat`` passes each; the table gives medians, the
ratio to the eager median measured beside it, and the largest difference from the eager
encodings. Not a dependency of the project: this decides whether one is worth taking.

    python benchmarks/encoder_backends.py [--encoders hcnn,bilstm] [--threads 1] [--repeat 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import serve
import torch

from object2vec.columns import SequenceColumn
from object2vec.nn import inference
from object2vec.serving.predictor import Predictor


def request_chunks(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The padded chunks the server would run for 1,000 sequences of 5-32 tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(serve.MIN_LEN, serve.MAX_LEN + 1, size=1000)
    sequences = [rng.integers(0, serve.VOCAB, size=n).tolist() for n in lengths]
    column = SequenceColumn.from_lists(sequences)
    order = np.argsort(column.lengths, kind="stable")
    chunks = inference.length_chunks(column.lengths[order], 1000, inference.CPU_TOKEN_BUDGET)
    return [column.padded(order[chunk]) for chunk in chunks]


def onnx_runner(encoder: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], threads: int):
    import onnxruntime

    graph = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            example,
            graph,
            input_names=["ids", "lengths"],
            output_names=["encoding"],
            dynamic_axes={"ids": {0: "rows", 1: "length"}, "lengths": {0: "rows"}},
            dynamo=False,
        )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})[0])

    return run


def one_pass(run, chunks) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = torch.cat([run(ids, lengths) for ids, lengths in chunks])
    return time.perf_counter() - start, out


def measure(encoder_name: str, backends: list[str], threads: int, repeat: int, root: Path) -> None:
    encoder = Predictor.load(serve.write_model(encoder_name, 256, root)).net.encoder(0).eval()
    chunks = request_chunks()
    _, reference = one_pass(encoder, chunks)
    print(f"\n{encoder_name}: 1,000 sequences in {len(chunks)} chunks, {threads} thread(s)")
    print("| backend | ms (median) | eager beside it, ms | ratio | max abs diff | warm-up s |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend in backends:
        start = time.perf_counter()
        if backend == "compile":
            run = torch.compile(encoder, dynamic=True)
        elif backend == "onnxruntime":
            if importlib.util.find_spec("onnxruntime") is None:
                print("| onnxruntime | not installed | | | | |")
                continue
            run = onnx_runner(encoder, chunks[-1], threads)
        else:
            run = encoder
        _, out = one_pass(run, chunks)  # compiles, or warms the session
        warm_up = time.perf_counter() - start
        times, eager = [], []
        for _ in range(repeat):
            times.append(one_pass(run, chunks)[0])
            eager.append(one_pass(encoder, chunks)[0])
        mine, theirs = statistics.median(times) * 1e3, statistics.median(eager) * 1e3
        diff = float((out - reference).abs().max())
        ratio = theirs / mine
        print(f"| {backend} | {mine:,.1f} | {theirs:,.1f} | {ratio:.2f}x | {diff:.1e} | {warm_up:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoders", default="hcnn,bilstm")
    parser.add_argument("--backends", default="eager,compile,onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        for name in args.encoders.split(","):
            measure(name, args.backends.split(","), args.threads, args.repeat, Path(root))


if __name__ == "__main__":
    main()
