"""Real `prism serve` processes over HTTP on loopback, sharing a real Redis."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import PRISM, ROOT, GatewayProcess, RedisProcess, free_port

POLICY = """
version: 1
models:
  fake:
    versions:
      "1": {backend: local, kind: fake, dim: 32, latency_ms: 5}
routes:
  - name: text
    match: {modality: [text]}
    model: fake
    cache: {ttl_s: 300}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


def _infer(gw: GatewayProcess, text: str) -> httpx.Response:
    return httpx.post(gw.url + "/v1/infer", json={"inputs": [{"text": text}]}, timeout=10)


@pytest.mark.slow
def test_two_gateways_share_one_redis_cache(policy: Path, redis_url: str) -> None:
    a = GatewayProcess(policy, redis_url=redis_url).start()
    b = GatewayProcess(policy, redis_url=redis_url).start()
    try:
        first = _infer(a, "shared across replicas")
        assert first.status_code == 200 and first.json()["route"]["cache"] == "miss"
        second = _infer(b, "shared across replicas")
        assert second.json()["route"]["cache"] == "hit"
        assert second.json()["outputs"] == first.json()["outputs"]
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_killing_redis_mid_run_fails_no_request(policy: Path, own_redis: RedisProcess) -> None:
    gw = GatewayProcess(policy, redis_url=own_redis.url).start()
    try:
        statuses: list[str] = []
        for i in range(40):
            if i == 10:
                own_redis.stop()
            if i == 25:
                own_redis.start()
                time.sleep(1.5)  # the cache retries the store after its back-off
            r = _infer(gw, f"q{i % 5}")
            assert r.status_code == 200, r.text
            statuses.append(r.json()["route"]["cache"])
        assert "off" in statuses[10:25]
        assert statuses[-5:] == ["hit"] * 5  # recovered by itself and refilled
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'prism_cache_lookups_total{result="off"}' in metrics
        errors = re.search(r"^prism_cache_errors_total (\S+)$", metrics, re.M)
        assert errors is not None and float(errors.group(1)) >= 1  # the outage was counted
    finally:
        gw.stop()


@pytest.mark.slow
def test_serve_answers_problems_over_real_http(policy: Path) -> None:
    gw = GatewayProcess(policy).start()
    try:
        bad = httpx.post(
            gw.url + "/v1/infer", content=b"{oops", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert _infer(gw, "fine").status_code == 200
        assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    finally:
        gw.stop()


def _children(pid: int) -> list[int]:
    """A process's children, from /proc (psutil is not a dependency)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _workers(pid: int) -> list[int]:
    """uvicorn's worker processes: the children multiprocessing spawned (its resource
    tracker is a child too, and is no worker)."""
    workers = []
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has stopped already


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree in /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_serve_with_two_workers_answers_and_stops_them_all(
    policy: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    cmd = [*PRISM, "serve", "--policy", str(policy), "--port", str(port), "--workers", "2"]
    cmd += ["--drain-grace-s", "0"]  # the drain itself: tests/test_drain.py
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    workers: list[int] = []
    try:
        # both workers up and serving: the port answers as soon as the first one is ready
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _workers(proc.pid)
            with contextlib.suppress(httpx.HTTPError):
                if len(workers) == 2 and httpx.get(url + "/readyz").status_code == 200:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        assert len(workers) == 2, (workers, log.read_text())
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        r = httpx.post(url + "/v1/infer", json={"inputs": [{"text": "one of two"}]}, timeout=10)
        assert r.status_code == 200, r.text
        assert len(r.json()["outputs"][0]["embedding"]) == 32

        proc.send_signal(stop)
        assert proc.wait(30) == 0, log.read_text()
        # the parent joins its workers before it exits: none may be left running
        assert [w for w in workers if _running(w)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for w in workers:  # orphans of a failed run, not left behind
            if _running(w):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w, signal.SIGKILL)


def _prism(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prism.gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_policy_check_cli(tmp_path: Path) -> None:
    ok = _prism("policy", "check", str(ROOT / "policies" / "default.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("model: fake\n", "model: ghost\n"))
    res = _prism("policy", "check", str(bad))
    assert res.returncode == 1
    assert res.stderr.strip() == f"{bad}:10: routes[0].model: unknown model 'ghost'"


def test_every_command_has_help() -> None:
    for args in (
        ["--help"],
        ["serve", "--help"],
        ["policy", "--help"],
        ["policy", "check", "--help"],
    ):
        res = _prism(*args)
        assert res.returncode == 0 and "usage: prism" in res.stdout, args


def test_serve_refuses_a_bad_policy_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("dim: 32,", "dimz: 32,"))
    res = _prism("serve", "--policy", str(bad), "--port", "0")
    assert res.returncode == 1
    assert res.stderr.strip() == f"prism serve: {bad}:6: models.fake.versions.1.dimz: unknown key"
    assert "Traceback" not in res.stderr
