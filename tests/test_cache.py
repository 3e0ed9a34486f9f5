"""One contract suite for every cache store, plus the cache front's keys, codec and failure modes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest

from prism.backends import InputItem, Task
from prism.gateway.cache import (
    MemoryStore,
    RedisStore,
    ResponseCache,
    cache_key,
    decode_output,
    encode_output,
)
from tests.support import RedisProcess


@pytest.fixture(params=["memory", "redis"])
async def store(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[MemoryStore | RedisStore]:
    s: MemoryStore | RedisStore = (
        MemoryStore()
        if request.param == "memory"
        else RedisStore(redis_url, prefix=f"test:{id(request)}:")
    )
    yield s
    await s.aclose()


async def test_store_roundtrip_and_misses(store: MemoryStore | RedisStore) -> None:
    await store.set_many({"a": b"1", "b": b"\x00\xff"}, ttl_s=60)
    assert await store.get_many(["a", "nope", "b"]) == [b"1", None, b"\x00\xff"]
    assert await store.ping()


async def test_store_entries_expire(store: MemoryStore | RedisStore) -> None:
    await store.set_many({"short": b"x"}, ttl_s=0.05)
    await asyncio.sleep(0.2)
    assert await store.get_many(["short"]) == [None]


async def test_memory_store_is_bounded_lru() -> None:
    s = MemoryStore(max_bytes=100, max_entries=3)
    await s.set_many({"a": b"1", "b": b"2", "c": b"3"}, 60)
    await s.get_many(["a"])  # a is now most recent
    await s.set_many({"d": b"4"}, 60)
    assert await s.get_many(["a", "b", "c", "d"]) == [b"1", None, b"3", b"4"]
    await s.set_many({"big": b"x" * 90}, 60)
    assert s.size_bytes <= 100


def test_codec_stores_embeddings_as_binary() -> None:
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    blob = encode_output({"embedding": vec})
    assert len(blob) < 384 * 4 + 100  # float32 bytes plus a small header, not JSON text
    np.testing.assert_array_equal(decode_output(blob)["embedding"], vec)
    half = decode_output(encode_output({"embedding": vec}, half=True))["embedding"]
    np.testing.assert_allclose(half, vec, atol=2e-3)
    labels = {"labels": [{"label": "red circle", "score": 0.9}]}
    assert decode_output(encode_output(labels)) == labels
    with pytest.raises(ValueError):
        decode_output(b"garbage")


def test_cache_key_is_canonical() -> None:
    a = InputItem(text="hi")
    key = cache_key("m", "1", Task.EMBED, a, {"x": 1, "y": 2})
    assert key == cache_key("m", "1", Task.EMBED, InputItem(text="hi"), {"y": 2, "x": 1})
    assert key != cache_key("m", "2", Task.EMBED, a, {"x": 1, "y": 2})
    assert key != cache_key("m", "1", Task.CLASSIFY, a, {"x": 1, "y": 2})
    assert key != cache_key("m", "1", Task.EMBED, InputItem(text="hi!"), {"x": 1, "y": 2})
    assert cache_key("m", "1", Task.EMBED, InputItem(image=b"abc"), {}) != cache_key(
        "m", "1", Task.EMBED, InputItem(image=b"abd"), {}
    )


@pytest.mark.parametrize(
    ("text", "user", "history"),
    [
        ("hi", None, None),
        (None, "u-1", None),
        ('quotes " and \\ and \n\t\x00\x1f, \u2028, é 中 😀', "ü", None),
        ("", "", None),
        ("t", None, ("a", "b")),
    ],
)
def test_an_items_digest_is_its_canonical_json(
    text: str | None, user: str | None, history: tuple[str, ...] | None
) -> None:
    """The digest hashes ``json.dumps([text, user, history], ensure_ascii=False)``: keys that
    Redis holds from an earlier release stay valid whichever way the bytes are made."""
    want = hashlib.blake2b(digest_size=16)
    want.update(json.dumps([text, user, history], ensure_ascii=False).encode())
    assert InputItem(text=text, user=user, history=history).fingerprint() == want.digest()


async def test_response_cache_counts_and_corrupt_entries_are_misses() -> None:
    store = MemoryStore()
    cache = ResponseCache(store)
    vec = np.ones(4, dtype=np.float32)
    assert await cache.set_many({"k": {"embedding": vec}}, ttl_s=60)
    good = encode_output({"embedding": vec})
    corrupt = {
        "bad": b"not ours",
        "short": good[:4] + b"\x01",  # our magic, then a truncated length
        "cut": good[: len(good) // 2],  # a write cut short
        "foreign-array": good.replace(b'"f4"', b'"f8"'),  # a dtype this codec never writes
    }
    await store.set_many(corrupt, 60)
    got = await cache.get_many(["k", *corrupt, "missing"])
    assert got is not None
    np.testing.assert_array_equal(got[0]["embedding"], vec)  # type: ignore[index]
    assert got[1:] == [None] * (len(corrupt) + 1)
    # a read is counted by the pipeline, once the request is admitted (a refused one is not)
    assert (cache.stats.hits, cache.stats.misses) == (0, 0)
    cache.count(1, len(corrupt) + 1)
    assert (cache.stats.hits, cache.stats.misses) == (1, len(corrupt) + 1)


async def test_redis_down_serves_uncached_then_recovers() -> None:
    server = RedisProcess().start()
    cache = ResponseCache(RedisStore(server.url, timeout_s=0.2), retry_after_s=0.2)
    try:
        assert await cache.set_many({"k": {"v": 1}}, 60)
        assert await cache.get_many(["k"]) == [{"v": 1}]
        server.stop()
        assert await cache.get_many(["k"]) is None  # down: "off", not an exception
        assert not cache.available
        assert cache.stats.errors == 1
        assert await cache.get_many(["k"]) is None  # backing off: no new attempt
        assert cache.stats.errors == 1
        server.start()
        await asyncio.sleep(0.3)
        assert await cache.get_many(["k"]) == [None]  # back (empty: a new server)
        assert await cache.set_many({"k": {"v": 2}}, 60)
        assert await cache.get_many(["k"]) == [{"v": 2}]
    finally:
        await cache.aclose()
        server.stop()


async def test_single_flight_registers_one_leader() -> None:
    cache = ResponseCache(MemoryStore())
    assert cache.join("k") is None
    lead = cache.lead("k")
    follower = cache.join("k")
    assert follower is lead
    cache.finish("k", {"v": 1})
    assert await follower == {"v": 1}
    assert cache.join("k") is None
    assert cache.stats.coalesced == 1
