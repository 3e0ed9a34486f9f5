"""Two real `prism serve` processes sharing a real Redis: the policy engine end to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import GatewayProcess, eventually, gateway_pair

pytestmark = pytest.mark.slow

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
  near:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 3}
  far:  # far apart from near: a busy CI box must not blur which one is faster
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 150}
  broken:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, fail_every: 1}
routes:
  - name: fast
    match: {headers: {x-route: fast}}
    targets: [{model: far}, {model: near}]
    latency: {strategy: fastest, warmup: 3, explore_every: 50}
    cache: {ttl_s: 0}
  - name: breaker
    match: {headers: {x-route: breaker}}
    model: broken
    fallback: [{model: near}]
    circuit: {failures: 3, cooldown_s: 60}
    cache: {ttl_s: 0}
  - name: text
    match: {modality: [text]}
    model: m
    cache: {ttl_s: 0}
experiments:
  exp:
    route: text
    arms:
      control: {version: "1", weight: 50}
      treatment: {version: "2", weight: 50}
"""


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    path = tmp_path_factory.mktemp("gateways") / "policy.yaml"
    path.write_text(POLICY)
    # a database of their own: the counters of earlier runs in this Redis do not leak in
    url = redis_url.rsplit("/", 1)[0] + "/3"
    with gateway_pair(path, redis_url=url) as pair:
        yield pair


def infer(gw: GatewayProcess, text: str, unit: str | None = None, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"text": text}]}
    if unit is not None:
        body["routing"] = {"unit": unit}
    return httpx.post(gw.url + "/v1/infer", json=body, headers=headers, timeout=10)


def experiment(gw: GatewayProcess) -> dict[str, Any]:
    return httpx.get(gw.url + "/admin/experiments/exp", timeout=10).json()  # type: ignore[no-any-return]


def test_same_unit_same_arm_in_both_processes_and_counters_are_shared(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    start = experiment(a)["arms"]
    for i in range(30):
        arm_a = infer(a, f"q{i}", unit=f"user-{i}").json()["route"]["arm"]
        arm_b = infer(b, f"q{i}", unit=f"user-{i}").json()["route"]["arm"]
        assert arm_a == arm_b
    time.sleep(0.8)  # one sync interval of each process
    arms = experiment(a)["arms"]
    requests = sum(arms[x]["requests"] - start[x]["requests"] for x in arms)
    assert requests == 60  # a's report includes b's traffic
    assert experiment(b)["counters"] == "redis"


def test_a_stop_on_one_process_reaches_the_other(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    r = httpx.post(a.url + "/admin/experiments/exp/stop", params={"arm": "treatment"}, timeout=10)
    assert r.status_code == 200
    try:
        time.sleep(1.0)
        arms = Counter(
            infer(b, f"s{i}", unit=f"user-{i}").json()["route"]["arm"] for i in range(20)
        )
        assert arms == {"control": 20}
        assert experiment(b)["arms"]["treatment"]["stopped"]["reason"] == "stopped by an operator"
    finally:
        assert httpx.post(b.url + "/admin/experiments/exp/resume", timeout=10).status_code == 200
    time.sleep(1.0)
    arms = Counter(infer(a, f"r{i}", unit=f"user-{i}").json()["route"]["arm"] for i in range(20))
    assert set(arms) == {"control", "treatment"}


def test_after_warm_up_the_faster_target_gets_the_traffic(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = gateways
    for i in range(10):
        assert infer(a, f"warm{i}", **{"x-route": "fast"}).status_code == 200
    targets = Counter(
        infer(a, f"f{i}", **{"x-route": "fast"}).json()["route"]["target"] for i in range(100)
    )
    assert targets["near@1/local"] >= 90, targets
    health = httpx.get(a.url + "/admin/targets", timeout=10).json()["targets"]
    assert health["near@1/local"]["ewma_ms"] < health["far@1/local"]["ewma_ms"]


def test_a_failing_target_trips_its_breaker_and_no_request_fails(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    _, b = gateways
    routes = []
    for i in range(20):
        r = infer(b, f"b{i}", **{"x-route": "breaker"})
        assert r.status_code == 200, r.text
        routes.append(r.json()["route"])
    assert all(r["target"] == "near@1/local" and r["fallback"] for r in routes)
    assert [r["attempts"] for r in routes[:3]] == [2, 2, 2]
    assert {r["attempts"] for r in routes[3:]} == {1}  # the open circuit is skipped
    circuit = httpx.get(b.url + "/admin/targets", timeout=10).json()["targets"]["broken@1/local"][
        "circuit"
    ]
    assert circuit["state"] == "open" and circuit["trips"] == 1


def test_a_bad_policy_file_keeps_both_serving(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    good = a.policy.read_text()
    a.policy.write_text(good.replace("weight: 50}", "weight: 50, color: red}", 1))
    try:
        # each replica watches the file on its own: wait for both to have refused it
        for gw in (b, a):
            url = gw.url + "/admin/policy"
            eventually(lambda url=url: bool(httpx.get(url, timeout=10).json()["last_error"]), url)
            error = httpx.get(url, timeout=10).json()["last_error"]
            assert error.endswith("experiments.exp.arms.control.color: unknown key"), error
        for gw in (a, b):
            assert infer(gw, "still serving", unit="u1").status_code == 200
        metrics = httpx.get(a.url + "/metrics", timeout=10).text
        assert "prism_policy_last_reload_ok 0.0" in metrics
    finally:
        a.policy.write_text(good)
    time.sleep(1.0)
    assert httpx.get(a.url + "/admin/policy", timeout=10).json()["last_error"] is None
