"""Generated contracts are checked in and current; imports run one way."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway.openapi import OPENAPI_FILE, live_openapi, render
from tests.support import ROOT


def test_openapi_document_is_current() -> None:
    live = render(live_openapi())
    assert OPENAPI_FILE.read_text() == live, "stale: run `python -m gateway.openapi`"
    paths = json.loads(live)["paths"]
    assert {"/v1/infer", "/healthz", "/readyz"} <= set(paths)


def test_imports_run_one_way() -> None:
    """gateway -> backends -> kernels: import-linter's layers contract (pyproject.toml)."""
    exe = ROOT / ".venv" / "bin" / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KEPT" in res.stdout
