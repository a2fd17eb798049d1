"""Shared fixtures: small files and hyperparameter sets every test module can build on."""

from __future__ import annotations

import gzip
import re
import socket
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import torch

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
    """A loopback port that was free a moment ago (for servers in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """:func:`find_free_port`, usable from module-scoped fixtures too."""
    return find_free_port
