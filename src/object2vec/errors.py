"""The one base of every error a user can fix, so a caller (the CLI, a container) catches one type.

Each layer derives its own error from :class:`Object2VecError` where it detects the mistake
(:class:`~object2vec.hyperparameters.HyperparameterError`, ``DataError`` for training records,
``RequestError`` for HTTP bodies, ...); anything that is not an ``Object2VecError`` is a bug and
keeps its traceback. The base is a ``ValueError`` because every one of them is a bad value given
by the user: a setting, a record, a file, a request.

This module imports nothing of the package.
"""

from __future__ import annotations


class Object2VecError(ValueError):
    """A mistake in what the user gave; the message says what and where."""


class UsageError(Object2VecError):
    """A command or call used wrongly: a missing argument, a file or directory that does not exist,
    a device that cannot be used here."""
