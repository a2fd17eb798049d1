"""The benchmarks' ``--set name=value`` option: hyperparameter overrides on top of a benchmark's own."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a hyperparameter (repeatable)",
    )


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["name=value", ...]`` -> ``{name: value}``; an item without ``=`` stops with a clear message."""
    pairs_ = [item.split("=", 1) for item in items]
    bad = [item for item, parts in zip(items, pairs_) if len(parts) != 2]
    if bad:
        raise SystemExit(f"--set expects name=value, got {bad[0]!r}")
    return {name.strip(): value.strip() for name, value in pairs_}
