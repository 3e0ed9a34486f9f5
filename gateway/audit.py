"""The admin audit log: every change an operator makes, with who (key id), what and how it
ended; never a secret.

With Redis it is one capped list shared by every replica (``LPUSH`` + ``LTRIM``: newest first,
at most :data:`AUDIT_MAX` entries); without, a JSON-lines file next to the policy (mode 0600).
``GET /admin/audit`` reads it back, newest first. Recording never fails the admin action it
describes: an unreachable store is logged and counted instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("prism.audit")

#: entries kept (Redis list, and what a file read returns at most)
AUDIT_MAX = 10_000
AUDIT_KEY = "prism:audit"
#: keys in ``before``/``after`` values that are never written, whatever a caller passes
_SECRET_FIELDS = frozenset({"key", "secret", "digest", "api_key", "password", "token"})


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in _SECRET_FIELDS}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


class AuditLog:
    """Append-only record of admin actions (held by the runtime as ``runtime.audit``)."""

    def __init__(self, redis_url: str | None, path: Path | None) -> None:
        self.path = path
        self.errors = 0
        self._redis: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._lock = asyncio.Lock()
        #: neither Redis nor a file (a gateway built around a policy object): memory only
        self._memory: deque[str] = deque(maxlen=AUDIT_MAX)
        if redis_url:
            import redis.asyncio as redis

            from .cache._stores import bounded_redis

            self._redis = bounded_redis(redis_url, timeout_s=1.0)
            self._errors = (redis.RedisError, OSError)

    async def record(
        self,
        *,
        action: str,
        target: str,
        key_id: str | None,
        outcome: str,
        before: Any = None,
        after: Any = None,
    ) -> None:
        """Append one entry: ``action`` (e.g. ``keys.create``), its ``target`` (a key id, a
        model, an experiment), the caller's ``key_id``, ``outcome`` (``ok`` or why not) and,
        where it helps, the state ``before`` and ``after`` (secrets removed)."""
        entry: dict[str, Any] = {
            "time": time.time(),
            "key_id": key_id,
            "action": action,
            "target": target,
            "outcome": outcome,
        }
        if before is not None:
            entry["before"] = _scrub(before)
        if after is not None:
            entry["after"] = _scrub(after)
        line = json.dumps(entry, default=str, separators=(",", ":"))
        try:
            if self._redis is not None:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.lpush(AUDIT_KEY, line)
                    pipe.ltrim(AUDIT_KEY, 0, AUDIT_MAX - 1)
                    await pipe.execute()
            elif self.path is not None:
                async with self._lock:
                    await asyncio.to_thread(self._append, line)
            else:
                self._memory.append(line)
        except self._errors as exc:
            self.errors += 1
            log.error("audit entry not stored (%s): %s", type(exc).__name__, line)

    def _append(self, line: str) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")

    async def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` entries, newest first."""
        limit = max(1, min(limit, AUDIT_MAX))
        if self._redis is not None:
            raw = await self._redis.lrange(AUDIT_KEY, 0, limit - 1)
            return [json.loads(r) for r in raw]
        if self.path is None:
            return [json.loads(x) for x in reversed(list(self._memory)[-limit:])]
        if not self.path.exists():
            return []
        lines = await asyncio.to_thread(self._tail, limit)
        return [json.loads(x) for x in reversed(lines)]

    def _tail(self, limit: int) -> list[str]:
        assert self.path is not None
        with self.path.open() as f:
            return [x for x in deque(f, maxlen=limit) if x.strip()]

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)


__all__ = ["AUDIT_KEY", "AUDIT_MAX", "AuditLog"]
