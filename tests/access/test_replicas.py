"""Two real ``prism serve`` processes sharing one real Redis: limits hold across replicas,
revocations reach the other replica at once, Redis going away is a setting, and no secret
lands in Redis, the logs, the metrics or a problem document."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prism.gateway.auth import FRESH_S
from tests.access.conftest import ADMIN, bearer
from tests.doors.conftest import POLICY
from tests.support import PRISM, ROOT, GatewayProcess, RedisProcess

# a model slow enough that 50 requests overlap (latency is the fake model's sleep)
SLOW_POLICY = POLICY.replace(
    "routes:",
    """\
  slow:
    modalities: [text]
    versions:
      "1": {backend: local, kind: fake, dim: 4, latency_ms: 300}
routes:""",
)
INFER = {"model": "fake", "inputs": [{"text": "hello"}]}
SLOW = {"model": "slow", "inputs": [{"text": "hello"}], "cache": "bypass"}


def _env(**extra: str) -> dict[str, str]:
    return {"PRISM_ADMIN_KEYS": json.dumps([ADMIN]), **extra}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisProcess
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("replicas")
    policy = tmp / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    a = GatewayProcess(policy, redis_url=redis.url, env=_env()).start()
    try:
        b = GatewayProcess(policy, redis_url=redis.url, env=_env()).start()
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def cli_create(url: str, *args: str) -> dict[str, Any]:
    """``prism keys create`` against a replica (the CLI is what operators use)."""
    done = subprocess.run(
        [*PRISM, "keys", "create", *args, "--url", url],
        cwd=ROOT,
        env={**os.environ, "PRISM_ADMIN_KEY": ADMIN},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def cli(url: str, *args: str, admin: str | None = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PRISM_ADMIN_KEY"}
    if admin is not None:
        env["PRISM_ADMIN_KEY"] = admin
    return subprocess.run(
        [*PRISM, "keys", *args, "--url", url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_lists_updates_and_revokes(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    made = cli_create(
        a.url, "cli-team", "--models", "fake", "--rpm", "50", "--expires-at", "2099-01-01T00:00:00Z"
    )
    assert made["expires_at"] == 4070908800.0 and made["models"] == ["fake"]
    listed = json.loads(cli(b.url, "list").stdout)["keys"]
    assert made["id"] in [k["id"] for k in listed] and made["key"] not in str(listed)
    updated = json.loads(
        cli(b.url, "update", made["id"], "--rpm", "60", "--clear", "models").stdout
    )
    assert updated["rpm"] == 60 and updated["models"] is None
    revoked = json.loads(cli(a.url, "revoke", made["id"]).stdout)
    assert revoked["revoked_at"] is not None
    refused = cli(a.url, "update", made["id"], "--rpm", "1")
    assert refused.returncode == 1 and json.loads(refused.stderr)["status"] == 409
    assert cli(a.url, "list", admin=None).returncode == 2  # no PRISM_ADMIN_KEY
    wrong = cli(a.url, "list", admin="not-the-admin-key")
    assert wrong.returncode == 1 and json.loads(wrong.stderr)["status"] == 401


def test_rpm_holds_across_two_replicas(replicas: tuple[GatewayProcess, GatewayProcess]) -> None:
    a, b = replicas
    made = cli_create(a.url, "rpm-job", "--rpm", "20")
    answers = [
        httpx.post((a, b)[i % 2].url + "/v1/infer", json=INFER, headers=bearer(made["key"]))
        for i in range(30)
    ]
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == 20 and len(limited) == 10  # 20 answered in any minute, whoever answers
    assert {r.request.url.port for r in ok} == {a.port, b.port}
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["ratelimit-policy"] == '"rpm";q=20;w=60'
        assert r.headers["ratelimit"].startswith('"rpm";r=0;t=')
        assert r.json()["code"] == "rate_limited" and r.json()["limit"] == "rpm"
    # the OpenAI door says it its own way, with the same headers
    emb = httpx.post(
        b.url + "/v1/embeddings", json={"model": "fake", "input": "x"}, headers=bearer(made["key"])
    )
    assert emb.status_code == 429 and emb.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in emb.headers and "ratelimit" in emb.headers
    v2 = httpx.post(
        a.url + "/v2/models/fake/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        headers=bearer(made["key"]),
    )
    assert v2.status_code == 429 and "over its limit" in v2.json()["error"]
    listed = httpx.get(b.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN)).json()
    assert listed["usage"]["requests_today"] == 20
    metrics = httpx.get(a.url + "/metrics").text
    assert f'prism_key_requests_total{{key="{made["id"]}",outcome="rpm"}}' in metrics


async def _burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as c:
        return await asyncio.gather(
            *(c.post(urls[i % 2] + "/v1/infer", json=SLOW, headers=bearer(key)) for i in range(n))
        )


def test_max_concurrent_holds_across_replicas_and_leases_come_back(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    made = cli_create(b.url, "burst-job", "--max-concurrent", "5")
    peak = 0

    async def run() -> list[httpx.Response]:
        nonlocal peak
        burst = asyncio.ensure_future(_burst([a.url, b.url], made["key"], 50))
        async with httpx.AsyncClient() as c:
            while not burst.done():
                usage = await c.get(a.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
                peak = max(peak, usage.json()["usage"]["in_flight"])
                await asyncio.sleep(0.02)
        return await burst

    answers = asyncio.run(run())
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 5 and codes.count(429) > 0
    assert all(r.json()["limit"] == "max_concurrent" for r in answers if r.status_code == 429)
    assert 1 <= peak <= 5  # never more than 5 leases held, on both replicas together
    after = httpx.get(b.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN)).json()
    assert after["usage"]["in_flight"] == 0  # every lease given back


def test_a_lease_comes_back_when_the_request_fails_or_the_caller_leaves(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, _ = replicas
    made = cli_create(a.url, "flaky", "--max-concurrent", "1")
    key = bearer(made["key"])
    bad = httpx.post(a.url + "/v1/infer", json={"model": "fake", "inputs": []}, headers=key)
    assert bad.status_code == 422
    with pytest.raises(httpx.ReadTimeout):  # the caller gives up mid-request
        httpx.post(a.url + "/v1/infer", json=SLOW, headers=key, timeout=0.05)
    for _ in range(100):  # the gateway finishes the request, then frees the lease
        usage = httpx.get(a.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN)).json()
        if usage["usage"]["in_flight"] == 0:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert httpx.post(a.url + "/v1/infer", json=INFER, headers=key).status_code == 200


@pytest.mark.parametrize("limits", [["--rpm", "1000"], []], ids=["limited", "unlimited"])
def test_changes_on_one_replica_apply_on_the_other_within_a_second(
    replicas: tuple[GatewayProcess, GatewayProcess], limits: list[str]
) -> None:
    """A key with limits asks Redis on every request: a change applies on the very next one.
    A key without limits makes no round trip; its cached record is re-checked every 0.25 s
    and never trusted longer than FRESH_S, so a change applies within that, anywhere."""
    a, b = replicas
    made = cli_create(a.url, "leaky", "--models", "fake", *limits)
    key = bearer(made["key"])
    assert httpx.post(b.url + "/v1/infer", json=INFER, headers=key).status_code == 200  # cached
    wait = 0.0 if limits else FRESH_S
    patched = httpx.patch(
        a.url + f"/admin/keys/{made['id']}", json={"models": ["tagger"]}, headers=bearer(ADMIN)
    )
    assert patched.status_code == 200
    time.sleep(wait)
    scoped = httpx.post(b.url + "/v1/infer", json=INFER, headers=key)
    assert scoped.status_code == 403 and scoped.json()["scope"] == "models"
    assert httpx.delete(a.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN)).is_success
    time.sleep(wait)
    revoked = httpx.post(b.url + "/v1/infer", json=INFER, headers=key)
    assert revoked.status_code == 401 and revoked.json()["detail"] == "this API key was revoked"
    audit = httpx.get(b.url + "/admin/audit?limit=3", headers=bearer(ADMIN)).json()["entries"]
    assert [e["action"] for e in audit] == ["keys.revoke", "keys.update", "keys.create"]
    assert all(e["target"] == made["id"] and e["outcome"] == "ok" for e in audit)


def test_usage_of_keys_without_limits_is_counted_too(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    a, b = replicas
    made = cli_create(a.url, "free")
    for gw in (a, b, a):
        assert httpx.post(gw.url + "/v1/infer", json=INFER, headers=bearer(made["key"])).is_success
    time.sleep(FRESH_S)  # the replicas add their counts every 0.25 s
    usage = httpx.get(b.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN)).json()["usage"]
    assert usage["requests_today"] == 3 and usage["last_used_at"] is not None


def test_no_secret_in_redis_logs_metrics_or_problems(
    replicas: tuple[GatewayProcess, GatewayProcess], redis: RedisProcess
) -> None:
    import redis as redis_client

    a, b = replicas
    made = cli_create(a.url, "scan-me", "--rpm", "2", "--models", "fake")
    secret = made["key"]
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")  # one character off, never the key
    problems = [
        httpx.post(b.url + "/v1/infer", json=INFER, headers=bearer(secret)),
        httpx.post(a.url + "/v1/infer", json={**INFER, "model": "tagger"}, headers=bearer(secret)),
        httpx.post(b.url + "/v1/infer", json=INFER, headers=bearer(secret)),
        httpx.post(a.url + "/v1/infer", json=INFER, headers=bearer(wrong)),
    ]
    assert [p.status_code for p in problems] == [200, 403, 429, 401]
    httpx.delete(a.url + f"/admin/keys/{made['id']}", headers=bearer(ADMIN))
    httpx.post(b.url + "/v1/infer", json=INFER, headers=bearer(secret))  # revoked: 401
    secret_part = secret.rsplit("_", 1)[1]
    texts = [p.text + json.dumps(dict(p.headers)) for p in problems]
    texts += [httpx.get(g.url + "/metrics").text for g in (a, b)]
    texts += [g.log.read_text() for g in (a, b)]
    texts.append(httpx.get(a.url + "/admin/keys", headers=bearer(ADMIN)).text)
    texts.append(httpx.get(a.url + "/admin/audit", headers=bearer(ADMIN)).text)
    client = redis_client.Redis.from_url(redis.url)
    for name in client.scan_iter(count=1000):
        kind = client.type(name).decode()
        dump = {
            "string": lambda n: client.get(n),
            "list": lambda n: client.lrange(n, 0, -1),
            "hash": lambda n: client.hgetall(n),
            "set": lambda n: client.smembers(n),
            "zset": lambda n: client.zrange(n, 0, -1),
        }[kind](name)
        texts.append(repr(name) + repr(dump))
    client.close()
    for text in texts:
        assert secret_part not in text and ADMIN not in text
    assert any(made["id"] in t for t in texts)  # the id is there: the scan read real data


def test_redis_stopping_is_a_setting(
    tmp_path: Path, replicas: tuple[GatewayProcess, GatewayProcess]
) -> None:
    server = RedisProcess().start()
    policy = tmp_path / "policy.yaml"
    policy.write_text(SLOW_POLICY)
    open_gw = GatewayProcess(policy, redis_url=server.url, env=_env())
    closed_gw = GatewayProcess(
        policy, redis_url=server.url, env=_env(PRISM_LIMITS_ON_STORE_DOWN="fail_closed")
    )
    try:
        open_gw.start()
        closed_gw.start()
        made = cli_create(open_gw.url, "outage", "--rpm", "3")
        key = bearer(made["key"])
        for gw in (open_gw, closed_gw):  # both replicas know the key
            assert httpx.post(gw.url + "/v1/infer", json=INFER, headers=key).status_code == 200
        server.stop()  # Redis goes away mid-run
        served = [httpx.post(open_gw.url + "/v1/infer", json=INFER, headers=key) for _ in range(4)]
        # fail_open: served under a count of this process alone (rpm 3 from the outage on)
        assert [r.status_code for r in served] == [200, 200, 200, 429]
        refused = httpx.post(closed_gw.url + "/v1/infer", json=INFER, headers=key)
        assert refused.status_code == 503 and refused.json()["code"] == "limits_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        for gw, mode in ((open_gw, "fail_open"), (closed_gw, "fail_closed")):
            ready = httpx.get(gw.url + "/readyz").json()
            assert ready["keys"] == {"store": "redis", "reachable": False, "on_store_down": mode}
            metrics = httpx.get(gw.url + "/metrics").text
            assert f'prism_key_store_errors_total{{mode="{mode}"}}' in metrics
        # bootstrap keys do not need Redis
        admin_call = httpx.post(closed_gw.url + "/v1/infer", json=INFER, headers=bearer(ADMIN))
        assert admin_call.status_code == 200
    finally:
        open_gw.stop()
        closed_gw.stop()
        server.stop()
