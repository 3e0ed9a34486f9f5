"""Per-key limits: requests per minute, per UTC day, and in flight, checked before dispatch.

The algorithm (the same in Redis and in one process):

- **rpm** is a sliding-window log: the times of the requests admitted in the last 60 s (a
  sorted set). A request is admitted only while fewer than ``rpm`` are in the window, so no
  60-second span ever holds more than ``rpm`` admitted requests, however many replicas
  share the key. Refused requests are not logged (a client hammering at its limit does not
  push its own window forward). ``Retry-After`` = when the oldest entry leaves the window.
- **rpd** is a counter per UTC day (a hash field per day number), so "usage today" reads
  straight from it. ``Retry-After`` = the next UTC midnight.
- **max_concurrent** is a set of leases (sorted by expiry). A request takes a lease before
  dispatch and gives it back when its response is done, failed or cancelled; a lease of a
  replica that died expires after :data:`LEASE_TTL_S`.

In Redis all three, plus the check that the caller's cached key record is current (its
revision), are one Lua script: one round trip per request, atomic, so concurrent requests on
any number of replicas cannot slip past a limit. (The fast lane does not wait idle for that
round trip: it sends the script and the request goes on until something would leave the
process, ``auth.py``.) Every key the script touches carries the
hash tag ``{k:<id>}``, so they share one Redis Cluster slot. Time is Redis's (``TIME``), one
clock for every replica.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prism.backends import Overloaded, PrismError

from ._keys import KeyRecord

#: a lease of a request that never came back (its replica died) frees itself after this
LEASE_TTL_S = 300
WINDOW_MS = 60_000
DAY_MS = 86_400_000


def key_prefix(key_id: str) -> str:
    """Every Redis key of one managed key starts with this (one cluster slot)."""
    return f"prism:{{k:{key_id}}}:"


def script_keys(key_id: str) -> list[str]:
    p = key_prefix(key_id)
    return [p + "rev", p + "rpm", p + "use", p + "conc"]


# KEYS: rev, rpm log, usage hash, leases.  ARGV: cached rev, rpm, rpd, max_concurrent (0 = none),
# lease id, lease ttl ms, metered (1/0).  Answers {1} admitted, {0, limit, retry_ms} refused,
# {-1} revoked or unknown, {-2} the caller's record is stale (fetch it and ask again).
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rev = redis.call('GET', KEYS[1])
if not rev then return {-1} end
if rev ~= ARGV[1] then return {-2} end
if ARGV[7] ~= '1' then
  redis.call('HSET', KEYS[3], 'last', now)
  return {1}
end
local rpm, rpd, conc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl = tonumber(ARGV[6])
local day = math.floor(now / 86400000)
local today = 'd' .. day
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= conc then return {0, 'max_concurrent', 1000} end
end
if rpd > 0 then
  local used = tonumber(redis.call('HGET', KEYS[3], today) or '0')
  if used >= rpd then return {0, 'rpd', (day + 1) * 86400000 - now} end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[2]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {0, 'rpm', tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[2], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if conc > 0 then
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ttl)
end
redis.call('HINCRBY', KEYS[3], today, 1)
redis.call('HSET', KEYS[3], 'last', now)
redis.call('HDEL', KEYS[3], 'd' .. (day - 2))
return {1}
"""


class RateLimited(PrismError):
    """A key over one of its limits: 429 with ``Retry-After`` and the IETF RateLimit
    headers (draft-ietf-httpapi-ratelimit-headers)."""

    status_code = 429
    code = "rate_limited"
    title = "Too many requests"


class LimitsUnavailable(Overloaded):
    """``limits_on_redis_down: fail_closed`` and the shared limit store cannot be reached."""

    code = "limits_unavailable"
    title = "Rate limits unavailable"


_WINDOWS = {"rpm": 60, "rpd": 86_400, "max_concurrent": 0}


def rate_limited(record: KeyRecord, limit: str, retry_ms: float) -> RateLimited:
    """The 429 for ``record`` over ``limit``, with the headers clients back off by."""
    retry_s = max(1, math.ceil(retry_ms / 1000))
    quota = int(getattr(record, limit) or 0)
    policy = ", ".join(
        f'"{name}";q={getattr(record, name)}' + (f";w={w}" if w else "")
        for name, w in _WINDOWS.items()
        if getattr(record, name)
    )
    headers = {
        "Retry-After": str(retry_s),
        "RateLimit-Policy": policy,
        "RateLimit": f'"{limit}";r=0;t={retry_s}',
    }
    what = {"rpm": "requests per minute", "rpd": "requests per day"}.get(
        limit, "requests in flight"
    )
    return RateLimited(
        f"key {record.id} is over its limit of {quota} {what}; retry in {retry_s} s",
        headers=headers,
        extra={"limit": limit, "quota": quota, "retry_after_s": retry_s},
    )


@dataclass
class _LocalState:
    window: deque[float] = field(default_factory=deque)
    day: int = -1
    today: int = 0
    last: float | None = None
    leases: set[str] = field(default_factory=set)


class LocalLimiter:
    """The same limits in one process: without Redis, and as the ``fail_open`` fallback
    while Redis is down (then each replica enforces a key's full limits by itself)."""

    def __init__(self) -> None:
        self._state: dict[str, _LocalState] = {}

    def admit(self, record: KeyRecord, lease: str, *, metered: bool) -> None:
        """Raise :class:`RateLimited` or take the request (and its lease)."""
        now = time.time()
        st = self._state.setdefault(record.id, _LocalState())
        st.last = now
        if not metered:
            return
        day = int(now * 1000 // DAY_MS)
        if st.day != day:
            st.day, st.today = day, 0
        if record.max_concurrent and len(st.leases) >= record.max_concurrent:
            raise rate_limited(record, "max_concurrent", 1000)
        if record.rpd and st.today >= record.rpd:
            raise rate_limited(record, "rpd", (day + 1) * DAY_MS - now * 1000)
        if record.rpm:
            while st.window and st.window[0] <= now - 60:
                st.window.popleft()
            if len(st.window) >= record.rpm:
                raise rate_limited(record, "rpm", (st.window[0] + 60 - now) * 1000)
            st.window.append(now)
        if record.max_concurrent:
            st.leases.add(lease)
        st.today += 1

    def release(self, key_id: str, lease: str) -> None:
        st = self._state.get(key_id)
        if st is not None:
            st.leases.discard(lease)

    def usage(self, key_id: str) -> dict[str, Any]:
        st = self._state.get(key_id)
        today = int(time.time() * 1000 // DAY_MS)
        if st is None:
            return {"last_used_at": None, "requests_today": 0, "in_flight": 0}
        return {
            "last_used_at": st.last,
            "requests_today": st.today if st.day == today else 0,
            "in_flight": len(st.leases),
        }


def usage_from_redis(fields: dict[Any, Any], in_flight: int) -> dict[str, Any]:
    """``GET /admin/keys``'s usage of a key from its Redis usage hash."""
    data = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    today = "d" + str(int(time.time() * 1000 // DAY_MS))
    last = data.get("last")
    return {
        "last_used_at": int(last) / 1000 if last is not None else None,
        "requests_today": int(data.get(today, 0)),
        "in_flight": in_flight,
    }


__all__ = [
    "ADMIT_LUA",
    "DAY_MS",
    "LEASE_TTL_S",
    "LimitsUnavailable",
    "LocalLimiter",
    "RateLimited",
    "key_prefix",
    "rate_limited",
    "script_keys",
    "usage_from_redis",
]
