"""Kernel-test settings that must not leak into other test packages.

Nothing here sets ``TRITON_INTERPRET``: the interpreter runs in a subprocess (see
``test_kernels_interpret.py``), so triton imported elsewhere in the session is unaffected.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered in pyproject too; repeated here so the GPU script can run this directory
    # with ``-c /dev/null`` (no project config, no plugins it needs) and strict markers.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: slower tests")
