"""compose.yaml and Dockerfile: they parse, reference what exists, run valid commands.

Docker is not available to the test suite, so this checks everything short of starting
containers: files parse, the image they run is the one the repo's Dockerfile builds, every
`prism ...` command they run is accepted by the CLI, and shipped policies validate.
Kubernetes (deploy/) is checked in tests/test_kubernetes.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from prism.gateway.cli import build_parser
from prism.gateway.policy import parse_policy
from tests.support import ROOT

#: the Dockerfile's two targets and the tags compose and deploy/ give them
SLIM_IMAGE, FULL_IMAGE = "prism-gateway:slim", "prism-gateway:latest"
TARGET_OF = {SLIM_IMAGE: "gateway", FULL_IMAGE: "full"}
PUBLIC_IMAGES = {"redis:7-alpine"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def _check_prism_command(cmd: list[str]) -> None:
    assert cmd[0] == "prism", cmd
    build_parser().parse_args(cmd[1:])  # SystemExit on an unknown flag or command


def _stages() -> dict[str, str]:
    """The Dockerfile's stages: name -> its text (``FROM ... AS name`` up to the next FROM)."""
    text = (ROOT / "Dockerfile").read_text()
    stages = {}
    for part in re.split(r"^FROM ", text, flags=re.M)[1:]:
        named = re.match(r"\S+ AS (\S+)", part)
        assert named is not None, f"every stage is named: FROM {part.splitlines()[0]}"
        stages[named[1]] = part
    return stages


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    cmds = re.findall(r"^CMD (\[.*\])", text, re.M)
    assert len(cmds) == 2  # one per image
    for cmd in cmds:
        _check_prism_command(yaml.safe_load(cmd))


def test_dockerfile_builds_a_slim_gateway_and_a_full_image() -> None:
    stages = _stages()
    assert list(stages)[-1] == "full"  # `docker build .` without --target: the full image
    slim, full = stages["gateway"], stages["full"]
    assert "-r requirements/slim.txt" in slim
    assert "serve.txt" not in slim and "dev.txt" not in slim and "demo build" not in slim
    assert "-r requirements/serve.txt" in full and "demo build" in full


def _remote_only(policy_text: str, where: str) -> None:
    """Everything the slim image can serve: remote versions (and the fake model)."""
    for name, model in parse_policy(policy_text, where).models.items():
        for version, spec in model.versions.items():
            assert spec.backend != "local" or spec.kind == "fake", (where, name, version)


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "redis"} <= set(services)
    assert services["gateway"]["image"] == SLIM_IMAGE  # it fronts the workers: no torch
    _remote_only((ROOT / "policies" / "compose.yaml").read_text(), "policies/compose.yaml")
    for name, svc in services.items():
        image = svc.get("image")
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / "Dockerfile").exists()
            assert svc["build"]["target"] == TARGET_OF[image], (name, image)
        else:
            assert image in PUBLIC_IMAGES, (name, image)
        cmd = svc.get("command")
        if cmd and cmd[0] == "prism":
            _check_prism_command(cmd)
        for dep in svc.get("depends_on", {}):
            assert dep in services
        for vol in svc.get("volumes", []):
            host = vol.split(":")[0]
            if host.startswith("./"):
                assert (ROOT / host).exists(), host


def test_kubernetes_gateways_run_the_slim_image_and_workers_the_full_one() -> None:
    """deploy/base (what every overlay starts from): gateways in front of workers need no torch."""
    seen = set()
    for path in sorted((ROOT / "deploy" / "base").glob("*.yaml")):
        for doc in _docs(path):
            for c in _containers(doc):
                cmd = c.get("command", [None, None])[:2]
                if cmd == ["prism", "serve"]:
                    assert c["image"] == SLIM_IMAGE, path
                    seen.add("serve")
                elif cmd == ["prism", "worker"]:
                    assert c["image"] == FULL_IMAGE, path
                    seen.add("worker")
                else:
                    assert c["image"] in {*TARGET_OF, *PUBLIC_IMAGES}, c["image"]
            if doc["kind"] == "ConfigMap" and "gateway.yaml" in doc.get("data", {}):
                _remote_only(doc["data"]["gateway.yaml"], f"{path}:gateway.yaml")
    assert seen == {"serve", "worker"}


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_validate(path: Path) -> None:
    parse_policy(path.read_text(), str(path))
