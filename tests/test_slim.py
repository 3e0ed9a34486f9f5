"""A gateway that fronts remote models loads no ML framework.

torch, transformers, open_clip, triton and onnxruntime are imported only when a policy names a
local model that runs on them (``backends/_registry.py`` imports a kind's module when a spec
names it). These tests hold that in place: a real ``prism serve`` with a remote-only policy,
asked from inside which modules it has loaded; every module the gateway can import at start,
imported in a fresh interpreter; and the message a local model gets where its extra is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prism.backends._frameworks import EXTRA_OF, MissingFramework, missing_framework
from tests.support import ROOT, free_port
from tests.upstream import Upstream

#: the frameworks a remote-only gateway must never load (top-level import names)
FRAMEWORKS = (
    "torch",
    "torchvision",
    "transformers",
    "open_clip",
    "triton",
    "onnxruntime",
    "sentence_transformers",
)

REMOTE_ONLY = """\
version: 1
models:
  remote-embed:
    task: embed
    modalities: [text]
    versions:
      "1": {{backend: openai, url: "{url}", remote_model: ok}}
routes:
  - {{name: text, match: {{modality: [text]}}, model: remote-embed}}
"""


def _loaded_frameworks(modules: list[str]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in FRAMEWORKS})


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream(dim=8).start()
    yield server
    server.stop()


def _wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"prism serve exited: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"prism serve not ready: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.mark.slow
def test_remote_only_serve_loads_no_framework(upstream: Upstream, tmp_path: Path) -> None:
    policy = tmp_path / "remote.yaml"
    policy.write_text(REMOTE_ONLY.format(url=upstream.url))
    port, prefix, log = free_port(), tmp_path / "modules", tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "tests.modules_probe", str(prefix), str(port)]
    cmd += ["serve", "--policy", str(policy), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_for(Path(f"{prefix}-ready.json"), proc, log, timeout_s=60)
        url = f"http://127.0.0.1:{port}"
        native = httpx.post(url + "/v1/infer", json={"inputs": [{"text": "hi"}]}, timeout=10)
        assert native.status_code == 200, native.text
        assert len(native.json()["outputs"][0]["embedding"]) == 8
        openai = httpx.post(
            url + "/v1/embeddings", json={"model": "remote-embed", "input": ["a", "b"]}, timeout=10
        )
        assert openai.status_code == 200, openai.text
        assert len(openai.json()["data"]) == 2
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    at_ready = json.loads(Path(f"{prefix}-ready.json").read_text())
    at_exit = json.loads(Path(f"{prefix}-exit.json").read_text())
    # the lists are the serving process's own: the app, its remote backend and the probe's
    # thread are there, so an empty intersection below means something
    for modules in (at_ready, at_exit):
        assert {"litestar", "prism.gateway.app", "prism.backends._openai"} <= set(modules)
    assert _loaded_frameworks(at_ready) == []
    assert _loaded_frameworks(at_exit) == []  # nor did answering requests load one


def test_no_module_the_gateway_may_import_at_start_imports_a_framework() -> None:
    """Every gateway module, and every backend module but the local kinds' own, in one fresh
    interpreter; then a fake model (``device: auto``) is built and answers: still no torch."""
    script = textwrap.dedent(
        """
        import importlib, json, pkgutil, sys
        from pathlib import Path
        import prism.gateway, prism.backends
        from prism.backends._registry import LOCAL_KINDS, REMOTE_KINDS
        # local kinds' modules (and what only they use) may import their framework at the top
        local = {ref.partition(":")[0] for ref in LOCAL_KINDS.values()}
        local |= {"prism.backends._catalog", "prism.backends.demo"}
        names = []

        def walk(package):  # pkgutil.walk_packages would import the local packages to recurse
            for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if info.name in local:
                    continue
                names.append(info.name)
                module = importlib.import_module(info.name)
                if info.ispkg:
                    walk(module)

        walk(prism.gateway)
        walk(prism.backends)
        for ref in REMOTE_KINDS.values():
            importlib.import_module(ref.partition(":")[0])
        import asyncio
        import prism.kernels.choice
        from prism.backends import FakeSpec, InputItem, Task, build_backend

        async def answer():
            spec = FakeSpec(kind="fake", dim=4)  # device: auto
            backend = build_backend(spec, base_dir=Path("."), name="fake@1")
            await backend.start()
            try:
                outputs = await backend.infer(Task.EMBED, [InputItem(text="x")], {})
            finally:
                await backend.aclose()
            return len(outputs[0]["embedding"])

        width = asyncio.run(answer())
        print(json.dumps({"imported": names, "modules": sorted(sys.modules), "width": width}))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "prism.gateway.cli" in got["imported"] and "prism.gateway.worker" in got["imported"]
    assert got["width"] == 4
    assert _loaded_frameworks(got["modules"]) == []


def test_prism_kernels_is_checked_at_start_without_torch(tmp_path: Path) -> None:
    policy = tmp_path / "remote.yaml"
    policy.write_text(REMOTE_ONLY.format(url="http://127.0.0.1:9"))
    script = textwrap.dedent(
        """
        import json, sys
        from prism.gateway.cli import main
        code = main(["serve", "--policy", sys.argv[1]])
        print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(policy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PRISM_KERNELS": "cuda"},
    )
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["code"] == 2
    assert "unknown kernel backend 'cuda'" in res.stderr
    assert _loaded_frameworks(got["modules"]) == []


def test_a_local_kind_without_its_framework_names_the_extra_to_install() -> None:
    for module, extra in (("onnxruntime", "onnx"), ("open_clip", "local"), ("triton", "gpu")):
        exc = ModuleNotFoundError(f"No module named '{module}'", name=f"{module}.capi")
        err = missing_framework("some-kind", exc)
        assert isinstance(err, MissingFramework)
        assert f"pip install 'prism-gateway[{extra}]'" in str(err)
        assert EXTRA_OF[module] == extra
    other = ModuleNotFoundError("No module named 'nothing_we_know'", name="nothing_we_know")
    assert missing_framework("some-kind", other) is other  # a real bug stays what it is
