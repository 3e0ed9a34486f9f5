"""Argument types shared by the ``prism`` subcommands: a bad value is argparse's usage error
(exit 2, the flag named), never a traceback later."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def finite_seconds(text: str) -> float:
    """Seconds >= 0 that a loop can run out of: not nan, not inf."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


__all__ = ["finite_seconds", "positive_int"]
