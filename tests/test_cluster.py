"""Prism scaled out on real engines (``make test-cluster``): HAProxy on loopback, health checks
on ``/readyz``, in front of three ``prism serve`` replicas sharing one Redis, which route to two
``prism worker`` processes (one per experiment arm) with an in-process fallback.

Every test prints its numbers (``pytest -s`` shows them; ``make test-cluster`` passes ``-s``).
The tests share one cluster and run in file order; each leaves it whole for the next.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import (
    HAPROXY,
    HAProxy,
    SteadyLoad,
    WorkerProcess,
    start_all,
    stop_all,
    text_request,
)
from tests.support import GatewayProcess, RedisProcess

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make haproxy)"),
]

WORKER_POLICY = """
version: 1
models:
  fake:
    versions:
      "1": {backend: local, kind: fake, dim: 16, seed: 1, latency_ms: 2}
      "2": {backend: local, kind: fake, dim: 16, seed: 2, latency_ms: 2}
"""

GATEWAY_POLICY = """
version: 1
models:
  embed:
    modalities: [text]
    versions:
      "1": {{backend: kserve, url: "{worker1}", remote_model: fake}}
      "2": {{backend: kserve, url: "{worker2}", remote_model: fake}}
      # the fallback when a worker is gone: the same model, in the gateway's own process
      local: {{backend: local, kind: fake, dim: 16, seed: 2}}
    labels: {{stable: "1"}}
routes:
  # the label test's route: a header picks it, so no other test reaches it
  - {{name: stable, match: {{headers: {{x-tenant: stable}}}}, model: embed, version: stable, cache: {{ttl_s: 0}}}}
  - name: text
    match: {{modality: [text]}}
    model: embed
    version: "1"
    timeout_ms: 5000
    retries: 1
    fallback: [{{model: embed, version: local}}]
    cache: {{ttl_s: 600}}
experiments:
  split:
    route: text
    unit: user
    arms: {{control: {{version: "1", weight: 50}}, treatment: {{version: "2", weight: 50}}}}
"""

#: what the reload test adds (as an operator editing the ConfigMap would)
BETA_ROUTE = """
  - name: beta
    match: {headers: {x-tenant: beta}}
    model: embed
    version: local
"""

#: drain settings of the replicas: short, so the rolling restart stays quick
DRAIN = {"PRISM_DRAIN_GRACE_S": "1", "PRISM_DRAIN_TIMEOUT_S": "10", "PRISM_POLICY_WATCH_S": "0.2"}
#: an admin key for /admin/*; callers without a key may still infer (PRISM_REQUIRE_KEY=false),
#: and a managed key's limits hold for whoever presents one
ADMIN_KEY = "cluster-admin-secret"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
KEYS = {"PRISM_ADMIN_KEYS": json.dumps([ADMIN_KEY]), "PRISM_REQUIRE_KEY": "false"}


@dataclass
class Cluster:
    redis: RedisProcess
    workers: list[WorkerProcess]
    gateways: list[GatewayProcess]
    lb: HAProxy
    policy: Path

    def names(self) -> list[str]:
        return [f"g{i}" for i in range(len(self.gateways))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    (tmp / "worker.yaml").write_text(WORKER_POLICY)
    redis = RedisProcess()
    workers = [WorkerProcess(tmp / "worker.yaml", f"fake@{v}") for v in ("1", "2")]
    policy = tmp / "policy.yaml"
    policy.write_text(GATEWAY_POLICY.format(worker1=workers[0].url, worker2=workers[1].url))
    gateways = [
        GatewayProcess(policy, redis_url=redis.url, env={**DRAIN, **KEYS}) for _ in range(3)
    ]
    lb = HAProxy({f"g{i}": gw.port for i, gw in enumerate(gateways)}, tmp)
    everything: list[Any] = [lb, *gateways, *workers, redis]
    try:
        redis.start()
        start_all(workers)
        start_all(gateways)
        lb.start()
        for name in lb.servers:
            lb.wait_status(name, "UP")
        print(
            f"\ncluster: HAProxy {lb.url} -> gateways {[gw.port for gw in gateways]}, "
            f"Redis {redis.port}, workers {[w.port for w in workers]}"
        )
        yield Cluster(redis, workers, gateways, lb, policy)
    finally:
        stop_all(everything)


def _infer(url: str, text: str, unit: str, **extra: Any) -> httpx.Response:
    body = {"inputs": [{"text": text}], "routing": {"unit": unit}}
    return httpx.post(url + "/v1/infer", json=body, timeout=30, **extra)


def test_a_cache_entry_written_through_one_replica_is_a_hit_on_the_others(
    cluster: Cluster,
) -> None:
    first, *others = cluster.gateways
    routes = []
    for i in range(20):
        text, unit = f"shared across replicas {i}", f"cache-{i}"
        written = _infer(first.url, text, unit)
        assert written.status_code == 200, written.text
        assert written.json()["route"]["cache"] == "miss"
        for gw in others:
            read = _infer(gw.url, text, unit)
            assert read.status_code == 200, read.text
            routes.append(read.json()["route"]["cache"])
            assert read.json()["outputs"] == written.json()["outputs"]
    print(f"\ncache: 20 entries written through g0, read through g1 and g2: {Counter(routes)}")
    assert routes == ["hit"] * 40


async def _arms(urls: list[str], units: int) -> dict[str, list[str]]:
    """Each unit's arm as every replica answers it (8 requests in flight at a time)."""
    seen: dict[str, list[str]] = {}
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(timeout=30) as client:

        async def ask(url: str, u: int) -> None:
            body = {"inputs": [{"text": f"split {u}"}], "routing": {"unit": f"user-{u}"}}
            async with gate:
                r = await client.post(url + "/v1/infer", json=body)
            assert r.status_code == 200, r.text
            route = r.json()["route"]
            assert route["experiment"] == "split"
            seen.setdefault(f"user-{u}", []).append(route["arm"])

        await asyncio.gather(*(ask(url, u) for u in range(units) for url in urls))
    return seen


def test_a_unit_gets_the_same_arm_from_every_replica_and_the_split_holds(
    cluster: Cluster,
) -> None:
    units = 200
    arms = asyncio.run(_arms([gw.url for gw in cluster.gateways], units))
    assert all(len(answers) == 3 for answers in arms.values())
    mixed = [u for u, answers in arms.items() if len(set(answers)) != 1]
    split = Counter(answers[0] for answers in arms.values())
    # each replica counted its own requests; the shared report (Redis) has all of them once
    # every replica has pushed its last deltas (each does every 0.5 s)
    deadline = time.monotonic() + 5
    while True:
        report = httpx.get(
            cluster.gateways[2].url + "/admin/experiments/split", headers=ADMIN, timeout=10
        ).json()
        shared = {name: arm["assigned"] for name, arm in report["arms"].items()}
        if sum(shared.values()) >= 3 * units or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    print(
        f"\nexperiment: {units} units x 3 replicas; units with more than one arm: {len(mixed)}; "
        f"units per arm {dict(split)} (weights 50/50); shared assignments in Redis {shared}"
    )
    assert mixed == []
    # 50/50 over 200 units: the count of either arm is Binomial(200, 0.5), sd ~7.1
    assert abs(split["control"] - units / 2) < 4 * math.sqrt(units / 4)
    assert sum(shared.values()) >= 3 * units


def _digests(cluster: Cluster) -> list[str]:
    return [
        httpx.get(gw.url + "/admin/policy", headers=ADMIN, timeout=5).json()["digest"]
        for gw in cluster.gateways
    ]


def test_a_policy_reloaded_on_one_replica_is_in_force_on_all_within_2_s(
    cluster: Cluster,
) -> None:
    before = _digests(cluster)
    assert len(set(before)) == 1
    text = cluster.policy.read_text()
    cluster.policy.write_text(
        # first match wins: the new route goes first
        text.replace("routes:\n", "routes:\n" + BETA_ROUTE.lstrip("\n"), 1)
    )
    started = time.monotonic()
    reloaded = httpx.post(
        cluster.gateways[0].url + "/admin/policy/reload", headers=ADMIN, timeout=10
    )
    assert reloaded.status_code == 200, reloaded.text
    wanted = reloaded.json()["digest"]
    assert wanted != before[0]
    # the others pick the same file up by themselves (PRISM_POLICY_WATCH_S)
    while (digests := _digests(cluster)) != [wanted] * 3 and time.monotonic() - started < 2:
        time.sleep(0.02)
    converged_s = time.monotonic() - started
    rules = [
        _infer(gw.url, "tenant beta", "beta-1", headers={"x-tenant": "beta"}).json()["route"]
        for gw in cluster.gateways
    ]
    print(
        f"\npolicy reload: POST /admin/policy/reload on g0; all 3 replicas run {wanted[:12]} "
        f"{converged_s:.2f} s later; the new route answers on each: {[r['rule'] for r in rules]}"
    )
    assert digests == [wanted] * 3, f"not converged within 2 s: {digests}"
    assert [r["rule"] for r in rules] == ["beta"] * 3


def _stable_versions(cluster: Cluster) -> list[str]:
    return [
        _infer(gw.url, "tenant stable", "s-1", headers={"x-tenant": "stable"}).json()["version"]
        for gw in cluster.gateways
    ]


def _until_all(cluster: Cluster, version: str, started: float) -> tuple[list[str], float]:
    while (seen := _stable_versions(cluster)) != [version] * 3 and time.monotonic() - started < 2:
        time.sleep(0.02)
    return seen, time.monotonic() - started


def test_a_label_moved_on_one_replica_is_in_force_on_all_within_2_s(cluster: Cluster) -> None:
    assert _stable_versions(cluster) == ["1"] * 3
    started = time.monotonic()
    url = cluster.gateways[0].url + "/admin/models/embed/labels/stable"
    moved = httpx.put(url, json={"version": "2"}, headers=ADMIN, timeout=10)
    assert moved.status_code == 200, moved.text
    promoted, promote_s = _until_all(cluster, "2", started)
    started = time.monotonic()
    back = httpx.post(
        cluster.gateways[1].url + "/admin/models/embed/labels/stable/rollback", headers=ADMIN
    )
    assert back.status_code == 200, back.text
    rolled, rollback_s = _until_all(cluster, "1", started)
    print(
        f"\nlabel move: stable -> 2 on g0, in force on all 3 after {promote_s:.2f} s; "
        f"rolled back on g1, all 3 on 1 again after {rollback_s:.2f} s"
    )
    assert promoted == ["2"] * 3, f"not everywhere within 2 s: {promoted}"
    assert rolled == ["1"] * 3, f"rollback not everywhere within 2 s: {rolled}"


def test_a_keys_limit_holds_across_replicas_and_a_revocation_reaches_them_all(
    cluster: Cluster,
) -> None:
    made = httpx.post(
        cluster.gateways[0].url + "/admin/keys",
        json={"name": "batch-job", "rpm": 20},
        headers=ADMIN,
        timeout=10,
    )
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    caller = {"authorization": f"Bearer {key}"}
    before = {name: int(row["stot"] or 0) for name, row in cluster.lb.stats().items()}
    statuses: Counter[int] = Counter()
    for i in range(30):  # round robin: ten through each replica
        r = _infer(cluster.lb.url, f"limited {i}", f"k-{i}", headers=caller)
        statuses[r.status_code] += 1
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "ratelimit-policy" in r.headers
    spread = {
        name: int(row["stot"] or 0) - before[name]
        for name, row in cluster.lb.stats().items()
        if name in cluster.names()
    }
    revoked = httpx.delete(cluster.gateways[2].url + f"/admin/keys/{key_id}", headers=ADMIN)
    assert revoked.status_code in (200, 204), revoked.text
    started = time.monotonic()
    refused = []
    while time.monotonic() - started < 1.0 and len(refused) < 3:
        refused = [
            f"g{i}"
            for i, gw in enumerate(cluster.gateways)
            if _infer(gw.url, "after revocation", "k-x", headers=caller).status_code == 401
        ]
    gone_s = time.monotonic() - started
    print(
        f"\nkey limit: rpm 20 through HAProxy, requests per replica {spread}: "
        f"{dict(statuses)}; revoked on g2, refused by {len(refused)} of 3 after {gone_s:.2f} s"
    )
    assert statuses == {200: 20, 429: 10}, statuses
    assert all(n > 0 for n in spread.values()), spread  # it really went through every replica
    assert len(refused) == 3, f"revocation not everywhere within 1 s: {refused}"


def _restart(cluster: Cluster, i: int) -> float:
    """Start replica ``i`` again on its port and wait until HAProxy sends it traffic."""
    started = time.monotonic()
    cluster.gateways[i].start()
    cluster.lb.wait_status(f"g{i}", "UP")
    return time.monotonic() - started


def test_sigkill_of_one_replica_under_load_fails_no_request(cluster: Cluster) -> None:
    retries0, redispatches0 = cluster.lb.retries()
    victim = cluster.gateways[1]
    with SteadyLoad(cluster.lb.url, rate=60) as load:
        load.wait_for(120)
        assert victim.proc is not None
        killed = time.monotonic()
        victim.proc.kill()
        victim.proc.wait(10)
        cluster.lb.wait_status("g1", "DOWN")
        down_s = time.monotonic() - killed
        load.wait_for(180)
    retries, redispatches = cluster.lb.retries()
    back_s = _restart(cluster, 1)
    print(
        f"\nSIGKILL g1 under load: {load.summary()}; HAProxy marked it DOWN {down_s:.2f} s "
        f"after the kill; HAProxy retried {retries - retries0} requests "
        f"({redispatches - redispatches0} redispatched to another replica); "
        f"g1 back in {back_s:.1f} s"
    )
    assert load.outcomes == {"200": load.total}, load.failures[:5]


def test_a_rolling_restart_of_all_replicas_under_load_loses_nothing(cluster: Cluster) -> None:
    retries0, _ = cluster.lb.retries()
    steps = []
    with SteadyLoad(cluster.lb.url, rate=60) as load:
        load.wait_for(60)
        for i, gw in enumerate(cluster.gateways):
            assert gw.proc is not None
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            try:
                rc = gw.proc.wait(60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"g{i} still running 60 s after SIGTERM: {gw.stacks()}")
            drained_s = time.monotonic() - signalled
            assert rc == 0, gw.log.read_text()[-2000:]
            _warn_of_overruns(f"g{i}", gw.log.read_text())
            steps.append(f"g{i} drained in {drained_s:.1f} s, back in {_restart(cluster, i):.1f} s")
            load.wait_for(30)
    retries, _ = cluster.lb.retries()
    print(
        f"\nrolling restart (SIGTERM, exit 0, start again) of g0, g1, g2 under load: "
        f"{load.summary()}; {'; '.join(steps)}; HAProxy retries {retries - retries0}"
    )
    assert load.outcomes == {"200": load.total}, load.failures[:5]


def _warn_of_overruns(name: str, log: str) -> None:
    """A shutdown step left behind after its bound (``Runtime.aclose``) lets the process exit,
    as it should; the test says so, with the stacks the gateway logged, instead of hiding it."""
    overran = [line for line in log.splitlines() if "did not finish within" in line]
    if overran:
        start = log.index(overran[0])
        warnings.warn(f"{name}: a shutdown step overran: {log[start : start + 4000]}", stacklevel=2)


def _uncached(i: int) -> dict[str, Any]:
    return {**text_request(i), "cache": "bypass"}


def test_a_worker_killed_under_load_falls_back_as_the_policy_says(cluster: Cluster) -> None:
    treatment = cluster.workers[1]  # serves embed@2, the experiment's treatment arm
    with SteadyLoad(cluster.lb.url, rate=60, body=_uncached) as load:
        load.wait_for(90)
        before = Counter(load.targets)
        treatment.signal(signal.SIGKILL)
        assert treatment.proc is not None
        treatment.proc.wait(10)
        load.wait_for(180)
        after = load.targets - before
    served = {
        f"{target}{' (fallback)' if fallback else ''}": n for (target, fallback), n in after.items()
    }
    fallbacks = sum(n for (target, fallback), n in after.items() if fallback)
    print(
        f"\nworker for embed@2 killed under load: {load.summary()}; answered after the kill: "
        f"{served}; {fallbacks} answered by the fallback"
    )
    assert load.outcomes == {"200": load.total}, load.failures[:5]
    assert fallbacks > 0
    # every fallback answer came from the policy's fallback, embed@local in the gateway
    assert all(target.startswith("embed@local") for (target, fb) in after if fb)
    # the control arm's worker kept answering its own units
    assert any(target.startswith("embed@1") and not fb for (target, fb) in after)
    treatment.start()
