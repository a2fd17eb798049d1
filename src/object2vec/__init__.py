"""object2vec: an open, self-hosted implementation of the Object2Vec pair-embedding algorithm."""

from .api import Object2Vec, load
from .errors import Object2VecError
from .hyperparameters import HyperparameterError, parse_hyperparameters
from .index import load_index

__all__ = [
    "HyperparameterError",
    "Object2Vec",
    "Object2VecError",
    "load",
    "load_index",
    "parse_hyperparameters",
]
__version__ = "0.1.0"
