"""Where managed keys live: Redis (shared by every replica) or a 0600 JSON file.

Redis layout, per key (hash tag ``{k:<id>}``: one cluster slot, so the per-request script
may touch all of them): ``prism:{k:<id>}:rec`` the record (JSON, the secret's digest only),
``:rev`` its live revision (absent = revoked), ``:rpm`` / ``:conc`` / ``:use`` the limit
state (see ``_limits``). ``prism:keys`` is the set of ids, read by the admin listing only.

A change writes the record and sets ``:rev`` (one MULTI in the key's slot); a replica whose
cached revision differs (the per-request script, or the sync loop for keys without limits)
fetches the record again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..cache._reader import PipelinedReader, pipelined_for
from ._keys import KeyRecord
from ._limits import (
    ADMIT_LUA,
    DAY_MS,
    LEASE_TTL_S,
    LocalLimiter,
    rate_limited,
    script_keys,
)

Admission = Literal["ok", "stale", "revoked"]
REGISTRY = "prism:keys"


class StoreDown(Exception):
    """The key store cannot be reached (Redis down)."""


def _admission(record: KeyRecord, answer: Sequence[Any]) -> Admission:
    """The limit script's answer (``ADMIT_LUA``) for ``record``: admitted, stale or revoked;
    a refusal raises :class:`RateLimited`."""
    status = int(answer[0])
    if status == 1:
        return "ok"
    if status == -1:
        return "revoked"
    if status == -2:
        return "stale"
    limit = answer[1].decode() if isinstance(answer[1], bytes) else str(answer[1])
    raise rate_limited(record, limit, float(answer[2]))


@dataclass(frozen=True, slots=True)
class SentAdmit:
    """A limit script on its way to Redis (:meth:`RedisKeyStore.admit_later`)."""

    record: KeyRecord
    #: the reply to come (the pipelined connection's future)
    reply: asyncio.Future[Any]
    #: what was sent, for EVAL when Redis forgot the script
    words: list[bytes]


class KeyStore(Protocol):
    kind: str

    async def fetch(self, key_id: str) -> KeyRecord | None: ...
    async def save(self, record: KeyRecord) -> None: ...
    async def records(self) -> list[KeyRecord]: ...
    async def admit(self, record: KeyRecord, lease: str, *, metered: bool) -> Admission:
        """Check the record is current and take the request against its limits (raises
        :class:`RateLimited`); ``stale``: fetch the record and ask again."""
        ...

    async def release(self, record: KeyRecord, lease: str) -> None: ...
    async def usage(self, record: KeyRecord) -> dict[str, Any]: ...
    async def ping(self) -> bool: ...
    async def aclose(self) -> None: ...


class RedisKeyStore:
    kind = "redis"

    def __init__(
        self, url: str, *, timeout_s: float = 0.5, reader: PipelinedReader | None = None
    ) -> None:
        import redis.asyncio as redis

        from ..cache._stores import bounded_redis

        self._redis = bounded_redis(url, timeout_s=timeout_s)
        self._script = self._redis.register_script(ADMIT_LUA)
        #: the limit script per request on a pipelined connection: redis-py's own cost per
        #: command (pool, checks, hooks) was most of the check (``cache/_reader.py``)
        self._pipelined = (
            reader.share() if reader is not None else pipelined_for(url, timeout_s=timeout_s)
        )
        self.timeout_s = timeout_s
        self._sha = hashlib.sha1(ADMIT_LUA.encode()).hexdigest().encode()
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._response_error = redis.ResponseError

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except self._errors as exc:
            raise StoreDown(f"redis unavailable: {type(exc).__name__}") from exc

    @staticmethod
    def _rec(key_id: str) -> str:
        return f"prism:{{k:{key_id}}}:rec"

    async def fetch(self, key_id: str) -> KeyRecord | None:
        raw = await self._call(self._redis.get(self._rec(key_id)))
        return KeyRecord.model_validate_json(raw) if raw else None

    async def save(self, record: KeyRecord) -> None:
        rev_key = script_keys(record.id)[0]

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._rec(record.id), record.model_dump_json())
                if record.revoked_at is None:
                    pipe.set(rev_key, str(record.rev))
                else:
                    pipe.delete(rev_key)
                await pipe.execute()
            await self._redis.sadd(REGISTRY, record.id)

        await self._call(write())

    async def records(self) -> list[KeyRecord]:
        ids = sorted(m.decode() for m in await self._call(self._redis.smembers(REGISTRY)))
        out = []
        for key_id in ids:
            record = await self.fetch(key_id)
            if record is not None:
                out.append(record)
        return out

    def _words(self, record: KeyRecord, lease: str, metered: bool) -> list[bytes]:
        """The script's key count, keys and arguments, as EVALSHA and EVAL take them."""
        keys = script_keys(record.id)
        args = [
            str(record.rev),
            record.rpm or 0,
            record.rpd or 0,
            record.max_concurrent or 0,
            lease,
            LEASE_TTL_S * 1000,
            1 if metered else 0,
        ]
        return [
            str(len(keys)).encode(),
            *(k.encode() for k in keys),
            *(str(a).encode() for a in args),
        ]

    async def admit(self, record: KeyRecord, lease: str, *, metered: bool) -> Admission:
        words = self._words(record, lease, metered)
        if self._pipelined is not None:
            reply = self._pipelined.execute(b"EVALSHA", self._sha, *words, timeout_s=self.timeout_s)
            answer = await self._call(self._script_reply(reply, words))
        else:
            answer = await self._call(self._script(keys=words[1:5], args=words[5:]))
        return _admission(record, answer)

    def admit_later(self, record: KeyRecord, lease: str, *, metered: bool) -> SentAdmit | None:
        """:meth:`admit`'s script sent now, its answer read later by :meth:`answer`; None
        where it cannot leave without waiting (no pipelined connection open: :meth:`admit`
        opens one)."""
        if self._pipelined is None:
            return None
        words = self._words(record, lease, metered)
        reply = self._pipelined.send(
            b"EVALSHA", self._sha, *words, timeout_s=self.timeout_s, now=True
        )
        return SentAdmit(record, reply, words) if reply is not None else None

    async def answer(self, sent: SentAdmit) -> Admission:
        """What :meth:`admit` would have answered (or raised) for ``sent``."""
        return _admission(sent.record, await self._call(self._script_reply(sent.reply, sent.words)))

    async def _script_reply(self, reply: Awaitable[Any], words: list[bytes]) -> Any:
        try:
            return await reply
        except self._response_error as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # a restarted or flushed Redis forgot the script: EVAL runs it and caches it again
            script = ADMIT_LUA.encode()
            return await self._pipelined.execute(b"EVAL", script, *words, timeout_s=self.timeout_s)  # type: ignore[union-attr]

    async def release(self, record: KeyRecord, lease: str) -> None:
        leases = script_keys(record.id)[3]
        if self._pipelined is not None:
            await self._call(
                self._pipelined.execute(
                    b"ZREM", leases.encode(), lease.encode(), timeout_s=self.timeout_s
                )
            )
        else:
            await self._call(self._redis.zrem(leases, lease))

    def release_soon(self, record: KeyRecord, lease: str) -> asyncio.Future[Any] | None:
        """:meth:`release`'s ZREM sent with this turn's other commands, no task to await it:
        the future of its reply (the caller reads its failure); None where it cannot leave
        without waiting (no pipelined connection open): :meth:`release` then."""
        if self._pipelined is None:
            return None
        leases = script_keys(record.id)[3].encode()
        return self._pipelined.send(b"ZREM", leases, lease.encode(), timeout_s=self.timeout_s)

    async def sync(
        self, ids: list[str], counts: dict[str, int], last: dict[str, float]
    ) -> dict[str, int | None]:
        """The live revision of each of ``ids`` (None: revoked or gone), after adding
        ``counts`` requests today and ``last`` use times (keys without limits count here,
        not per request). One non-transactional pipeline: a cluster client splits it by slot.
        """
        day = "d" + str(int(time.time() * 1000 // DAY_MS))

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.ping()  # nothing cached: the round still says whether Redis is there
                for key_id in ids:
                    pipe.get(script_keys(key_id)[0])
                for key_id in set(counts) | set(last):
                    use = script_keys(key_id)[2]
                    if counts.get(key_id):
                        pipe.hincrby(use, day, counts[key_id])
                    if key_id in last:
                        pipe.hset(use, "last", int(last[key_id] * 1000))
                return await pipe.execute()

        answers = (await self._call(run()))[1:]
        return {k: int(v) if v is not None else None for k, v in zip(ids, answers, strict=False)}

    async def usage(self, record: KeyRecord) -> dict[str, Any]:
        from ._limits import usage_from_redis

        _, _, use, conc = script_keys(record.id)
        now_ms = int(time.time() * 1000)
        fields = await self._call(self._redis.hgetall(use))
        in_flight = await self._call(self._redis.zcount(conc, now_ms, "+inf"))
        return usage_from_redis(fields, int(in_flight))

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._redis.ping()))
        except StoreDown:
            return False

    async def aclose(self) -> None:
        if self._pipelined is not None:
            await self._pipelined.aclose()
        await self._redis.aclose(close_connection_pool=True)


class FileKeyStore:
    """Keys in a JSON file (mode 0600) next to the policy, for a gateway without Redis
    (``path`` None: in memory only).

    Every process re-reads the file when it changed (checked at most every
    :data:`CHECK_S`), so ``prism serve --workers N`` sees a revocation within that time;
    limits are then counted per process (:class:`LocalLimiter`).
    """

    kind = "file"
    CHECK_S = 0.25

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.limiter = LocalLimiter()
        self._records: dict[str, KeyRecord] = {}
        self._seen: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = asyncio.Lock()

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.CHECK_S:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._seen = {}, None
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        doc = json.loads(self.path.read_text() or "{}")
        self._records = {k: KeyRecord.model_validate(v) for k, v in doc.get("keys", {}).items()}
        self._seen = seen

    async def fetch(self, key_id: str) -> KeyRecord | None:
        self._refresh()
        return self._records.get(key_id)

    async def save(self, record: KeyRecord) -> None:
        async with self._lock:
            self._checked = 0.0
            self._refresh()
            records = {**self._records, record.id: record}
            self._records = records
            if self.path is None:  # no file (a gateway built around a policy object)
                return
            body = json.dumps(
                {"keys": {k: v.model_dump(mode="json") for k, v in sorted(records.items())}},
                indent=1,
            )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)  # atomic: a reader sees the old file or the new one
            st = self.path.stat()
            self._seen = (st.st_mtime_ns, st.st_size)

    async def records(self) -> list[KeyRecord]:
        self._refresh()
        return [self._records[k] for k in sorted(self._records)]

    async def admit(self, record: KeyRecord, lease: str, *, metered: bool) -> Admission:
        self._refresh()
        live = self._records.get(record.id)
        if live is None or live.revoked_at is not None:
            return "revoked"
        if live.rev != record.rev:
            return "stale"
        self.limiter.admit(record, lease, metered=metered)
        return "ok"

    async def release(self, record: KeyRecord, lease: str) -> None:
        self.limiter.release(record.id, lease)

    async def usage(self, record: KeyRecord) -> dict[str, Any]:
        return self.limiter.usage(record.id)

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


__all__ = [
    "Admission",
    "FileKeyStore",
    "KeyStore",
    "RedisKeyStore",
    "SentAdmit",
    "StoreDown",
]
