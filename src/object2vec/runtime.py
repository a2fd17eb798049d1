"""Where code runs and how it reports: the device choice and the logger type every layer shares."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Progress and metric lines go through a function taking one line (``print`` by default).
Logger = Callable[[str], None]


def quiet(_line: str) -> None:
    """A :data:`Logger` that drops every line."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``, ``""`` or ``"auto"``: CUDA when present, else the CPU; anything else as named."""
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
