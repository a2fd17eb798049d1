"""A request's stages in-process, each with the C extension and with the path it stands in for.

For ``benchmarks/serve.py``'s pooled model and request bodies (1,000 instances of 5-32 tokens,
and single instances): decoding the body (``_jsonrows.c``'s reader, else orjson and the columnar
checks), the pass (``_kernels.c``'s ``bag_mean`` column by column where it applies, else
``embedding_bag``), and writing the answer (``_jsonrows.c``'s writer on one thread and on two,
else orjson). The two ways alternate, ``--rounds`` times; each printed figure is the median of
``--calls`` calls in one round, so the rounds show the machine's spread.

    python benchmarks/json_stages.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import serve
import torch

from object2vec import native
from object2vec.serving import protocol
from object2vec.serving.predictor import Predictor


def median_ms(call: Callable[[], object], calls: int) -> float:
    for _ in range(5):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def without(module: str, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the C extension ``native.<module>`` set aside (its fallback runs)."""

    def fallback() -> object:
        saved = getattr(native, module)
        setattr(native, module, None)
        try:
            return call()
        finally:
            setattr(native, module, saved)

    return fallback


def stages(predictor: Predictor, body: bytes, threads: int) -> list[tuple[str, Callable[[], object]]]:
    fmt, vocab = protocol.BodyFormat(), (serve.VOCAB, serve.VOCAB)
    request = protocol.decode_request(body, fmt, vocab)
    rows = predictor.answer([request])[0]

    def decode() -> object:
        return protocol.decode_request(body, fmt, vocab)

    def answer() -> object:
        return predictor.answer([request])

    def write(count: int) -> Callable[[], object]:
        return lambda: protocol.encode_rows(rows, protocol.EMBEDDINGS, protocol.JSON, count)

    return [
        ("decode: C reader", decode),
        ("decode: orjson + columns", without("json_rows", decode)),
        ("pass: C loop where it applies", answer),
        ("pass: PyTorch", without("kernels", answer)),
        (f"write: C writer, {threads} threads", write(threads)),
        ("write: C writer, 1 thread", write(1)),
        ("write: orjson", without("json_rows", write(1))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and the writer's)")
    args = parser.parse_args()
    if native.kernels is None or native.json_rows is None:
        raise SystemExit("the C extensions were not built: run `pip install -e .` with a C compiler")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        predictor = Predictor.load(serve.write_model("pooled_embedding", 256, Path(tmp)), device="cpu")
    predictor.prepare()
    bodies = serve.bodies_for(1000, 0)
    print(f"{args.threads} torch threads; medians per call, one column per round")
    for name, body, calls in (
        ("1,000 instances", bodies["embed"][0], 100),
        ("1 instance", bodies["single embed"][0], 2000),
    ):
        timings: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for label, call in stages(predictor, body, args.threads):
                timings.setdefault(label, []).append(median_ms(call, calls))
        print(f"\n{name} (ms)")
        for label, values in timings.items():
            print(f"  {label:34s}" + "".join(f"{value:9.3f}" for value in values))


if __name__ == "__main__":
    main()
