"""Where cache entries live: an in-process LRU, or Redis shared by every gateway replica.

Both stores speak bytes -> bytes with a TTL in seconds. The Redis store maps every redis
error to :class:`CacheUnavailable`; the :class:`~gateway.cache.ResponseCache` in front decides
what that means (serve uncached, back off, recover).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from prism.backends import CacheUnavailable

from ..shared_redis import close_redis, connect_redis, get_by_slot, redis_errors
from ._reader import PipelinedReader, pipelined_for


class CacheStore(Protocol):
    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, entries: Mapping[str, bytes], ttl_s: float) -> None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Size-bounded LRU (by bytes and by entries) with per-entry expiry. One process only."""

    name = "memory"

    def __init__(self, max_bytes: int = 256 * 2**20, max_entries: int = 100_000) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            if entry is None or entry[0] < now:
                if entry is not None:
                    self._evict(key)
                out.append(None)
                continue
            self._data.move_to_end(key)
            out.append(entry[1])
        return out

    async def set_many(self, entries: Mapping[str, bytes], ttl_s: float) -> None:
        expires = time.monotonic() + ttl_s
        for key, value in entries.items():
            if len(value) > self.max_bytes:
                continue
            if key in self._data:
                self._evict(key)
            self._data[key] = (expires, value)
            self._bytes += len(value)
        while self._data and (self._bytes > self.max_bytes or len(self._data) > self.max_entries):
            self._evict(next(iter(self._data)))

    def _evict(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(value)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self._data.clear()
        self._bytes = 0


def bounded_redis(url: str, *, timeout_s: float, pool_wait_s: float = 1.0) -> Any:
    """A client for ``url``, one Redis or a cluster (see :mod:`prism.gateway.shared_redis`)."""
    return connect_redis(url, timeout_s=timeout_s, pool_wait_s=pool_wait_s)


class RedisStore:
    """Redis (one server or a cluster) shared by every replica; short socket timeouts so a dead
    Redis costs milliseconds."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.25,
        prefix: str = "prism:c:",
        reader: PipelinedReader | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._redis = bounded_redis(url, timeout_s=timeout_s)
        self._errors = redis_errors()
        #: reads from one server: pipelined MGETs, no pool to wait on (``_reader.py``); the
        #: one the runtime shares with the key store when given
        self._reader = (
            reader.share() if reader is not None else pipelined_for(url, timeout_s=timeout_s)
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        try:
            if self._reader is not None:  # one MGET, one round trip
                return await self._reader.mget(
                    [self.prefix + k for k in keys], timeout_s=self.timeout_s
                )
            # entries are independent: on a cluster they spread over every shard (per slot)
            return await get_by_slot(self._redis, [self.prefix + k for k in keys])
        except self._errors as exc:
            raise CacheUnavailable(f"redis unavailable: {type(exc).__name__}") from exc

    async def set_many(self, entries: Mapping[str, bytes], ttl_s: float) -> None:
        ttl_ms = max(1, int(ttl_s * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in entries.items():
                    pipe.set(self.prefix + key, value, px=ttl_ms)
                await pipe.execute()
        except self._errors as exc:
            raise CacheUnavailable(f"redis unavailable: {type(exc).__name__}") from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except self._errors:
            return False

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
        await close_redis(self._redis)
