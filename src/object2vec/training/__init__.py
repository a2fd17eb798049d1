"""Training: JSON Lines channels -> batches (:mod:`.data`), the fit loop (:mod:`.fit`), data-parallel
runs under torchrun (:mod:`.distributed`) and the untrained network with its pretrained rows
(:mod:`.network`)."""

from . import distributed
from .data import DataError, PairDataset, load_pairs
from .fit import TrainResult, fit, seed_everything
from .network import build_network

__all__ = [
    "DataError",
    "distributed",
    "PairDataset",
    "TrainResult",
    "build_network",
    "fit",
    "load_pairs",
    "seed_everything",
]
