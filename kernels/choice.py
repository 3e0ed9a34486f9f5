"""Which kernel implementation ``$PRISM_KERNELS`` asks for, read without importing torch.

A gateway checks ``PRISM_KERNELS`` at start, so that a typo fails there rather than as a 502 on
every recommendation; a gateway that only fronts remote models must not pay for torch to do so.
This module therefore imports nothing but the standard library; the dispatcher
(``prism.kernels._dispatch``), which does need torch, builds on it.
"""

from __future__ import annotations

import os

__all__ = ["CHOICES", "ENV_BACKEND", "requested_backend"]

#: Environment variable that forces a backend: ``reference`` or ``triton`` (default: automatic).
ENV_BACKEND = "PRISM_KERNELS"

CHOICES = ("auto", "triton", "reference")


def requested_backend(requested: str | None = None) -> str:
    """The call's ``backend=``, else ``$PRISM_KERNELS``, else ``auto``; ValueError if unknown
    (a server checks this at start, so a typo fails there, not on every request)."""
    choice = (requested or os.environ.get(ENV_BACKEND) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(
            f"unknown kernel backend {choice!r} (from {ENV_BACKEND} or backend=): "
            f"use {', '.join(CHOICES)}"
        )
    return choice
