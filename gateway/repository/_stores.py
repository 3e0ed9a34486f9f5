"""Where overrides live: Redis (shared by every replica), a JSON file next to the policy
(one host: the workers of ``prism serve --workers N`` and restarts), or memory (a policy
handed in by code, which has no file to sit next to).

Every store offers the same three things: ``read`` the document, ``revision`` (cheap, what
replicas poll about twice a second), and ``update(edit)``, a compare-and-set that runs
``edit`` on the current document and writes the result with the next revision number.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from prism.backends import Overloaded

from ..cache._stores import bounded_redis
from ..shared_redis import close_redis, redis_errors
from ._overrides import Overrides

log = logging.getLogger("prism.repository")

Edit = Callable[[Overrides], Overrides]

#: both keys share one hash tag, so a transaction over them works on Redis Cluster too
REDIS_DOC_KEY = "prism:{overrides}:doc"
REDIS_REVISION_KEY = "prism:{overrides}:rev"


class OverridesUnavailable(Overloaded):
    """The shared override store cannot be reached: nothing changed, try again."""

    code = "overrides_unavailable"
    title = "Override store unavailable"


class OverrideStore(Protocol):
    name: str

    async def read(self) -> Overrides: ...

    async def revision(self) -> int: ...

    async def update(self, edit: Edit) -> tuple[Overrides, Overrides]:
        """(before, after); ``edit`` may raise to refuse the change (nothing is written)."""
        ...

    async def aclose(self) -> None: ...


def _stamped(before: Overrides, after: Overrides) -> Overrides:
    return after.model_copy(update={"revision": before.revision + 1, "updated_at": time.time()})


class MemoryOverrideStore:
    name = "memory"

    def __init__(self) -> None:
        self._doc = Overrides()

    async def read(self) -> Overrides:
        return self._doc

    async def revision(self) -> int:
        return self._doc.revision

    async def update(self, edit: Edit) -> tuple[Overrides, Overrides]:
        before = self._doc
        after = edit(before)
        if after == before:
            return before, before
        self._doc = _stamped(before, after)
        return before, self._doc

    async def aclose(self) -> None:
        pass


class FileOverrideStore:
    """A JSON file, replaced atomically; edits hold an ``flock`` on ``FILE.lock`` so the
    workers of one host never interleave a read-modify-write."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int] | None = None
        self._cached = Overrides()

    def _read_now(self) -> Overrides:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._seen, self._cached = None, Overrides()
            return self._cached
        key = (stat.st_mtime_ns, stat.st_size)
        if key != self._seen:
            try:
                self._cached = Overrides.model_validate_json(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                log.error("overrides file %s unreadable, ignoring it: %r", self.path, exc)
                self._cached = Overrides()
            self._seen = key
        return self._cached

    async def read(self) -> Overrides:
        return await asyncio.to_thread(self._read_now)

    async def revision(self) -> int:
        return (await self.read()).revision

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _update_now(self, edit: Edit) -> tuple[Overrides, Overrides]:
        with self._locked():
            self._seen = None  # read what is on disk now, not a cached copy
            before = self._read_now()
            after = edit(before)
            if after == before:
                return before, before
            after = _stamped(before, after)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(after.model_dump(mode="json"), indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
            return before, after

    async def update(self, edit: Edit) -> tuple[Overrides, Overrides]:
        try:
            return await asyncio.to_thread(self._update_now, edit)
        except OSError as exc:
            raise OverridesUnavailable(
                f"overrides file {self.path} cannot be written: {exc.strerror}"
            ) from exc

    async def aclose(self) -> None:
        pass


#: compare-and-set: write the document and its revision only if the revision is still the
#: one the edit started from (a Lua script: atomic, and fine on Redis Cluster, one hash slot)
_CAS = """
local seen = redis.call('GET', KEYS[2]) or '0'
if seen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""


class RedisOverrideStore:
    """One JSON value and its revision counter under one hash tag; an edit is written by a
    compare-and-set script (optimistic: when another replica wrote first, the edit runs
    again on its result)."""

    name = "redis"

    def __init__(self, url: str, *, timeout_s: float = 1.0) -> None:
        self._redis: Any = bounded_redis(url, timeout_s=timeout_s)
        self._cas = self._redis.register_script(_CAS)
        # a cluster's RedisClusterException is not a RedisError: one tuple for both kinds
        self._errors: tuple[type[BaseException], ...] = redis_errors()

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise OverridesUnavailable(
                f"override store unavailable: redis {type(exc).__name__}", retry_after_s=2
            ) from exc

    @staticmethod
    def _parse(raw: bytes | None) -> Overrides:
        return Overrides() if raw is None else Overrides.model_validate_json(raw)

    async def read(self) -> Overrides:
        with self._mapped():
            return self._parse(await self._redis.get(REDIS_DOC_KEY))

    async def revision(self) -> int:
        with self._mapped():
            raw = await self._redis.get(REDIS_REVISION_KEY)
        return int(raw) if raw is not None else 0

    async def update(self, edit: Edit) -> tuple[Overrides, Overrides]:
        with self._mapped():
            while True:
                raw, seen = await self._redis.mget([REDIS_DOC_KEY, REDIS_REVISION_KEY])
                before = self._parse(raw)
                after = edit(before)
                if after == before:
                    return before, before
                seen_revision = int(seen) if seen is not None else 0
                after = _stamped(
                    before.model_copy(update={"revision": max(before.revision, seen_revision)}),
                    after,
                )
                written = await self._cas(
                    keys=[REDIS_DOC_KEY, REDIS_REVISION_KEY],
                    args=[str(seen_revision), after.model_dump_json(), str(after.revision)],
                )
                if written:
                    return before, after
                # another replica wrote first: edit its result instead

    async def aclose(self) -> None:
        await close_redis(self._redis)


def override_store(redis_url: str | None, path: Path | None) -> OverrideStore:
    if redis_url:
        return RedisOverrideStore(redis_url)
    if path is not None:
        return FileOverrideStore(path)
    return MemoryOverrideStore()
