"""Batch transform, at the import path it has always had: see :mod:`object2vec.serving.transform`."""

from .serving.transform import TransformError, TransformSummary, run_transform, transform

__all__ = ["TransformError", "TransformSummary", "run_transform", "transform"]
