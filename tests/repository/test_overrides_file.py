"""Without Redis: overrides live in a file next to the policy, survive a restart, are
exported with the policy as one file, and a reload of the file keeps the ones that still
make sense. Driven through the ``prism models`` CLI against a real `prism serve`."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prism.gateway.policy import parse_policy
from tests.support import PRISM, ROOT, GatewayProcess

pytestmark = pytest.mark.slow

ADMIN_KEY = "admin-secret"

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
      "3": {backend: local, kind: fake, device: cpu, dim: 8, seed: 3}
      "slow": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 3000}
    labels: {stable: "1"}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: stable
    cache: {ttl_s: 0}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    path = tmp_path_factory.mktemp("overrides") / "policy.yaml"
    path.write_text(POLICY)
    env = {"PRISM_ADMIN_KEYS": json.dumps([ADMIN_KEY]), "PRISM_UNLOAD_DRAIN_S": "0.3"}
    gw = GatewayProcess(path, env=env)
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def prism(*args: str, key: str | None = ADMIN_KEY) -> tuple[int, Any, str]:
    env = {k: v for k, v in os.environ.items() if k != "PRISM_ADMIN_KEY"}
    if key is not None:
        env["PRISM_ADMIN_KEY"] = key
    done = subprocess.run(
        [*PRISM, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = done.stdout
    return done.returncode, out, done.stderr


def infer(gw: GatewayProcess, version: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"text": "hi"}]}
    if version is not None:
        body["model"], body["version"] = "m", version
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.post(gw.url + "/v1/infer", json=body, headers=headers, timeout=30)


def served(gw: GatewayProcess) -> str:
    return str(infer(gw).json()["version"])


def admin(gw: GatewayProcess, method: str, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    return httpx.request(method, gw.url + path, headers=headers, timeout=30)


def test_cli_lists_promotes_unloads_loads_and_rolls_back(gateway: GatewayProcess) -> None:
    url = ["--url", gateway.url]
    code, out, _ = prism("models", "list", *url)
    assert code == 0 and [v["state"] for v in out["models"][0]["versions"]] == ["ready"] * 4

    code, out, err = prism("models", "promote", "m@2", *url)
    assert code == 0 and out["labels"] == {"stable": "2"} and out["previous"] == "1", err
    assert served(gateway) == "2"
    code, out, _ = prism("models", "rollback", "m", *url)
    assert code == 0 and out["version"] == "1" and served(gateway) == "1"

    code, out, err = prism("models", "unload", "m@1", *url)
    assert code == 1 and out["status"] == 409 and "label 'stable'" in err
    code, out, _ = prism("models", "unload", "m@3", *url)
    assert code == 0 and out["state"] == "unloaded"
    code, out, _ = prism("models", "load", "m@3", *url)
    assert code == 0 and out["state"] == "ready"

    code, out, err = prism("models", "list", *url, key=None)
    assert code == 1 and out["status"] == 401 and "401" in err
    code, _, err = prism("models", "promote", "m", *url)
    assert code == 2 and "MODEL@VERSION" in err


def test_overrides_survive_a_restart_and_export_as_one_policy_file(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    url = ["--url", gateway.url]
    assert prism("models", "promote", "m@2", *url)[0] == 0
    assert prism("models", "unload", "m@3", *url)[0] == 0
    kept = gateway.policy.with_name(".policy.yaml.overrides.json")
    assert json.loads(kept.read_text())["labels"] == {"m": {"stable": "2"}}

    gateway.stop()
    gateway.start()
    assert served(gateway) == "2"
    states = {v["version"]: v["state"] for v in admin(gateway, "GET", "/admin/models").json()
              ["models"][0]["versions"]}  # fmt: skip
    assert states == {"1": "ready", "2": "ready", "3": "unloaded", "slow": "ready"}

    out = tmp_path / "exported.yaml"
    code, _, err = prism("policy", "export", "--policy", str(gateway.policy), "--out", str(out))
    assert code == 0, err
    exported = parse_policy(out.read_text(), str(out))
    assert exported.models["m"].labels == {"stable": "2"}
    assert exported.models["m"].unloaded == ["3"]
    assert exported.routes == parse_policy(POLICY).routes  # the rest is the file's
    assert prism("policy", "check", str(out))[0] == 0


def test_a_reload_keeps_overrides_that_still_apply_and_reports_the_others(
    gateway: GatewayProcess,
) -> None:
    # (after the previous test: stable -> 2 and m@3 unloaded, both overrides)
    gateway.policy.write_text(
        POLICY.replace(
            '      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}\n', ""
        )
    )
    r = admin(gateway, "POST", "/admin/policy/reload")
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["models"]["m"]["labels"] == {"stable": "1"}  # the file's again
    assert status["models"]["m"]["unloaded"] == ["3"]  # still makes sense: kept
    (stale,) = status["overrides"]["stale"]
    assert stale["kind"] == "label" and stale["version"] == "2"
    assert stale["reason"] == "version '2' of 'm' is no longer in the file"
    assert served(gateway) == "1"


def test_an_unload_frees_the_version_when_its_drain_time_is_up(gateway: GatewayProcess) -> None:
    answers: list[httpx.Response] = []
    caller = threading.Thread(target=lambda: answers.append(infer(gateway, "slow")))
    caller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (model,) = admin(gateway, "GET", "/admin/models").json()["models"]
        if next(v for v in model["versions"] if v["version"] == "slow")["in_flight"]:
            break
        time.sleep(0.05)
    r = admin(gateway, "POST", "/admin/models/m/versions/slow/unload")  # drain time: 0.3 s
    caller.join()
    assert r.status_code == 200 and r.json()["state"] == "unloaded"
    assert r.json()["cut_off"] == 1  # the 3 s call did not finish within the drain time
    assert answers[0].status_code == 503 and answers[0].json()["code"] == "not_ready"
