"""Every Redis feature on a real 3-master Redis Cluster, with a master restarted mid-run.

Two real ``prism serve`` processes point at the cluster with ``redis+cluster://``: the cache
(entries spread over every shard), single-flight, experiment counters, guardrail stops and
feedback all work across them, and a master killed and restarted under load costs no request
(the cache says ``off`` meanwhile, then ``hit`` again; counters pushed late lose nothing).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from prism.gateway.cache import RedisStore
from prism.gateway.experiments import RedisCounterStore
from prism.gateway.experiments._counters import Answer, ArmCounts
from prism.gateway.repository import RedisOverrideStore
from prism.gateway.settings import Settings
from prism.gateway.shared_redis import (
    RedisURLError,
    check_redis_url,
    close_redis,
    connect_redis,
    get_by_slot,
    redis_errors,
)
from tests.redis_cluster import RedisClusterProcesses
from tests.repository.test_overrides import _race
from tests.support import PRISM, ROOT, GatewayProcess, gateway_pair

pytestmark = pytest.mark.slow

POLICY = """
version: 1
models:
  m:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, seed: 1}
      "2": {backend: local, kind: fake, device: cpu, dim: 8, seed: 2}
  slow:
    versions:
      "1": {backend: local, kind: fake, device: cpu, dim: 8, latency_ms: 300}
routes:
  - name: cached
    match: {headers: {x-route: cached}}
    model: m
    version: "1"
    cache: {ttl_s: 300}
  - name: slow
    match: {headers: {x-route: slow}}
    model: slow
    cache: {ttl_s: 300}
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
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    nodes = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, cluster: RedisClusterProcesses
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    path = tmp_path_factory.mktemp("gateways") / "policy.yaml"
    path.write_text(POLICY)
    with gateway_pair(path, redis_url=cluster.url) as pair:
        yield pair


def infer(
    gw: GatewayProcess, texts: list[str], unit: str | None = None, route: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"text": t} for t in texts]}
    if unit is not None:
        body["routing"] = {"unit": unit}
    headers = {"x-route": route} if route else {}
    return httpx.post(gw.url + "/v1/infer", json=body, headers=headers, timeout=15)


def experiment(gw: GatewayProcess) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/experiments/exp", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def requests_of(arms: dict[str, Any]) -> int:
    return sum(int(arm["requests"]) for arm in arms.values())


def metric(gw: GatewayProcess, name: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return sum(
        float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    )


# --- urls -----------------------------------------------------------------------------------


def test_cluster_urls_are_checked_at_start() -> None:
    assert check_redis_url("redis+cluster://a:7000,b:7001") == "redis+cluster://a:7000,b:7001"
    with pytest.raises(RedisURLError, match="only database 0"):
        check_redis_url("redis+cluster://a:7000/2")
    with pytest.raises(RedisURLError, match="scheme 'memcached'"):
        check_redis_url("memcached://a:7000")
    with pytest.raises(RedisURLError, match="at least one host"):
        check_redis_url("redis+cluster://")
    # --redis-cluster / PRISM_REDIS_CLUSTER folds into the one url everything reads
    assert Settings(redis_url="redis://r:6379", redis_cluster=True).redis_url == (
        "redis+cluster://r:6379"
    )
    assert Settings(redis_url="redis://r:6379/0", redis_cluster=True).redis_url == (
        "redis+cluster://r:6379/0"
    )
    assert Settings(redis_url="redis://r:6379/0").redis_url == "redis://r:6379/0"
    with pytest.raises(ValueError, match="only database 0"):
        Settings(redis_url="redis://r:6379/3", redis_cluster=True)


# --- the stores on the cluster, in this process ------------------------------------------------


async def test_cache_entries_spread_over_every_shard_and_read_back_in_one_call(
    cluster: RedisClusterProcesses,
) -> None:
    store = RedisStore(cluster.url)
    client = connect_redis(cluster.url, timeout_s=1.0)
    try:
        entries = {f"spread-{i}": f"value-{i}".encode() for i in range(60)}
        await store.set_many(entries, ttl_s=60)
        keys = [*entries, "spread-absent"]
        assert await store.get_many(keys) == [*entries.values(), None]
        # they really are on three masters (a single MGET across them would be CROSSSLOT)
        await client.initialize()
        owners = {client.get_node_from_key(store.prefix + k).name for k in entries}
        assert len(owners) == 3
    finally:
        await store.aclose()
        await client.aclose()


async def test_an_experiments_keys_share_one_slot_and_every_counter_call_works(
    cluster: RedisClusterProcesses,
) -> None:
    store = RedisCounterStore(cluster.url, prefix="prism:x-test:")
    client = connect_redis(cluster.url, timeout_s=1.0)
    try:
        one = ArmCounts()
        one.observe(12.0, ok=True)
        await store.push("e1", {"a": one, "b": one.merge(one)})
        totals = await store.totals("e1", ["a", "b", "c"])
        assert (totals["a"].requests, totals["b"].requests, totals["c"].requests) == (1, 2, 0)
        assert await store.stop("e1", "b", {"reason": "too slow"})
        assert not await store.stop("e1", "b", {"reason": "second"})  # the first reason stays
        assert (await store.guard("e1")).stopped == {"b": {"reason": "too slow"}}
        await store.resume("e1", {"a": totals["a"]})  # a MULTI on one slot
        guard = await store.guard("e1")
        assert guard.stopped == {} and guard.baseline["a"].requests == 1
        await store.remember({f"req-{i}": Answer("e1", "a", unit=i) for i in range(20)}, ttl_s=60)
        assert await store.recall("req-7") == Answer("e1", "a", unit=7)
        assert await store.claim("req-7", 60) and not await store.claim("req-7", 60)
        keys = [store._arm_key("e1", "a"), store._arm_key("e1", "b"), store._guard_key("e1")]
        slots = {await client.cluster_keyslot(k) for k in keys}
        assert len(slots) == 1
    finally:
        await store.aclose()
        await client.aclose()


async def test_lua_over_keys_with_one_hash_tag_works_and_across_slots_is_refused(
    cluster: RedisClusterProcesses,
) -> None:
    """How other shared state plugs in: a client from connect_redis, keys under one tag."""
    client = connect_redis(cluster.url, timeout_s=1.0)
    try:
        spend = client.register_script(
            "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) "
            "redis.call('SET', KEYS[2], n) return n"
        )
        keys = ["prism:{k:abc}:used", "prism:{k:abc}:last"]
        assert await spend(keys=keys, args=[3]) == 3
        assert await spend(keys=keys, args=[4]) == 7
        assert await client.get("prism:{k:abc}:last") == b"7"
        with pytest.raises(redis_errors()):  # CROSSSLOT: the reason keys carry a tag
            await spend(keys=["prism:k:abc:used", "prism:k:xyz:last"], args=[1])
    finally:
        await client.aclose()


async def test_a_burst_waits_for_connections_instead_of_failing(
    cluster: RedisClusterProcesses,
) -> None:
    # a long wait for a free connection: this checks queueing, not how fast this machine is
    client = connect_redis(cluster.url, timeout_s=5.0, pool_wait_s=60.0)
    try:
        await client.set("burst", b"x")
        # 600 lookups at once through 32 connections per node: they queue, none fails
        results = await asyncio.gather(
            *(get_by_slot(client, ["burst", f"b{i}"]) for i in range(600))
        )
        assert all(r == [b"x", None] for r in results)
        assert max(len(n._connections) for n in client.get_nodes()) <= 32
    finally:
        await close_redis(client)


# --- two gateways on the cluster --------------------------------------------------------------


def test_a_cache_entry_written_through_one_gateway_is_a_hit_through_the_other(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    texts = [f"shared input {i}" for i in range(24)]  # their keys fall on all three masters
    first = infer(a, texts, route="cached")
    assert first.status_code == 200, first.text
    assert first.json()["route"]["cache"] == "miss"
    second = infer(b, texts, route="cached")
    assert second.json()["route"]["cache"] == "hit"
    assert second.json()["outputs"] == first.json()["outputs"]


def test_concurrent_identical_misses_are_computed_once(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = gateways
    before = metric(a, "prism_batch_size_sum")
    results: list[httpx.Response] = []

    def call() -> None:
        results.append(infer(a, ["one slow input"], route="slow"))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 8
    assert len({str(r.json()["outputs"]) for r in results}) == 1
    assert metric(a, "prism_batch_size_sum") - before == 1  # one input reached the model


def test_experiment_arms_counters_stops_and_feedback_are_shared(
    gateways: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = gateways
    start = requests_of(experiment(a)["arms"])
    answered_by_a = ""
    for i in range(30):
        ra, rb = infer(a, [f"q{i}"], unit=f"user-{i}"), infer(b, [f"q{i}"], unit=f"user-{i}")
        assert ra.json()["route"]["arm"] == rb.json()["route"]["arm"]
        answered_by_a = ra.json()["id"]
    time.sleep(1.2)  # a sync of each process
    assert experiment(b)["counters"] == "redis"
    assert requests_of(experiment(b)["arms"]) - start == 60  # b's report has a's traffic
    # feedback on a's answer reaches the arm through b, once
    scored = httpx.post(b.url + "/v1/feedback", json={"id": answered_by_a, "value": 1}, timeout=10)
    assert scored.status_code == 202, scored.text
    again = httpx.post(a.url + "/v1/feedback", json={"id": answered_by_a, "value": 1}, timeout=10)
    assert again.status_code == 409, again.text
    # a guardrail stop on a is in force on b
    r = httpx.post(a.url + "/admin/experiments/exp/stop", params={"arm": "treatment"}, timeout=10)
    assert r.status_code == 200
    try:
        time.sleep(1.2)
        arms = Counter(
            infer(b, [f"s{i}"], unit=f"user-{i}").json()["route"]["arm"] for i in range(20)
        )
        assert arms == {"control": 20}
    finally:
        assert httpx.post(b.url + "/admin/experiments/exp/resume", timeout=10).status_code == 200


def test_a_master_restarted_mid_run_costs_no_request(
    gateways: tuple[GatewayProcess, GatewayProcess], cluster: RedisClusterProcesses
) -> None:
    a, b = gateways
    inputs = [f"load {i}" for i in range(12)]  # their keys are on all three masters
    assert infer(a, inputs, route="cached").status_code == 200  # in the cache before the load
    time.sleep(1.2)  # counts of earlier tests pushed
    start = requests_of(experiment(a)["arms"])
    phase = ["before"]
    seen: list[tuple[str, int, str]] = []  # (phase, status, cache status)
    last_cache = {a.port: "", b.port: ""}
    experiment_requests = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal experiment_requests
        i = 0
        while not stop.is_set():
            gw = (a, b)[i % 2]
            cached = infer(gw, [inputs[i % 12], inputs[(i + 5) % 12]], route="cached")
            cache = cached.json()["route"]["cache"] if cached.status_code == 200 else "error"
            seen.append((phase[0], cached.status_code, cache))
            last_cache[gw.port] = cache
            exp = infer(gw, [f"e{i}"], unit=f"user-{i % 50}")
            seen.append((phase[0], exp.status_code, "experiment"))
            experiment_requests += 1
            i += 1

    def wait_for(what: str, done: Any, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            assert time.monotonic() < deadline, f"{what}: {Counter(seen)}"
            time.sleep(0.05)

    def in_phase(name: str) -> int:
        return sum(1 for p, _, c in seen if p == name and c != "experiment")

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for("load before", lambda: in_phase("before") >= 6)
        phase[0] = "down"
        cluster.kill(1)
        cluster.wait_failed()  # the survivors refuse every command: CLUSTERDOWN
        wait_for("load while down", lambda: in_phase("down") >= 6)
        cluster.restart(1)
        cluster.wait_ok()
        phase[0] = "recovering"
        last_cache.update({a.port: "", b.port: ""})
        # each gateway retries the store after its back-off and finds the cache again
        wait_for("cache back", lambda: set(last_cache.values()) == {"hit"})
        phase[0] = "after"
        wait_for("load after", lambda: in_phase("after") >= 6)
    finally:
        stop.set()
        worker.join(30)
    by_phase: dict[str, Counter[str]] = {}
    for name, status, cache in seen:
        assert status == 200, (name, status)  # no request failed, in any phase
        if cache != "experiment":
            by_phase.setdefault(name, Counter())[cache] += 1
    print("\ncache status per phase (requests):", {k: dict(v) for k, v in by_phase.items()})
    assert by_phase["before"]["hit"] > 0
    assert by_phase["down"]["off"] > 0  # the cache turned itself off ...
    assert by_phase["after"]["off"] == 0 and by_phase["after"]["hit"] > 0  # ... and came back
    assert metric(a, "prism_cache_errors_total") + metric(b, "prism_cache_errors_total") > 0
    # experiment counts made while the cluster was down were pushed once it was back: none lost
    deadline = time.monotonic() + 10
    while requests_of(experiment(a)["arms"]) - start < experiment_requests:
        assert time.monotonic() < deadline, requests_of(experiment(a)["arms"]) - start
        time.sleep(0.3)
    assert requests_of(experiment(a)["arms"]) - start == experiment_requests


def test_serve_refuses_a_bad_redis_url_with_a_message() -> None:
    res = subprocess.run(
        [*PRISM, "serve", "--redis-url", "redis+cluster://r:6379/2", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "a Redis Cluster has only database 0" in res.stderr
    assert "Traceback" not in res.stderr


async def test_model_overrides_compare_and_set_on_a_cluster(
    cluster: RedisClusterProcesses,
) -> None:
    """Label moves from three replicas at once all land: the compare-and-set script's keys share
    the ``{overrides}`` hash tag, so it runs on one master."""
    stores = [RedisOverrideStore(cluster.url) for _ in range(3)]
    try:
        await asyncio.gather(*(_race(s, f"c{n}-") for n, s in enumerate(stores)))
        final = await stores[0].read()
        assert len(final.labels["m"]) == 36 and final.revision == 36
        assert await stores[2].revision() == 36
    finally:
        for s in stores:
            await s.aclose()
