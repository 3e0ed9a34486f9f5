"""Latency budgets over HTTP: a budget nobody meets still answers, unless the route is strict."""

from __future__ import annotations

from .conftest import GatewayFactory, text_request

POLICY = """
version: 1
models:
  near:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 5}
  far:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 120}
routes:
  - name: strict
    match: {headers: {x-tenant: interactive}}
    targets: [{model: far}, {model: near}]
    latency: {budget_ms: 80, strategy: fastest, warmup: 5}
    strict: true
    cache: {ttl_s: 0}
  - name: text
    match: {modality: [text]}
    targets: [{model: far}, {model: near}]
    latency: {budget_ms: 80, strategy: fastest, warmup: 5}
    cache: {ttl_s: 0}
"""


async def test_budget_tightened_by_the_request(gateway: GatewayFactory) -> None:
    async with gateway(POLICY) as client:
        for i in range(12):  # both targets measured (5 warm-up calls each)
            assert (await client.post("/v1/infer", json=text_request(f"w{i}"))).status_code == 200

        r = await client.post("/v1/infer", json=text_request("fits", latency_budget_ms=60))
        route = r.json()["route"]
        assert route["target"] == "near@1/local" and "fits the 60 ms budget" in route["reason"]

        r = await client.post("/v1/infer", json=text_request("too tight", latency_budget_ms=1))
        assert r.status_code == 200
        route = r.json()["route"]
        assert route["target"] == "near@1/local"
        assert "no target meets the 1 ms budget" in route["reason"]

        strict = {"x-tenant": "interactive"}
        body = text_request("strict", latency_budget_ms=1)
        for i in range(12):  # the strict route's own warm-up
            warm = text_request(f"s{i}")
            assert (await client.post("/v1/infer", json=warm, headers=strict)).status_code == 200
        r = await client.post("/v1/infer", json=body, headers=strict)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        problem = r.json()
        assert problem["code"] == "overloaded" and "1 ms latency budget" in problem["detail"]
        ok = await client.post(
            "/v1/infer", json=text_request("roomy", latency_budget_ms=500), headers=strict
        )
        assert ok.status_code == 200
