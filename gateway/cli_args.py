"""Argument types shared by the ``prism`` subcommands: a bad value is argparse's usage error
(exit 2, the flag named), never a traceback later."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


__all__ = ["positive_int"]
