"""Generated contracts are checked in and current; imports run one way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prism.gateway.openapi import OPENAPI_FILE, live_openapi, render
from tests.support import ROOT


def test_openapi_document_is_current() -> None:
    live = render(live_openapi())
    assert OPENAPI_FILE.read_text() == live, "stale: run `python -m prism.gateway.openapi`"
    paths = json.loads(live)["paths"]
    assert {"/v1/infer", "/healthz", "/readyz"} <= set(paths)


def test_imports_run_one_way() -> None:
    """gateway -> backends -> kernels: import-linter's layers contract (pyproject.toml)."""
    exe = Path(sys.executable).parent / "lint-imports"  # this venv's, also under make test-latest
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout
