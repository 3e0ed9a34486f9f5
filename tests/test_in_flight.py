"""``prism_in_flight_requests``: the load signal deploy/ autoscales on, over real HTTP."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import GatewayProcess

pytestmark = pytest.mark.slow

POLICY = """
version: 1
models:
  slow:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 1500,
            batching: {max_batch_size: 1}}
routes:
  - name: text
    match: {modality: [text]}
    model: slow
    cache: {ttl_s: 0}
"""


def in_flight(gw: GatewayProcess) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    found = re.search(r"^prism_in_flight_requests (\S+)$", text, re.M)
    assert found is not None, "prism_in_flight_requests missing from /metrics"
    return float(found.group(1))


def test_in_flight_counts_requests_being_served_and_not_probes_or_scrapes(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    gw = GatewayProcess(policy).start()
    try:
        assert in_flight(gw) == 0  # the scrape itself and /readyz polls are not counted
        statuses: list[int] = []

        def call(i: int) -> None:
            r = httpx.post(gw.url + "/v1/infer", json={"inputs": [{"text": f"t{i}"}]}, timeout=30)
            statuses.append(r.status_code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        # the five wait on a one-at-a-time model for seconds: the gauge sees all of them
        deadline = time.monotonic() + 20
        seen = 0.0
        while seen < 5 and time.monotonic() < deadline:
            seen = max(seen, in_flight(gw))
            time.sleep(0.05)
        for t in threads:
            t.join()
        assert seen == 5
        assert statuses == [200] * 5
        assert in_flight(gw) == 0  # and each left it when answered
    finally:
        gw.stop()


def test_a_worker_exports_it_beside_its_queue_depth(tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from prism.gateway.worker import create_worker_app

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("latency_ms: 1500", "latency_ms: 0"))
    with TestClient(create_worker_app(policy, "slow@1")) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200
        text = client.get("/metrics").text
    assert re.search(r"^prism_in_flight_requests 0\.0$", text, re.M)
    assert "prism_queue_depth" in text
