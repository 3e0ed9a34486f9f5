"""The model repository API on real `prism serve` processes sharing a real Redis: listing,
load (warmed up), unload with calls in flight, promote and rollback, seen by both replicas."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.support import GatewayProcess, eventually, gateway_pair

pytestmark = pytest.mark.slow

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
      "slow": {backend: local, kind: fake, device: cpu, dim: 8, seed: 3, latency_ms: 1500}
      "broken": {backend: local, kind: fake, device: cpu, dim: 8, fail_every: 1}
    labels: {stable: "1"}
routes:
  - name: text
    match: {modality: [text]}
    model: m
    version: stable
    cache: {ttl_s: 0}
"""


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    path = tmp_path_factory.mktemp("repository") / "policy.yaml"
    path.write_text(POLICY)
    # a database of their own, emptied: overrides of earlier runs must not leak in
    url = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    with gateway_pair(path, redis_url=url) as pair:
        yield pair


def call(method: str, gw: GatewayProcess, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, timeout=60, **kwargs)


def infer(gw: GatewayProcess, version: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"text": "hello"}]}
    if version is not None:
        body["model"], body["version"] = "m", version
    return call("POST", gw, "/v1/infer", json=body)


def version_of(gw: GatewayProcess, version: str) -> dict[str, Any]:
    models = call("GET", gw, "/admin/models").json()["models"]
    (model,) = [m for m in models if m["name"] == "m"]
    (found,) = [v for v in model["versions"] if v["version"] == version]
    return found  # type: ignore[no-any-return]


def test_index_lists_every_version_with_its_state(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = gateways
    r = call("GET", a, "/admin/models")
    assert r.status_code == 200
    (model,) = r.json()["models"]
    assert model["name"] == "m" and model["labels"] == {"stable": "1"}
    one = next(v for v in model["versions"] if v["version"] == "1")
    assert one["state"] == "ready" and one["backend"] == "local/fake"
    assert one["targets"] == [
        {"key": "m@1/local", "state": "ready", "in_flight": 0, "reason": None}
    ]
    assert one["in_flight"] == 0 and one["loaded_at"] > 0 and one["reason"] is None


def test_unload_waits_for_calls_in_flight_then_frees_and_load_brings_it_back(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    answers: list[int] = []
    callers = [
        threading.Thread(target=lambda: answers.append(infer(a, "slow").status_code))
        for _ in range(3)
    ]
    for t in callers:
        t.start()
    # all three in flight before the unload: a caller that arrives after it is rightly refused
    eventually(lambda: version_of(a, "slow")["in_flight"] == 3, "3 calls in flight on m@slow")

    seen: list[str] = []
    watcher = threading.Thread(target=lambda: seen.append(version_of(a, "slow")["state"]))
    unload: list[httpx.Response] = []
    unloader = threading.Thread(
        target=lambda: unload.append(call("POST", a, "/admin/models/m/versions/slow/unload"))
    )
    unloader.start()
    eventually(lambda: version_of(a, "slow")["state"] != "ready", "m@slow leaves ready")
    watcher.start()
    watcher.join()
    unloader.join()
    for t in callers:
        t.join()

    assert answers == [200, 200, 200]  # the calls in flight finished on the unloading version
    assert seen[0] in ("unloading", "unloaded")
    r = unload[0]
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "unloaded" and r.json()["cut_off"] == 0
    assert r.json()["targets"] == []
    refused = infer(a, "slow")
    assert refused.status_code == 503 and "not loaded" in refused.json()["detail"]
    # the other replica follows: it unloads its own copy too
    eventually(lambda: version_of(b, "slow")["state"] == "unloaded", "b unloads m@slow")

    loaded = call("POST", a, "/admin/models/m/versions/slow/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready"
    assert infer(a, "slow").status_code == 200
    eventually(lambda: version_of(b, "slow")["state"] == "ready", "b loads m@slow again")


def test_unload_of_a_version_still_needed_is_409_unless_forced(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    r = call("POST", a, "/admin/models/m/versions/1/unload")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["needed_by"] == ["label 'stable'", "route 'text'"]
    assert version_of(a, "1")["state"] == "ready"

    forced = call("POST", a, "/admin/models/m/versions/1/unload", params={"force": "true"})
    assert forced.status_code == 200 and forced.json()["state"] == "unloaded"
    assert forced.json()["forced_past"] == ["label 'stable'", "route 'text'"]
    assert infer(a).status_code == 503  # the route has nothing left: its calls are refused
    assert call("GET", a, "/readyz").status_code == 200  # on purpose: the replica stays in
    policy = call("GET", b, "/admin/policy").json()
    eventually(
        lambda: call("GET", b, "/admin/policy").json()["models"]["m"]["unloaded"] == ["1"],
        "b sees m@1 unloaded",
    )
    assert call("POST", a, "/admin/models/m/versions/1/load").status_code == 200
    assert infer(a).status_code == 200
    eventually(lambda: version_of(b, "1")["state"] == "ready", "b loads m@1 again")
    assert policy["overrides"]["store"] == "redis"


def test_promote_and_rollback_reach_the_other_replica(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    assert infer(b).json()["version"] == "1"
    r = call("PUT", a, "/admin/models/m/labels/stable", json={"version": "2"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model": "m", "label": "stable", "version": "2", "previous": "1",
        "labels": {"stable": "2"},
    }  # fmt: skip
    assert infer(a).json()["version"] == "2"  # in force here at once
    eventually(lambda: infer(b).json()["version"] == "2", "b serves the promoted version")
    status = call("GET", b, "/admin/policy").json()
    assert status["models"]["m"]["labels"] == {"stable": "2"}
    assert status["overrides"]["labels"] == {"m": {"stable": {"version": "2", "file": "1"}}}
    b.stop()  # a restart keeps the promotion: it lives in Redis, not in the process
    b.start()
    assert infer(b).json()["version"] == "2"

    back = call("POST", b, "/admin/models/m/labels/stable/rollback")
    assert back.status_code == 200 and back.json()["version"] == "1"
    eventually(lambda: infer(a).json()["version"] == "1", "a serves the rolled-back version")
    assert call("GET", a, "/admin/policy").json()["overrides"]["labels"] == {}
    again = call("POST", a, "/admin/models/m/labels/stable/rollback")
    assert again.status_code == 409 and "nothing to roll back" in again.json()["detail"]
    # the audit log (shared through Redis) has each action, from either replica, refusal too
    audit = call("GET", a, "/admin/audit").json()["entries"]
    mine = [
        (e["action"], e["before"], e["after"]) for e in audit if e["target"] == "m/labels/stable"
    ]
    assert mine[:3] == [
        ("model.rollback", "1", "1"),  # refused: nothing to roll back (its outcome says so)
        ("model.rollback", "2", "1"),
        ("model.promote", "1", "2"),
    ], mine
    assert audit[0]["outcome"] != "ok"


def test_bad_promotions_are_refused_with_problem_documents(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = gateways
    cases = [
        ("/admin/models/nope/labels/stable", {"version": "1"}, 404),
        ("/admin/models/m/labels/stable", {"version": "9"}, 404),
        ("/admin/models/m/labels/1", {"version": "2"}, 422),
        ("/admin/models/m/labels/stable", {"versio": "2"}, 422),
    ]
    for path, body, status in cases:
        r = call("PUT", a, path, json=body)
        assert r.status_code == status, (path, body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert call("POST", a, "/admin/models/m/versions/9/load").status_code == 404
    assert infer(a).json()["version"] == "1"  # nothing moved


def test_a_version_whose_warm_up_fails_is_failed_and_cannot_be_promoted(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = gateways
    assert call("POST", a, "/admin/models/m/versions/broken/unload").status_code == 200
    r = call("POST", a, "/admin/models/m/versions/broken/load")
    assert r.status_code == 500 and r.json()["code"] == "load_failed"
    assert "warm-up inference failed" in r.json()["detail"]
    broken = version_of(a, "broken")
    assert broken["state"] == "failed" and "fake model failed on purpose" in broken["reason"]

    refused = call("PUT", a, "/admin/models/m/labels/stable", json={"version": "broken"})
    assert refused.status_code == 409 and "is failed here" in refused.json()["detail"]
    assert infer(a).json()["version"] == "1"
