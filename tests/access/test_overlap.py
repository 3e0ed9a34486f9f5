"""The fast lane's overlapped key check (``gateway/auth.py``): a cached key with limits has its
check sent to Redis while the request does its own work, and the limits stay exact.

A real gateway on a loopback socket (uvicorn), a real Redis, a real upstream that counts
what reaches it. :class:`Overlaps` watches which requests took the overlapped path, so each
test knows it tested it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from prism.gateway.access import RedisKeyStore
from prism.gateway.app import create_app
from prism.gateway.auth import Access
from prism.gateway.settings import Settings
from tests.access.conftest import ADMIN, API, bearer
from tests.support import RedisProcess
from tests.upstream import Upstream, UvicornThread

POLICY = """
version: 1
models:
  fake:
    modalities: [text]
    versions: {{"1": {{backend: local, kind: fake, dim: 16}}}}
  remote:
    modalities: [text]
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: slow, max_connections: 64}}}}
routes:
  - {{name: text, match: {{model: fake}}, model: fake, cache: {{ttl_s: 600}}}}
  - {{name: remote, match: {{model: remote}}, model: remote, cache: {{ttl_s: 600}}}}
"""
TEXT = "a red circle"
#: the same cached input through each door, and how each door says "rate limited"
DOORS: dict[str, tuple[str, dict[str, Any]]] = {
    "native": ("/v1/infer", {"model": "fake", "inputs": [{"text": TEXT}]}),
    "openai": ("/v1/embeddings", {"model": "fake", "input": TEXT}),
    "kserve": (
        "/v2/models/fake/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]},
    ),
}


class Overlaps:
    """Counts the requests whose key check was overlapped (``Access.admit_later`` sent it)."""

    def __init__(self, access: Access) -> None:
        self.count = 0
        sent = access.admit_later

        def counted(*args: Any) -> Any:
            pending = sent(*args)
            self.count += pending is not None
            return pending

        access.admit_later = counted  # type: ignore[method-assign]


@dataclass
class Gateway:
    url: str
    access: Access
    overlaps: Overlaps
    server: UvicornThread

    def post(self, path: str, body: Any, key: str) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=bearer(key), timeout=30)

    def make_key(self, **spec: Any) -> str:
        made = httpx.post(
            self.url + "/admin/keys", json={"name": "t", **spec}, headers=bearer(ADMIN)
        )
        assert made.status_code == 201, made.text
        return str(made.json()["key"])

    def usage(self, key: str) -> dict[str, Any]:
        key_id = key.split("_")[1]
        answer = httpx.get(self.url + f"/admin/keys/{key_id}", headers=bearer(ADMIN))
        return answer.json()["usage"]  # type: ignore[no-any-return]

    def warm(self) -> None:
        """The cache holds every door's answer, and the key store's pipelined connections
        are open (the first requests of a process open them, waiting for their check)."""
        for path, body in DOORS.values():
            assert self.post(path, body, API).status_code == 200
        warm = self.make_key(rpm=1000)
        for _ in range(8):
            assert self.post(*DOORS["native"], warm).status_code == 200


def _gateway(tmp: Path, redis_url: str, upstream: Upstream, **settings: Any) -> Gateway:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY.format(url=upstream.url))
    app = create_app(
        Settings(
            policy=policy,
            policy_watch_s=0,
            redis_url=redis_url,
            api_keys=[API],
            admin_keys=[ADMIN],
            **settings,
        )
    )
    access = app.state.runtime.access
    # every check overlapped, refusals too (the hold after a refusal has a test of its own)
    access.refused_hold_s = 0.0
    overlaps = Overlaps(access)
    server = UvicornThread(app).start()
    gateway = Gateway(server.url, access, overlaps, server)
    gateway.warm()
    return gateway


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream(dim=8, slow_s=0.5).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, upstream: Upstream
) -> Iterator[Gateway]:
    gw = _gateway(tmp_path_factory.mktemp("overlap"), redis_url, upstream)
    yield gw
    gw.server.stop()


def _at_once(calls: list[tuple[Gateway, tuple[str, Any], str]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(gw.url + path, json=body, headers=bearer(key))
                    for gw, (path, body), key in calls
                )
            )

    return asyncio.run(run())


def _burst(gw: Gateway, path: str, bodies: list[Any], key: str) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(gw.url + path, json=b, headers=bearer(key)) for b in bodies)
            )

    return asyncio.run(run())


@pytest.mark.parametrize("door", list(DOORS))
def test_rpm_answers_exactly_the_quota_of_cache_hits(gateway: Gateway, door: str) -> None:
    path, body = DOORS[door]
    n = 5
    key = gateway.make_key(rpm=n)
    first = gateway.post(path, body, key)  # the record is cached from here on
    assert first.status_code == 200
    before = gateway.overlaps.count
    answers = [first, *_burst(gateway, path, [body] * (3 * n - 1), key)]
    assert gateway.overlaps.count - before == 3 * n - 1  # every one after the first overlapped
    ok = [r for r in answers if r.status_code == 200]
    limited = [r for r in answers if r.status_code == 429]
    assert len(ok) == n and len(limited) == 2 * n, [r.status_code for r in answers]
    assert all(r.headers["x-prism-cache"] == "hit" for r in ok)
    for r in limited:
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["ratelimit-policy"] == f'"rpm";q={n};w=60'
        assert r.headers["ratelimit"] == f'"rpm";r=0;t={r.headers["retry-after"]}'
        assert "x-prism-cache" not in r.headers
        doc = r.json()
        if door == "native":
            assert doc["code"] == "rate_limited" and doc["limit"] == "rpm"
        elif door == "openai":
            assert doc["error"]["type"] == "rate_limit_error"
        else:
            assert set(doc) == {"error"} and "over its limit" in doc["error"]
    assert gateway.usage(key)["requests_today"] == n


def test_max_concurrent_misses_reach_the_backend_only_when_admitted(
    gateway: Gateway, upstream: Upstream
) -> None:
    key = gateway.make_key(max_concurrent=5)
    tag = str(time.time())
    first = gateway.post("/v1/infer", {"model": "remote", "inputs": [{"text": tag}]}, key)
    assert first.status_code == 200 and first.headers["x-prism-cache"] == "miss"
    before, overlapped = upstream.hits["slow"], gateway.overlaps.count
    upstream.peak = 0
    # every body its own input: 50 misses, none answered by another's computation
    bodies = [{"model": "remote", "inputs": [{"text": f"{tag} {i}"}]} for i in range(50)]
    answers = _burst(gateway, "/v1/infer", bodies, key)
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429}, codes
    assert gateway.overlaps.count - overlapped == 50
    assert upstream.hits["slow"] - before == codes.count(200)  # exactly the admitted ones
    assert 1 <= upstream.peak <= 5
    assert all(r.json()["limit"] == "max_concurrent" for r in answers if r.status_code == 429)
    for _ in range(100):  # every lease comes back after its response
        if gateway.usage(key)["in_flight"] == 0:
            break
        time.sleep(0.05)
    assert gateway.usage(key)["in_flight"] == 0


async def _change_elsewhere(redis_url: str, key: str, **changes: Any) -> None:
    """What another replica's admin API does: the record rewritten with a new revision
    (this gateway keeps its cached copy until Redis says it is stale)."""
    store = RedisKeyStore(redis_url)
    try:
        record = await store.fetch(key.split("_")[1])
        assert record is not None
        await store.save(record.model_copy(update={**changes, "rev": record.rev + 1}))
    finally:
        await store.aclose()


def test_a_revoked_key_gets_401_not_the_cached_answer(gateway: Gateway, redis_url: str) -> None:
    key = gateway.make_key(rpm=100)
    native = DOORS["native"]
    assert gateway.post(*native, key).status_code == 200
    asyncio.run(_change_elsewhere(redis_url, key, revoked_at=time.time()))
    before = gateway.overlaps.count
    revoked = gateway.post(*native, key)
    assert gateway.overlaps.count - before == 1
    assert revoked.status_code == 401 and revoked.json()["detail"] == "this API key was revoked"
    assert "x-prism-cache" not in revoked.headers


def test_a_changed_scope_applies_to_the_request_that_finds_it(
    gateway: Gateway, redis_url: str
) -> None:
    """The overlapped run used the cached scopes; Redis says the record changed: the run is
    dropped and the request checked again, with the new record, whichever way it changed."""
    key = gateway.make_key(rpm=100, models=["fake"])
    native = DOORS["native"]
    assert gateway.post(*native, key).status_code == 200
    asyncio.run(_change_elsewhere(redis_url, key, models=["remote"]))
    scoped = gateway.post(*native, key)
    assert scoped.status_code == 403 and scoped.json()["scope"] == "models"
    assert gateway.post(*native, key).status_code == 403  # cached, overlapped again
    asyncio.run(_change_elsewhere(redis_url, key, models=["fake"]))
    before = gateway.overlaps.count
    allowed = gateway.post(*native, key)  # the cached scope refuses, the new one allows
    assert gateway.overlaps.count - before == 1
    assert allowed.status_code == 200 and allowed.headers["x-prism-cache"] == "hit"
    assert gateway.usage(key)["requests_today"] == 4  # the 403s were admitted (as before)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/infer", {"model": "no-such-model", "inputs": [{"text": TEXT}]}),
        ("/v2/models/no-such-model/infer", DOORS["kserve"][1]),
        ("/v1/embeddings", {"model": "fake", "input": []}),
    ],
    ids=["native-model", "kserve-model", "openai-body"],
)
def test_a_refusal_wins_over_the_requests_own_error(gateway: Gateway, path: str, body: Any) -> None:
    key = gateway.make_key(rpm=1)
    assert gateway.post(*DOORS["native"], key).status_code == 200
    before = gateway.overlaps.count
    refused = gateway.post(path, body, key)
    assert gateway.overlaps.count - before == 1
    assert refused.status_code == 429, refused.text
    assert "retry-after" in refused.headers


def test_a_refused_request_is_recorded_as_before(gateway: Gateway) -> None:
    """Only as a refusal: not under the route, the model or the cache it would have used."""

    def counted() -> dict[str, float]:
        text = httpx.get(gateway.url + "/metrics").text
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(("prism_requests_total", "prism_cache_lookups_total"))
        }

    key = gateway.make_key(rpm=1)
    assert gateway.post(*DOORS["native"], key).status_code == 200
    before = counted()
    assert gateway.post(*DOORS["native"], key).status_code == 429
    after = counted()
    changed = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
    refused = (
        'prism_requests_total{door="native",model="",route="",status="rate_limited",'
        'target="",version=""}'
    )
    assert changed == {refused: 1.0}


def test_a_key_refused_a_moment_ago_waits_for_its_checks(gateway: Gateway) -> None:
    """A caller hammering past its limit: after a refusal its checks are waited for again
    for a moment (a refusal costs what it did before: no decision, no cache read)."""
    key = gateway.make_key(rpm=1)
    native = DOORS["native"]
    assert gateway.post(*native, key).status_code == 200
    gateway.access.refused_hold_s = 0.5
    try:
        before = gateway.overlaps.count
        assert gateway.post(*native, key).status_code == 429  # overlapped: the hold starts
        held = [gateway.post(*native, key) for _ in range(3)]
        assert gateway.overlaps.count - before == 1
        assert [r.status_code for r in held] == [429] * 3
        assert all(r.headers["ratelimit-policy"] == '"rpm";q=1;w=60' for r in held)
        time.sleep(0.6)
        assert gateway.post(*native, key).status_code == 429
        assert gateway.overlaps.count - before == 2  # the hold is over: overlapped again
    finally:
        gateway.access.refused_hold_s = 0.0
    assert gateway.usage(key)["requests_today"] == 1


@pytest.fixture(scope="module")
def outage(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
) -> Iterator[tuple[RedisProcess, Gateway, Gateway]]:
    server = RedisProcess().start()
    tmp = tmp_path_factory.mktemp("outage")
    gateways: list[Gateway] = []
    try:
        for mode in ("fail_open", "fail_closed"):
            (tmp / mode).mkdir()
            gw = _gateway(tmp / mode, server.url, upstream, limits_on_store_down=mode)
            gateways.append(gw)
        yield server, gateways[0], gateways[1]
    finally:
        for gw in gateways:
            gw.server.stop()
        server.stop()


def test_redis_stopping_mid_run_is_still_a_setting(
    outage: tuple[RedisProcess, Gateway, Gateway],
) -> None:
    """Redis stops answering (frozen: the connections stay open, so the check is sent and
    its answer times out): ``fail_open`` serves under this process's own count, ``fail_closed``
    refuses, as when the check is waited for."""
    server, open_gw, closed_gw = outage
    key = open_gw.make_key(rpm=3)
    native = DOORS["native"]
    for gw in (open_gw, closed_gw):  # both know the key
        assert gw.post(*native, key).status_code == 200
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        before = open_gw.overlaps.count, closed_gw.overlaps.count
        # the first request to each at once: each finds Redis answering a moment ago, so
        # each sends its check (the next ones know Redis is down and do not wait for it)
        first, refused = _at_once([(open_gw, native, key), (closed_gw, native, key)])
        served = [first, *(open_gw.post(*native, key) for _ in range(3))]
        assert (open_gw.overlaps.count, closed_gw.overlaps.count) == (before[0] + 1, before[1] + 1)
        for gw, mode in ((open_gw, "fail_open"), (closed_gw, "fail_closed")):
            ready = httpx.get(gw.url + "/readyz").json()
            assert ready["keys"] == {"store": "redis", "reachable": False, "on_store_down": mode}
            metrics = httpx.get(gw.url + "/metrics").text
            assert f'prism_key_store_errors_total{{mode="{mode}"}}' in metrics
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    # fail_open: served under a count of this process alone (rpm 3 from the outage on)
    assert [r.status_code for r in served] == [200, 200, 200, 429]
    assert refused.status_code == 503 and refused.json()["code"] == "limits_unavailable"
    assert int(refused.headers["retry-after"]) >= 1
