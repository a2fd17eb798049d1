"""object2vec: an open, self-hosted implementation of the Object2Vec pair-embedding algorithm."""

from .api import Object2Vec, load
from .errors import Object2VecError
from .hyperparameters import HyperparameterError, parse_hyperparameters

__all__ = ["HyperparameterError", "Object2Vec", "Object2VecError", "load", "parse_hyperparameters"]
__version__ = "0.1.0"
