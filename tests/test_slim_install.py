"""The core distribution, installed alone from requirements/slim.txt, serves remote models.

A real venv (no system site-packages, no checkout on ``sys.path``) gets the slim lock and Prism
itself (``pip install --no-deps .``, as the slim image does), then runs its own ``prism serve``
in front of a real HTTP upstream. The venv is kept in ``build/venv-slim`` and rebuilt only when
the slim lock changes (about a minute, once); Prism itself is reinstalled every run, so the code
under test is the checkout's.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port
from tests.test_slim import FRAMEWORKS
from tests.upstream import Upstream

VENV = ROOT / "build" / "venv-slim"
LOCK = ROOT / "requirements" / "slim.txt"
PIP_VERSION = re.search(r"^PIP_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M)

POLICY = """\
version: 1
models:
  remote-embed:
    task: embed
    modalities: [text]
    versions:
      "1": {{backend: openai, url: "{url}", remote_model: ok}}
  local-embed:
    task: embed
    modalities: [text]
    versions:
      "1": {{backend: local, kind: text-encoder, source: minilm}}
routes:
  - {{name: local, match: {{model: local-embed}}, model: local-embed}}
  - {{name: text, match: {{modality: [text]}}, model: remote-embed}}
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(*cmd: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
        cwd=cwd,
    )
    assert res.returncode == 0, f"{cmd}: {res.stdout[-2000:]}{res.stderr[-3000:]}"
    return res


def _slim_venv() -> Path:
    """build/venv-slim with the slim lock installed (kept while the lock is unchanged)."""
    assert PIP_VERSION is not None
    key = hashlib.sha256(LOCK.read_bytes() + PIP_VERSION[1].encode()).hexdigest()
    stamp = VENV / ".slim-lock-sha256"
    python = VENV / "bin" / "python"
    if not (stamp.exists() and stamp.read_text() == key and python.exists()):
        shutil.rmtree(VENV, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        _run(base, "-m", "venv", VENV)
        _run(python, "-m", "pip", "install", "-q", f"pip=={PIP_VERSION[1]}")
        _run(python, "-m", "pip", "install", "-q", "-r", LOCK)
        stamp.write_text(key)
    # Prism itself, not editable: the venv must not see the checkout
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--force-reinstall", ROOT)  # fmt: skip
    return VENV


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(dim=8).start()
    yield server
    server.stop()


@pytest.mark.slow
def test_a_slim_install_serves_a_remote_model(upstream: Upstream, tmp_path: Path) -> None:
    venv = _slim_venv()
    python = venv / "bin" / "python"
    probe = _run(
        python,
        "-c",
        "import importlib.util as u, sys, prism.gateway.app as app; "
        f"print(app.__file__); print([m for m in {FRAMEWORKS!r} if u.find_spec(m)])",
        cwd=tmp_path,  # nothing of the checkout on sys.path
    )
    where, installed = probe.stdout.strip().splitlines()
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout's
    assert installed == "[]"  # not one framework is even installed

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(url=upstream.url))
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [venv / "bin" / "prism", "serve", "--policy", policy, "--port", str(port)],
        cwd=tmp_path,  # nothing of the checkout on sys.path
        env=_clean_env(),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        models: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while not models or "loading" in models.values():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            try:
                models = httpx.get(url + "/readyz", timeout=2).json()["models"]
            except httpx.HTTPError:
                time.sleep(0.1)
        remote = next(v for k, v in models.items() if k.startswith("remote-embed@1"))
        local = next(v for k, v in models.items() if k.startswith("local-embed@1"))
        assert remote == "ready"
        # the local model cannot load here, and says what to install
        assert "MissingFramework" in local and "pip install 'prism-gateway[local]'" in local

        native = httpx.post(url + "/v1/infer", json={"inputs": [{"text": "hi"}]}, timeout=10)
        assert native.status_code == 200, native.text
        assert native.json()["model"] == "remote-embed"
        assert len(native.json()["outputs"][0]["embedding"]) == 8
        openai = httpx.post(
            url + "/v1/embeddings", json={"model": "remote-embed", "input": "hi"}, timeout=10
        )
        assert openai.status_code == 200, openai.text
        assert openai.json()["data"][0]["embedding"] == native.json()["outputs"][0]["embedding"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
