"""The Object2Vec network: token tables, encoders, comparator, MLP and output head."""

from .encoders import Encoder, build_encoder, make_token_table
from .model import Object2VecNet

__all__ = ["Encoder", "Object2VecNet", "build_encoder", "make_token_table"]
