"""The limit algorithm, one contract for both stores: Redis (one Lua script per request) and
the 0600 file (limits counted in the process)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from prism.gateway.access import (
    FileKeyStore,
    KeyRecord,
    KeyStore,
    RateLimited,
    RedisKeyStore,
    digest,
    key_prefix,
    new_secret,
)
from prism.gateway.access._limits import script_keys


@pytest.fixture(params=["redis", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "redis":
        s: KeyStore = RedisKeyStore(request.getfixturevalue("redis_url"))
    else:
        s = FileKeyStore(tmp_path / "keys.json")
    yield s
    await s.aclose()


async def saved(store: KeyStore, **limits: int) -> KeyRecord:
    key_id, secret = new_secret()
    record = KeyRecord(id=key_id, name="t", digest=digest(secret), **limits)  # type: ignore[arg-type]
    await store.save(record)
    return record


async def test_rpm_admits_exactly_the_quota_and_says_when_to_retry(store: KeyStore) -> None:
    record = await saved(store, rpm=3)
    for i in range(3):
        assert await store.admit(record, f"l{i}", metered=True) == "ok"
    with pytest.raises(RateLimited) as info:
        await store.admit(record, "l3", metered=True)
    err = info.value
    assert err.status_code == 429 and err.extra["limit"] == "rpm"
    assert 1 <= int(err.headers["Retry-After"]) <= 60
    assert err.headers["RateLimit-Policy"] == '"rpm";q=3;w=60'
    assert err.headers["RateLimit"] == f'"rpm";r=0;t={err.headers["Retry-After"]}'
    # unmetered calls (listing models) check the key but spend nothing
    assert await store.admit(record, "l4", metered=False) == "ok"
    assert (await store.usage(record))["requests_today"] == 3


async def test_rpd_counts_the_utc_day(store: KeyStore) -> None:
    record = await saved(store, rpd=2, rpm=100)
    assert await store.admit(record, "a", metered=True) == "ok"
    assert await store.admit(record, "b", metered=True) == "ok"
    with pytest.raises(RateLimited) as info:
        await store.admit(record, "c", metered=True)
    retry = int(info.value.headers["Retry-After"])
    assert retry == pytest.approx(86400 - time.time() % 86400, abs=5)  # the next UTC midnight
    assert '"rpd";q=2;w=86400' in info.value.headers["RateLimit-Policy"]


async def test_concurrency_leases_are_held_and_given_back(store: KeyStore) -> None:
    record = await saved(store, max_concurrent=2)
    assert await store.admit(record, "a", metered=True) == "ok"
    assert await store.admit(record, "b", metered=True) == "ok"
    with pytest.raises(RateLimited) as info:
        await store.admit(record, "c", metered=True)
    assert info.value.extra["limit"] == "max_concurrent"
    assert (await store.usage(record))["in_flight"] == 2
    await store.release(record, "a")
    assert await store.admit(record, "c", metered=True) == "ok"


async def test_a_change_makes_every_cached_copy_stale(store: KeyStore) -> None:
    record = await saved(store, rpm=5)
    changed = record.model_copy(update={"rpm": 1, "rev": record.rev + 1})
    await store.save(changed)
    assert await store.admit(record, "x", metered=True) == "stale"  # old copy: fetch again
    assert await store.fetch(record.id) == changed
    revoked = changed.model_copy(update={"revoked_at": time.time(), "rev": changed.rev + 1})
    await store.save(revoked)
    assert await store.admit(changed, "y", metered=True) == "revoked"
    assert await store.admit(revoked, "y", metered=True) == "revoked"


async def test_a_dead_replicas_lease_expires(redis_url: str) -> None:
    import redis.asyncio as redis

    store = RedisKeyStore(redis_url)
    record = await saved(store, max_concurrent=1)
    client = redis.Redis.from_url(redis_url)
    # a lease whose expiry passed: its replica died without giving it back
    await client.zadd(script_keys(record.id)[3], {"dead": int(time.time() * 1000) - 1})
    assert await store.admit(record, "alive", metered=True) == "ok"
    await client.aclose()
    await store.aclose()


def test_every_redis_key_of_a_key_is_in_one_cluster_slot() -> None:
    key_id, _ = new_secret()
    names = [*script_keys(key_id), key_prefix(key_id) + "rec"]
    assert all(f"{{k:{key_id}}}" in n for n in names)
    assert len({key_slot(n.encode()) for n in names}) == 1


async def test_the_limit_script_survives_a_flushed_script_cache(redis_url: str) -> None:
    """Per request the script goes as EVALSHA on a pipelined connection; a Redis that forgot
    it (restarted, SCRIPT FLUSH) gets it again with EVAL, and the count carries on."""
    import redis.asyncio as redis

    store = RedisKeyStore(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        record = await saved(store, rpm=3)
        assert await store.admit(record, "a", metered=True) == "ok"
        await admin.script_flush()
        assert await store.admit(record, "b", metered=True) == "ok"
        assert await store.admit(record, "c", metered=True) == "ok"
        with pytest.raises(RateLimited):
            await store.admit(record, "d", metered=True)
        stats = await admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] >= 3  # the pipelined path ran
    finally:
        await admin.aclose()
        await store.aclose()
