"""Installs: one namespace of our own, a lock that pyproject.toml admits, no shadowed distributions.

A release of transformers started to depend on Hugging Face's ``kernels`` distribution, whose
import name was also our top-level ``kernels``: theirs won in site-packages and every fresh
install broke. These tests keep that from coming back.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tests.support import ROOT

OUR_FOLDERS = ("gateway", "backends", "kernels")
TEXT_ONLY = """\
version: 1
models:
  text-embed:
    task: embed
    modalities: [text]
    versions: {"1": {backend: local, kind: text-encoder, source: minilm}}
routes:
  - {name: text, match: {modality: [text]}, model: text-embed}
"""


def _locked(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            package, version = line.split("==")
            pins[package] = version
    return pins


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _requirements(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    env = default_environment()
    return [r for r in map(Requirement, specs) if r.marker is None or r.marker.evaluate(env)]


def _lock_plan() -> dict[str, list[str]]:
    """What `make lock` writes: lock name -> the extras it installs (requirements/lock.py)."""
    spec = importlib.util.spec_from_file_location("prism_lock", ROOT / "requirements" / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plan: dict[str, list[str]] = module.locks()
    return plan


#: what the slim gateway must not install: ML frameworks and the CUDA stack they pull in
FRAMEWORK_DISTRIBUTIONS = ("torch", "torchvision", "transformers", "open-clip-torch", "triton")
FRAMEWORK_PREFIXES = ("nvidia-", "cuda-", "onnxruntime")


def test_make_lock_writes_exactly_the_locks_we_ship() -> None:
    plan = _lock_plan()
    assert set(plan) == {p.stem for p in (ROOT / "requirements").glob("*.txt")}
    assert set(plan) >= {"slim", "serve", "dev"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    every_extra = set(project["optional-dependencies"])
    assert set(plan["dev"]) == every_extra  # a new extra lands in the locks by itself
    assert set(plan["serve"]) == every_extra - {"dev"}
    assert plan["slim"] == []


@pytest.mark.parametrize("lock", ["slim", "serve", "dev"])
def test_every_requirement_is_pinned_within_its_range(lock: str) -> None:
    pins = _locked(lock)
    for extra in [None, *_lock_plan()[lock]]:
        for req in _requirements(extra):
            name = _canonical(req.name)
            assert name in pins, f"{req} is not in requirements/{lock}.txt: run `make lock`"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"requirements/{lock}.txt pins {name}=={pins[name]}, outside {req}: run `make lock`"
            )


def test_serve_lock_is_the_dev_lock_without_the_dev_tools() -> None:
    serve, dev = _locked("serve"), _locked("dev")
    assert serve.keys() <= dev.keys()
    assert {n: v for n, v in dev.items() if n in serve} == serve
    assert "pytest" not in serve and "ruff" not in serve  # `make serve` installs no dev tools


def test_slim_lock_is_the_serve_lock_without_any_framework() -> None:
    slim, serve = _locked("slim"), _locked("serve")
    assert slim.keys() <= serve.keys()
    assert {n: v for n, v in serve.items() if n in slim} == slim
    heavy = [n for n in slim if n in FRAMEWORK_DISTRIBUTIONS or n.startswith(FRAMEWORK_PREFIXES)]
    assert heavy == []
    assert {"litestar", "httpx", "pydantic", "redis", "numpy", "pillow"} <= slim.keys()


def test_no_code_imports_our_folders_by_their_bare_names() -> None:
    """Only ``prism.gateway`` / ``prism.backends`` / ``prism.kernels``: a bare ``kernels`` is HF's."""
    offenders = []
    for path in ROOT.glob("[!.]*/**/*.py"):
        if path.parts[len(ROOT.parts)] in {"prism", "build", "models"}:
            continue  # prism/ links to the same files
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {n}"
                for n in names
                if n.split(".")[0] in OUR_FOLDERS
            ]
    assert offenders == []


def test_prism_links_cover_exactly_our_folders() -> None:
    links = {p.name: p for p in (ROOT / "prism").iterdir()}
    assert set(links) == set(OUR_FOLDERS)
    for name, link in links.items():
        assert link.is_symlink() and link.resolve() == ROOT / name
    # namespace packages: a checkout's kernels/ must never be a regular package named `kernels`
    assert not (ROOT / "prism" / "__init__.py").exists()
    assert not (ROOT / "kernels" / "__init__.py").exists()


@pytest.mark.slow
def test_the_wheel_installs_only_the_prism_namespace(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("prism_gateway-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"prism"}
    assert "prism/kernels/ops.py" in names and "prism/gateway/app.py" in names
    assert "prism/backends/demo/model_configs/demo-clip.json" in names
    assert not any(n in names for n in ("prism/__init__.py", "prism/kernels/__init__.py"))


@pytest.mark.slow
def test_hugging_face_kernels_and_ours_import_side_by_side_and_the_text_model_answers(
    tmp_path: Path,
) -> None:
    """From the checkout's root (the worst case: it is first on sys.path), in one process."""
    script = textwrap.dedent(
        """
        import importlib.metadata, json, sys
        import kernels  # Hugging Face's distribution, which transformers depends on
        import prism.kernels.ops as ours
        from litestar.testing import TestClient
        from transformers.utils import is_kernels_available
        from prism.gateway.app import create_app
        from prism.gateway.settings import Settings

        policy = sys.argv[1]
        with TestClient(create_app(Settings(policy=policy, experiments_persist=False))) as client:
            r = client.post("/v1/infer", json={"inputs": [{"text": "a red circle"}]})
        print(json.dumps({
            "hf_file": kernels.__file__,
            "hf_version": importlib.metadata.version("kernels"),
            "hf_has_get_kernel": hasattr(kernels, "get_kernel"),
            "ours": ours.__file__,
            "transformers_sees_kernels": bool(is_kernels_available()),
            "status": r.status_code,
            "width": len(r.json()["outputs"][0]["embedding"]),
        }))
        """
    )
    policy = tmp_path / "text-only.yaml"
    policy.write_text(TEXT_ONLY)
    res = subprocess.run(
        [sys.executable, "-c", script, str(policy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert not got["hf_file"].startswith(str(ROOT / "kernels")), got
    assert got["hf_has_get_kernel"] and got["transformers_sees_kernels"], got
    assert got["ours"] == str(ROOT / "prism" / "kernels" / "ops.py")
    assert got["status"] == 200 and got["width"] == 384, got
