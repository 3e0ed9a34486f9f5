"""compose.yaml and Dockerfile: they parse, reference what exists, run valid commands.

Docker is not available to the test suite, so this checks everything short of starting
containers: files parse, the image they run is the one the repo's Dockerfile builds, every
`prism ...` command they run is accepted by the CLI, and shipped policies validate.
Kubernetes (deploy/) is checked in tests/test_kubernetes.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from prism.gateway.cli import build_parser
from prism.gateway.policy import parse_policy
from tests.support import ROOT

LOCAL_IMAGE = "prism-gateway:latest"
PUBLIC_IMAGES = {"redis:7-alpine"}


def _check_prism_command(cmd: list[str]) -> None:
    assert cmd[0] == "prism", cmd
    build_parser().parse_args(cmd[1:])  # SystemExit on an unknown flag or command


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    cmd = re.search(r"^CMD (\[.*\])", text, re.M)
    assert cmd is not None
    _check_prism_command(yaml.safe_load(cmd.group(1)))


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway", "redis"} <= set(services)
    for name, svc in services.items():
        image = svc.get("image")
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").exists()
            assert image == LOCAL_IMAGE
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


@pytest.mark.parametrize("path", sorted((ROOT / "policies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policies_validate(path: Path) -> None:
    parse_policy(path.read_text(), str(path))
