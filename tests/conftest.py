"""Shared fixtures: small files and hyperparameter sets every test module can build on."""

from __future__ import annotations

import contextlib
import gzip
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import torch

from object2vec import native

#: The smallest valid set of hyperparameters for a fast model on single-token inputs
#: (vocabularies of object2vec.sample_data.latent_pairs' defaults, 50 and 60).
TINY_HYPERPARAMETERS = {
    "enc0_network": "pooled_embedding",
    "enc0_max_seq_len": "1",
    "enc0_vocab_size": "50",
    "enc1_vocab_size": "60",
    "enc0_token_embedding_dim": "16",
    "enc_dim": "16",
    "mlp_layers": "1",
    "mlp_dim": "16",
    "mlp_activation": "relu",
    "mini_batch_size": "32",
    "epochs": "3",
}


@pytest.fixture
def tiny_hp() -> dict[str, str]:
    """A fresh copy of :data:`TINY_HYPERPARAMETERS` (a SageMaker-style string map)."""
    return dict(TINY_HYPERPARAMETERS)


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """``write_jsonl(records_or_lines, name="data.jsonl")`` writes a JSON Lines file under
    ``tmp_path`` and returns its path. Items that are ``str`` are written verbatim (to make
    broken lines); anything else is JSON-encoded. A name ending in ``.gz`` is gzip-compressed."""

    def write(items, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        body = b"".join(
            (item.encode() if isinstance(item, str) else orjson.dumps(item)) + b"\n" for item in items
        )
        path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
        return path

    return write


NOT_BUILT = "the C extension was not built (no C compiler at install)"

#: Skip a test of a C extension itself where it was not built (no C compiler).
needs_c_kernels = pytest.mark.skipif(native.kernels is None, reason=NOT_BUILT)
needs_json_rows = pytest.mark.skipif(native.json_rows is None, reason=NOT_BUILT)


def with_c_or_fallback(request, monkeypatch, module: str, fallback: str):
    """The body of the fixtures below: with ``request.param == fallback`` the C extension
    ``native.<module>`` is set to None, so its callers take their fallback; else a test needing it
    is skipped where it was not built."""
    if request.param == fallback:
        monkeypatch.setattr(native, module, None)
    elif getattr(native, module) is None:
        pytest.skip(NOT_BUILT)
    return request.param


@pytest.fixture(params=["c_kernels", "fallback"])
def kernels_or_fallback(request, monkeypatch):
    """Runs a test once with the C loops (``object2vec/_kernels.c``) and once with the PyTorch or
    numpy path that stands in for them where they were not built."""
    return with_c_or_fallback(request, monkeypatch, "kernels", "fallback")


@pytest.fixture(params=["c_writer", "orjson"])
def answer_writer(request, monkeypatch):
    """Runs a test once with answers written by ``object2vec/_jsonrows.c`` and once by orjson,
    which writes them where the extension was not built."""
    return with_c_or_fallback(request, monkeypatch, "json_rows", "orjson")


@contextlib.contextmanager
def torch_threads(count: int):
    """This thread's torch thread count set to ``count``, and set back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest on one intra-op thread, and CI shares two cores between
    processes; use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: A metric line as training prints it: ``validation:accuracy=0.9`` (each epoch, and the saved
#: model's values last).
METRIC_LINE = re.compile(r"^(validation|test):(accuracy|cross_entropy|mean_squared_error)=(\S+)$", re.M)


def parse_metric_lines(text: str) -> dict[str, float]:
    """``{"validation:accuracy": 0.9, ...}`` from a training log; a metric printed several times
    (once per epoch, then the saved model's) keeps its last value, the saved model's."""
    return {f"{channel}:{name}": float(value) for channel, name, value in METRIC_LINE.findall(text)}


@pytest.fixture
def printed_metrics() -> Callable[[str], dict[str, float]]:
    """:func:`parse_metric_lines`, for tests that read what training printed."""
    return parse_metric_lines


def find_free_port() -> int:
    """A loopback port that was free a moment ago: only for a port several processes must agree
    on before any of them binds it (torchrun's rendezvous across two "hosts"); a server binds
    port 0 itself and reports the port it got (:func:`wait_until_listening`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """:func:`find_free_port`, usable from module-scoped fixtures too."""
    return find_free_port


#: The line ``object2vec serve`` prints once it listens, with the port it really bound.
LISTENING_LINE = re.compile(r"^listening on (http://\S+:(\d+))$", re.M)


def wait_until_listening(process: subprocess.Popen, timeout: float = 60.0) -> str:
    """The base URL an ``object2vec serve`` process (started with ``--port 0``, stdout piped as
    text) reports once it listens; fails the test with the process's output if it exits or stays
    silent. The port is the one the server bound itself, so no other process can take it first.
    A thread keeps draining the output afterwards, so the server never blocks on a full pipe."""
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline, seen = time.monotonic() + timeout, []
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:  # the process closed its output: it has exited
            break
        seen.append(line)
        match = LISTENING_LINE.match(line.rstrip("\n"))
        if match:
            return match.group(1)
    process.kill()
    pytest.fail("the server did not report its address:\n" + "".join(seen))


# --- the network's own answers ------------------------------------------------------------------


def train_short_sequence_model(root: Path, vocab: int, dim: int, records: int, **settings: str):
    """A pooled_embedding model trained for one epoch on ``records`` latent pairs of at most 4
    tokens (vocabulary ``vocab`` on both sides, every width ``dim``): the model the batch
    transform tests answer with. ``settings`` adds or overrides hyperparameters."""
    from object2vec import Object2Vec
    from object2vec.sample_data import latent_pairs, write_jsonl

    hp = {
        "enc0_network": "pooled_embedding",
        "enc0_max_seq_len": "4",
        "enc1_max_seq_len": "4",
        "enc0_vocab_size": str(vocab),
        "enc1_vocab_size": str(vocab),
        "enc0_token_embedding_dim": str(dim),
        "enc_dim": str(dim),
        "mlp_layers": "1",
        "mlp_dim": str(dim),
        "epochs": "1",
        **settings,
    }
    data = write_jsonl(latent_pairs(records, vocab, vocab, max_len0=4, max_len1=4), root / "train.jsonl")
    return Object2Vec(hp).fit(data, seed=0, log=lambda *_: None, progress=False)


def direct_embeddings(net, side: int, sequences, cap: int | None = None) -> np.ndarray:
    """Each sequence encoded alone by encoder ``side`` of ``net``, called directly
    (``net.encoders[side]``; a tied network has one), cut to that side's ``max_seq_len`` (and
    ``cap``): what inference must answer, computed without the predictor's dispatch, batching or
    padding."""
    encoder = net.encoders[side if len(net.encoders) > 1 else 0]
    limit = net.hp.encoder(side).max_seq_len if cap is None else min(cap, net.hp.encoder(side).max_seq_len)
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        vectors = [
            encoder(torch.tensor([list(s)[:limit]]), torch.tensor([len(list(s)[:limit])])) for s in sequences
        ]
    net.train(was_training)
    return torch.cat(vectors).float().numpy()


def direct_scores(net, in0, in1, caps: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    """Pair scores from the network's parts called one by one: enc0(in0) and enc1(in1), each
    comparator operator as the reference defines it, in ``comparator_list`` order, the MLP, the
    output layer, then softmax (or the value itself for regression)."""
    a = torch.from_numpy(direct_embeddings(net, 0, in0, caps[0]))
    b = torch.from_numpy(direct_embeddings(net, 1, in1, caps[1]))
    operators = {
        "hadamard": lambda: a * b,
        "concat": lambda: torch.cat([a, b], -1),
        "abs_diff": lambda: (a - b).abs(),
    }
    was_training = net.training
    net.eval()
    with torch.inference_mode():
        out = net.head(net.mlp(torch.cat([operators[name]() for name in net.hp.comparator_list], -1)))
    net.train(was_training)
    return out[:, 0].numpy() if net.hp.output_layer == "mean_squared_error" else out.softmax(-1).numpy()
