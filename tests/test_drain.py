"""Graceful drain on SIGTERM: real ``prism serve`` / ``prism worker`` processes, real Redis,
and a real HAProxy in front for the "no request lost" check."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cluster import HAPROXY, HAProxy, SteadyLoad, WorkerProcess, stop_all
from tests.support import PRISM, ROOT, GatewayProcess, RedisProcess, free_port

POLICY = """
version: 1
models:
  fake:
    versions:
      "1": {backend: local, kind: fake, dim: 16, latency_ms: 2}
      "2": {backend: local, kind: fake, dim: 16, latency_ms: 2, seed: 1}
  slow:
    versions:
      "1": {backend: local, kind: fake, dim: 4, latency_ms: 3000}
routes:
  - {name: slow, match: {model: slow}, model: slow, cache: {ttl_s: 0}}
  - {name: text, match: {modality: [text]}, model: fake, cache: {ttl_s: 0}}
experiments:
  split:
    route: text
    unit: user
    arms: {control: {version: "1", weight: 50}, treatment: {version: "2", weight: 50}}
"""

WORKER_POLICY = """
version: 1
models:
  fake:
    versions: {"1": {backend: local, kind: fake, dim: 16}}
"""

pytestmark = pytest.mark.slow


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


def _infer(url: str, text: str, unit: str | None = None) -> httpx.Response:
    body: dict[str, object] = {"inputs": [{"text": text}]}
    if unit is not None:
        body["routing"] = {"unit": unit}
    return httpx.post(url + "/v1/infer", json=body, timeout=30)


def _wait_draining(url: str) -> httpx.Response:
    """Poll /readyz until it says draining (it flips as the signal is handled)."""
    deadline = time.monotonic() + 10
    while True:
        r = httpx.get(url + "/readyz", timeout=5)
        if r.status_code == 503:
            return r
        assert time.monotonic() < deadline, f"/readyz still {r.status_code} after SIGTERM"
        time.sleep(0.02)


def _experiment_requests(url: str) -> int:
    report = httpx.get(url + "/admin/experiments/split", timeout=10).json()
    return sum(arm["requests"] for arm in report["arms"].values())


def test_sigterm_drains_serves_through_the_grace_and_flushes_counters(
    policy: Path, own_redis: RedisProcess
) -> None:
    """SIGTERM: /readyz 503 at once, requests still answered during the grace period, exit 0,
    and every experiment count of the stopped replica is in Redis for the others to read."""
    # a long grace: the requests below must land inside it even on a busy machine
    draining = GatewayProcess(policy, redis_url=own_redis.url, env={"PRISM_DRAIN_GRACE_S": "5"})
    other = GatewayProcess(policy, redis_url=own_redis.url)
    try:
        draining.start()
        other.start()
        before = [_infer(draining.url, f"before {i}", f"u{i}") for i in range(20)]
        assert [r.status_code for r in before] == [200] * 20
        assert draining.proc is not None
        draining.proc.send_signal(signal.SIGTERM)
        unready = _wait_draining(draining.url)
        assert unready.json()["status"] == "draining"
        assert unready.headers["retry-after"]
        during = [_infer(draining.url, f"during {i}", f"u{i}") for i in range(10)]
        assert [r.status_code for r in during] == [200] * 10  # still serving: the grace
        assert draining.proc.wait(60) == 0, draining.log.read_text()[-2000:]
        # the drained replica pushed its last counts on the way out
        assert _experiment_requests(other.url) == 30
    finally:
        stop_all([draining, other])


def test_in_flight_request_finishes_after_the_listener_closes(policy: Path) -> None:
    gw = GatewayProcess(policy).start()  # grace 0: the listener closes as SIGTERM arrives
    try:
        answer: list[httpx.Response] = []
        body = {"model": "slow", "inputs": [{"text": "takes 3 s"}]}
        slow = threading.Thread(
            target=lambda: answer.append(httpx.post(gw.url + "/v1/infer", json=body, timeout=30))
        )
        slow.start()
        time.sleep(1.0)  # the request is in the fake model's 3 s when the signal comes
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):  # stopped accepting ...
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                httpx.get(gw.url + "/healthz", timeout=1)
                time.sleep(0.05)
        slow.join(30)
        assert [r.status_code for r in answer] == [200]  # ... and finished what it had
        assert gw.proc.wait(30) == 0, gw.log.read_text()[-2000:]
    finally:
        gw.stop()


def test_serve_with_workers_drains_every_process(policy: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    cmd = [*PRISM, "serve", "--policy", str(policy), "--port", str(port), "--workers", "2"]
    cmd += ["--drain-grace-s", "3", "--drain-timeout-s", "10"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            # both processes have finished starting (the drain is installed at the end of
            # startup: a process still loading stops at once, it has nothing to drain)
            if log.read_text().count("Application startup complete") == 2:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert httpx.get(url + "/readyz", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        # every process drains: a few fresh connections (each may reach either worker)
        # all see 503, and every one of them still answers inference
        _wait_draining(url)
        for i in range(6):
            with httpx.Client() as fresh:
                assert fresh.get(url + "/readyz").json()["status"] == "draining"
                assert fresh.post(url + "/v1/infer", json={"inputs": [{"text": f"{i}"}]}).is_success
        assert proc.wait(60) == 0, log.read_text()[-2000:]
        assert log.read_text().count("SIGTERM: draining") == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_worker_drains_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "worker.yaml"
    path.write_text(WORKER_POLICY)
    worker = WorkerProcess(path, "fake@1", env={"PRISM_DRAIN_GRACE_S": "5"}).start()
    try:
        worker.signal(signal.SIGTERM)
        assert _wait_draining(worker.url).json() == {"status": "draining"}
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["still here"]}
        r = httpx.post(worker.url + "/v2/models/fake/infer", json={"inputs": [tensor]})
        assert r.status_code == 200, r.text
        assert worker.proc is not None and worker.proc.wait(60) == 0
    finally:
        worker.stop()


@pytest.mark.cluster
@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make haproxy)")
def test_sigterm_under_steady_load_behind_haproxy_loses_nothing(
    policy: Path, own_redis: RedisProcess, tmp_path: Path
) -> None:
    env = {"PRISM_DRAIN_GRACE_S": "1.5", "PRISM_DRAIN_TIMEOUT_S": "10"}
    gateways = [GatewayProcess(policy, redis_url=own_redis.url, env=env) for _ in range(2)]
    lb = HAProxy({f"g{i}": gw.port for i, gw in enumerate(gateways)}, tmp_path)
    try:
        for gw in gateways:
            gw.start()
        lb.start()
        lb.wait_status("g0", "UP")
        lb.wait_status("g1", "UP")
        with SteadyLoad(lb.url, rate=60) as load:
            load.wait_for(100)
            assert gateways[0].proc is not None
            signalled = time.monotonic()
            gateways[0].proc.send_signal(signal.SIGTERM)
            lb.wait_status("g0", "DOWN")
            down_after_s = time.monotonic() - signalled
            rc = gateways[0].proc.wait(60)
            at_exit = load.total
            load.wait_for(100)
        retries, redispatches = lb.retries()
        print(
            f"\nSIGTERM under load behind HAProxy: {load.summary()}; HAProxy marked the "
            f"replica DOWN {down_after_s:.2f} s after the signal; {at_exit} answered when it "
            f"exited; HAProxy retries {retries}, redispatches {redispatches}"
        )
        assert rc == 0, gateways[0].log.read_text()[-2000:]
        assert load.outcomes == {"200": load.total}, load.failures[:5]
    finally:
        stop_all([lb, *gateways])
