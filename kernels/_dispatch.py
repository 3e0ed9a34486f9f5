"""Which implementation runs: Triton kernels on CUDA tensors, torch references elsewhere.

Triton is imported lazily, only when a Triton path is about to run, for two reasons: importing
``kernels`` must work where Triton is not installed, and ``TRITON_INTERPRET=1`` only takes effect
if it is set before Triton is first imported (a test process may set it late).
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Literal, TypeAlias

import torch

# the environment is read by a torch-free module, so a gateway can check it without torch
from prism.kernels.choice import requested_backend

Backend: TypeAlias = Literal["triton", "reference"]


class KernelBackendError(RuntimeError):
    """The requested backend cannot run on these tensors (e.g. Triton on CPU, no interpreter)."""


@cache
def triton_installed() -> bool:
    """True when the ``triton`` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None
        return False


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def is_auto(requested: str | None = None) -> bool:
    """True when neither the call nor ``$PRISM_KERNELS`` forces a backend."""
    return requested_backend(requested) == "auto"


def choose(device: torch.device, requested: str | None = None) -> Backend:
    """Pick the backend for tensors on ``device``.

    ``requested`` (a call's ``backend=`` argument) wins over ``$PRISM_KERNELS``; both accept
    ``auto``, ``triton`` and ``reference``. ``auto`` means Triton on CUDA when Triton is
    installed, else the reference. Forcing ``triton`` on CPU tensors needs the interpreter.
    """
    choice = requested_backend(requested)
    if choice == "reference":
        return "reference"
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_installed() else "reference"
    if not triton_installed():
        raise KernelBackendError("the triton backend was requested but triton is not installed")
    if device.type != "cuda" and not interpreting():
        raise KernelBackendError(
            f"the triton backend on {device.type} tensors needs TRITON_INTERPRET=1, "
            "set before triton is first imported"
        )
    return "triton"
