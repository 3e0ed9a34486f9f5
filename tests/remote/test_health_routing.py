"""Health probes feed routing and readiness: a replica the probe finds down is tried last,
and /readyz says which route has no healthy target left."""

from __future__ import annotations

import asyncio
from pathlib import Path

from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.upstream import Upstream


async def test_probe_down_replica_is_tried_last_and_readiness_follows(tmp_path: Path) -> None:
    up_a = Upstream(dim=8).start()
    up_b = Upstream(dim=8).start()
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"""
version: 1
models:
  remote:
    versions:
      "1":
        backend: kserve
        url: "{up_a.url}"
        replicas: ["{up_b.url}"]
        remote_model: ok
        health_interval_s: 0.1
routes:
  - name: text
    match: {{modality: [text]}}
    model: remote
    cache: {{ttl_s: 0}}
"""
    )
    try:
        async with AsyncTestClient(create_app(Settings(policy=policy, policy_watch_s=0))) as c:
            assert (await c.get("/readyz")).status_code == 200
            up_a.healthy = False  # replica A's health checks fail; it still answers calls
            await asyncio.sleep(0.5)
            ready = await c.get("/readyz")
            assert ready.status_code == 200  # B still serves the route
            assert ready.json()["models"][f"remote@1/{up_a.url}"] == "unreachable"
            before = up_a.hits["ok"]
            for _ in range(10):
                r = await c.post("/v1/infer", json={"inputs": [{"text": "x"}]})
                assert r.status_code == 200
                assert r.json()["route"]["target"] == f"remote@1/{up_b.url}"
            assert up_a.hits["ok"] == before
            up_b.healthy = False
            await asyncio.sleep(0.5)
            down = await c.get("/readyz")
            # a remote outage is reported, but it does not take this replica out of a load
            # balancer: no model here could be loaded to fix it, other routes still serve
            assert down.status_code == 200
            assert down.json()["status"] == "degraded"
            assert down.json()["routes_down"] == ["text"]
            # nothing healthy is left: the probes may be stale, so calls are still attempted
            assert (await c.post("/v1/infer", json={"inputs": [{"text": "y"}]})).status_code == 200
    finally:
        up_a.stop()
        up_b.stop()
