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


async def test_a_turns_commands_leave_in_one_write_and_each_gets_its_reply(
    redis_url: str,
) -> None:
    """A turn's commands (``send`` and ``execute`` alike: the fast lane's limit check and
    cache read) go on one connection in one write, and each reply resolves its own command."""
    client = redis.Redis.from_url(redis_url)
    await client.mset({f"sent:{i}": str(i).encode() for i in range(40)})
    reader = PipelinedReader(redis_url, timeout_s=2.0, connections=2)
    try:
        assert reader.send(b"PING") is None  # nothing open yet: execute opens connections
        assert await reader.execute(b"PING") == b"PONG"
        assert await reader.execute(b"PING") == b"PONG"
        writes: list[bytes] = []
        for conn in reader._slots:
            assert conn is not None and conn.transport is not None
            original = conn.transport.write

            def counted(data: bytes, original: object = original) -> None:
                writes.append(data)
                original(data)  # type: ignore[operator]

            conn.transport.write = counted  # type: ignore[method-assign]

        async def request(i: int) -> tuple[object, object]:
            # as the fast lane does: the limit check sent, then the cache read, no wait between
            check = reader.send(b"GET", f"sent:{i}".encode())
            assert check is not None
            read = await reader.execute(b"GET", f"sent:{i + 20}".encode())
            return await check, read

        got = await asyncio.gather(*(request(i) for i in range(20)))
        assert got == [(str(i).encode(), str(i + 20).encode()) for i in range(20)]
        assert len(writes) == 1 and writes[0].count(b"GET") == 40
        writes.clear()
        alone = reader.send(b"GET", b"sent:7")  # the next turn: a write of its own
        assert alone is not None and await alone == b"7"
        assert len(writes) == 1
        writes.clear()
        # ``now`` (the limit check): written at once, not behind the turn's queued commands,
        # and the replies still resolve their own commands
        queued = asyncio.ensure_future(reader.execute(b"GET", b"sent:3"))
        await asyncio.sleep(0)
        at_once = reader.send(b"GET", b"sent:4", now=True)
        assert at_once is not None and writes == [b"*2\r\n$3\r\nGET\r\n$6\r\nsent:4\r\n"]
        assert (await queued, await at_once) == (b"3", b"4")
    finally:
        await reader.aclose()
        await client.aclose()


async def test_a_shared_reader_closes_with_its_last_user(redis_url: str) -> None:
    reader = PipelinedReader(redis_url, timeout_s=2.0, connections=1)
    assert reader.share() is reader
    assert await reader.execute(b"PING") == b"PONG"
    await reader.aclose()  # one of two users: still open
    conn = reader._slots[0]
    assert conn is not None and not conn.closed
    assert await reader.execute(b"PING") == b"PONG"
    await reader.aclose()
    assert conn.closed and reader._slots == [None]
