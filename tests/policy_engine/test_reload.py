"""Hot reload through the admin API and the file watcher: atomic swap, bad files refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .conftest import Client, GatewayFactory, text_request

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1, latency_ms: LATENCY}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
    labels: {stable: "STABLE"}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: stable
    cache: {ttl_s: 0}
"""


async def policy_status_until(
    client: Client, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0
) -> dict[str, Any]:
    """``GET /admin/policy`` until ``predicate`` holds: what the file watcher did."""
    for _ in range(int(timeout_s / 0.05)):
        status: dict[str, Any] = (await client.get("/admin/policy")).json()
        if predicate(status):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"watcher did not act: {status}")


def policy(stable: str = "1", latency: int = 0) -> str:
    return POLICY.replace("STABLE", stable).replace("LATENCY", str(latency))


async def test_reload_moves_a_label_and_rolls_back(gateway: GatewayFactory, tmp_path: Path) -> None:
    async with gateway(policy("1")) as client:
        path = tmp_path / "policy.yaml"
        before = (await client.get("/admin/policy")).json()
        assert before["models"]["m"]["labels"] == {"stable": "1"} and before["last_error"] is None
        assert (await client.post("/v1/infer", json=text_request())).json()["version"] == "1"

        path.write_text(policy("2"))  # promote
        r = await client.post("/admin/policy/reload")
        assert r.status_code == 200 and r.json()["digest"] != before["digest"]
        assert (await client.post("/v1/infer", json=text_request())).json()["version"] == "2"

        path.write_text(policy("1"))  # roll back
        assert (await client.post("/admin/policy/reload")).status_code == 200
        assert (await client.post("/v1/infer", json=text_request())).json()["version"] == "1"
        metrics = (await client.get("/metrics")).text
        assert 'prism_policy_reloads_total{result="ok"} 2.0' in metrics


async def test_bad_file_keeps_the_running_policy(gateway: GatewayFactory, tmp_path: Path) -> None:
    async with gateway(policy("1")) as client:
        path = tmp_path / "policy.yaml"
        digest = (await client.get("/admin/policy")).json()["digest"]
        path.write_text(policy("1").replace("cache: {ttl_s: 0}", "cache: {ttl: 0}"))
        r = await client.post("/admin/policy/reload")
        assert r.status_code == 422 and r.headers["content-type"].startswith(
            "application/problem+json"
        )
        problem = r.json()
        expected = f"{path}:14: routes[0].cache.ttl: unknown key"
        assert problem["detail"] == expected and problem["issues"] == [expected]
        assert problem["running_digest"] == digest

        status = (await client.get("/admin/policy")).json()
        assert status["digest"] == digest and status["last_error"] == expected
        assert (await client.post("/v1/infer", json=text_request())).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'prism_policy_reloads_total{result="invalid"} 1.0' in metrics
        assert "prism_policy_last_reload_ok 0.0" in metrics

        path.write_text(policy("2"))  # fixed: the error clears
        assert (await client.post("/admin/policy/reload")).status_code == 200
        status = (await client.get("/admin/policy")).json()
        assert status["last_error"] is None
        assert "prism_policy_last_reload_ok 1.0" in (await client.get("/metrics")).text


async def test_in_flight_requests_finish_on_the_policy_they_started_with(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    async with gateway(policy("1", latency=300)) as client:
        slow = asyncio.create_task(client.post("/v1/infer", json=text_request("slow")))
        await asyncio.sleep(0.1)
        (tmp_path / "policy.yaml").write_text(policy("2"))
        assert (await client.post("/admin/policy/reload")).status_code == 200
        fast = await client.post("/v1/infer", json=text_request("fast"))
        assert fast.json()["version"] == "2"
        answer = await slow
        assert answer.status_code == 200 and answer.json()["version"] == "1"


async def test_watcher_reloads_on_change_and_reports_a_bad_file(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    async with gateway(policy("1"), policy_watch_s=0.05) as client:
        path = tmp_path / "policy.yaml"
        assert (await client.get("/admin/policy")).json()["watch_s"] == 0.05

        path.write_text(policy("2"))
        await policy_status_until(client, lambda s: s["models"]["m"]["labels"]["stable"] == "2")
        assert (await client.post("/v1/infer", json=text_request())).json()["version"] == "2"

        path.write_text("version: 1\nmodels: {}\n")
        status = await policy_status_until(client, lambda s: s["last_error"] is not None)
        assert status["last_error"].endswith(
            ":2: models: Dictionary should have at least 1 item after validation, not 0"
        )
        assert (await client.post("/v1/infer", json=text_request())).json()["version"] == "2"


BROKEN_VERSION = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "3": {backend: local, kind: text-encoder, path: no/such/folder}
    labels: {stable: "3"}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: stable
    cache: {ttl_s: 0}
"""


async def test_a_version_that_cannot_load_refuses_the_reload(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    async with gateway(policy("1")) as client:
        path = tmp_path / "policy.yaml"
        digest = (await client.get("/admin/policy")).json()["digest"]
        path.write_text(BROKEN_VERSION)
        r = await client.post("/admin/policy/reload")
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem["detail"].startswith(
            f"{path}:7: models.m.versions.3: cannot load m@3/local:"
        )
        status = (await client.get("/admin/policy")).json()
        assert status["digest"] == digest and status["models"]["m"]["labels"] == {"stable": "1"}
        assert status["last_issues"] == problem["issues"]
        # the label still points at the version that serves, and the gateway stays ready
        answer = await client.post("/v1/infer", json=text_request())
        assert answer.status_code == 200 and answer.json()["version"] == "1"
        assert (await client.get("/readyz")).status_code == 200
        assert (
            'prism_policy_reloads_total{result="invalid"} 1.0'
            in (await client.get("/metrics")).text
        )


async def test_a_failed_version_no_route_needs_leaves_the_gateway_ready(
    gateway: GatewayFactory,
) -> None:
    # at start there is no running policy to keep: what loads serves, the rest says why
    text = BROKEN_VERSION.replace('labels: {stable: "3"}', 'labels: {stable: "1"}')
    async with gateway(text) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["models"]["m@3/local"].startswith("FileNotFoundError") or (
            "no/such/folder" in ready.json()["models"]["m@3/local"]
        )
        direct = await client.post("/v1/infer", json={**text_request(), "version": "3"})
        assert direct.status_code == 503 and direct.json()["code"] == "not_ready"


async def test_a_version_redefined_in_place_never_answers_from_the_old_cache(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    cached = policy("1").replace("cache: {ttl_s: 0}", "cache: {ttl_s: 600}")
    async with gateway(cached) as client:
        first = (await client.post("/v1/infer", json=text_request("same"))).json()
        again = (await client.post("/v1/infer", json=text_request("same"))).json()
        assert again["route"]["cache"] == "hit"
        # batching is operational: the cached answer stays valid
        (tmp_path / "policy.yaml").write_text(
            cached.replace("seed: 1,", "seed: 1, batching: {max_batch_size: 4},")
        )
        assert (await client.post("/admin/policy/reload")).status_code == 200
        kept = (await client.post("/v1/infer", json=text_request("same"))).json()
        assert kept["route"]["cache"] == "hit"
        # another seed is another model under the same id: a miss, and the new answer
        (tmp_path / "policy.yaml").write_text(cached.replace("seed: 1,", "seed: 5,"))
        assert (await client.post("/admin/policy/reload")).status_code == 200
        redefined = (await client.post("/v1/infer", json=text_request("same"))).json()
        assert redefined["route"]["cache"] == "miss"
        assert redefined["outputs"] != first["outputs"]


async def test_watcher_reports_a_deleted_file_and_clears_when_it_is_back(
    gateway: GatewayFactory, tmp_path: Path
) -> None:
    async with gateway(policy("1"), policy_watch_s=0.05) as client:
        path = tmp_path / "policy.yaml"
        original = path.read_text()

        path.unlink()
        status = await policy_status_until(client, lambda s: s["last_error"] is not None)
        assert "cannot read" in str(status["last_error"])
        assert (await client.post("/v1/infer", json=text_request())).status_code == 200
        # the very same bytes come back: the error clears, no edit needed
        path.write_text(original)
        await policy_status_until(client, lambda s: s["last_error"] is None)
        assert "prism_policy_last_reload_ok 1.0" in (await client.get("/metrics")).text
