"""Inference: a loaded model (:mod:`.predictor`), the SageMaker HTTP protocol (:mod:`.protocol`:
bodies and headers <-> instances), the ASGI server (:mod:`.server`), batch transform
(:mod:`.transform`) and the serving defaults (:mod:`.settings`)."""

from .predictor import InputError, Predictor
from .settings import ServeSettings

__all__ = ["InputError", "Predictor", "ServeSettings", "create_app"]


def create_app(predictor: Predictor, settings: ServeSettings, index=None, threads: int = 1):
    """The ASGI application answering with ``predictor`` (and ``index``, a
    :class:`~object2vec.index.NeighborIndex`, on ``POST /neighbors``; ``threads`` may write one
    answer; see :func:`.server.create_app`)."""
    from .server import create_app as create

    return create(predictor, settings, index, threads)
