"""The cache's Redis reader (``gateway/cache/_reader.py``): pipelined MGETs on a few connections."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from prism.gateway.cache._reader import PipelinedReader, readable
from tests.support import free_port


async def test_concurrent_reads_each_get_their_own_reply(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    values = {f"reader:{i}": random.randbytes(random.randint(0, 3000)) for i in range(200)}
    await client.mset(values)
    reader = PipelinedReader(redis_url, timeout_s=2.0, connections=3)
    try:
        keys = list(values)
        asks = [[*random.sample(keys, random.randint(1, 4)), "reader:none"] for _ in range(500)]
        got = await asyncio.gather(*(reader.mget(ask) for ask in asks))
        for ask, answer in zip(asks, got, strict=True):
            assert answer == [values[k] for k in ask[:-1]] + [None]
    finally:
        await reader.aclose()
        await client.aclose()


async def test_database_and_urls(redis_url: str) -> None:
    other = redis_url.rsplit("/", 1)[0] + "/3"
    client = redis.Redis.from_url(other)
    await client.set("reader:db", b"three")
    reader = PipelinedReader(other, timeout_s=2.0)
    try:
        assert await reader.mget(["reader:db"]) == [b"three"]
    finally:
        await reader.aclose()
        await client.aclose()
    assert readable("redis://h:1/0")
    assert not any(map(readable, ("rediss://h:1/0", "unix:///tmp/r.sock", "redis+cluster://h:1")))


async def test_no_server_and_a_silent_one_fail_fast() -> None:
    """(Recovery once Redis is back: ``test_cache.py``, through the store.)"""
    reader = PipelinedReader(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with pytest.raises(RedisConnectionError):
        await reader.mget(["k"])

    async def silent(reader_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader_.read()  # accepts, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader = PipelinedReader(f"redis://127.0.0.1:{port}/0", timeout_s=0.2, connections=1)
    try:
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(
            reader.mget(["a"]), reader.mget(["b"]), return_exceptions=True
        )
        assert asyncio.get_running_loop().time() - started < 1.0
        assert isinstance(results[0], RedisTimeoutError)
        assert isinstance(results[1], RedisConnectionError | RedisTimeoutError)
    finally:
        await reader.aclose()
        server.close()


async def test_a_command_sent_now_keeps_its_place_among_the_turns_others(redis_url: str) -> None:
    """``send`` writes at once, yet each reply still resolves its own command, whether
    commands of the same turn went before it on its connection or not."""
    client = redis.Redis.from_url(redis_url)
    await client.mset({f"sent:{i}": str(i).encode() for i in range(40)})
    reader = PipelinedReader(redis_url, timeout_s=2.0, connections=2)
    try:
        assert reader.send(b"PING") is None  # nothing open yet: execute opens connections
        assert await reader.execute(b"PING") == b"PONG"
        assert await reader.execute(b"PING") == b"PONG"
        asks: dict[int, asyncio.Future[object]] = {}
        for i in range(40):  # reads queued for this turn's write, on both connections
            if i % 3:
                asks[i] = asyncio.ensure_future(reader.execute(b"GET", f"sent:{i}".encode()))
        await asyncio.sleep(0)  # they are queued, not written yet
        for i in range(0, 40, 3):  # sent now: behind what is queued on their connection
            sent = reader.send(b"GET", f"sent:{i}".encode())
            assert sent is not None
            asks[i] = sent
        got = await asyncio.gather(*(asks[i] for i in range(40)))
        assert got == [str(i).encode() for i in range(40)]
        alone = reader.send(b"GET", b"sent:7")  # nothing queued: written at once
        assert alone is not None and await alone == b"7"
    finally:
        await reader.aclose()
        await client.aclose()
