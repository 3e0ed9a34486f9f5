"""Per-arm outcome counters and guardrail state, in-process or shared through Redis.

Each gateway process adds to local deltas on the hot path (no I/O) and pushes them every
sync; totals are read back from the store, so ``GET /admin/experiments`` on any replica shows
every replica's traffic. Latencies go into a fixed log-spaced histogram (25% wide buckets) so
that percentiles merge across processes by adding counts.

Beside the arm's totals, the same figures are summed per unit cluster (``_units.py``: units
hashed into 1,024 clusters, the statistics' independent observations) and the arm's distinct
units are marked in a bitmap; both are bounded whatever the traffic, and both merge across
replicas by adding (``HINCRBY``, ``SETBIT``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from prism.backends import Overloaded

from ..cache._stores import bounded_redis
from ..shared_redis import close_redis, redis_errors
from ._units import UNIT_BITS, cluster_of, distinct_units, unit_bit

log = logging.getLogger("prism.experiments")

#: a distinct-unit bitmap untouched this long is dropped (its arm or split is long gone)
UNITS_TTL_S = 90 * 24 * 3600

#: upper edges of the latency buckets in ms (0.5 ms .. ~28 s); one more bucket above
LATENCY_EDGES_MS: tuple[float, ...] = tuple(0.5 * 1.25**i for i in range(50))

_SCALARS = (
    "assigned",
    "cached",
    "requests",
    "errors",
    "latency_sum_ms",
    "latency_sq_ms",
    "shadow_requests",
    "shadow_errors",
    "cosine_sum",
    "cosine_count",
    "quality_count",
    "quality_sum",
    "quality_sq",
)
_FLOATS = frozenset({"latency_sum_ms", "latency_sq_ms", "cosine_sum", "quality_sum", "quality_sq"})


def _empty_hist() -> list[int]:
    return [0] * (len(LATENCY_EDGES_MS) + 1)


#: per-cluster figures: requests, errors, successes (k), latency sum of successes (ms),
#: feedback scores (q) and their sum (s)
CLUSTER_FIELDS = ("n", "e", "k", "l", "q", "s")
_CLUSTER_FLOATS = frozenset({"l", "s"})
N, E, K, L, Q, S = range(len(CLUSTER_FIELDS))


def _cluster_field(key: str) -> tuple[int, int] | None:
    """``c<cluster>.<field>`` -> (cluster, field index), else None."""
    if not key.startswith("c"):
        return None
    index, dot, name = key[1:].partition(".")
    if not dot or not index.isdigit() or name not in CLUSTER_FIELDS:
        return None
    return int(index), CLUSTER_FIELDS.index(name)


def is_float_field(name: str) -> bool:
    """Fields added with ``HINCRBYFLOAT`` (a field once a float cannot take ``HINCRBY``)."""
    return name in _FLOATS or name.rpartition(".")[2] in _CLUSTER_FLOATS


@dataclass
class ArmCounts:
    """What happened to one arm. ``requests`` = answered by a backend (ok + errors)."""

    assigned: int = 0
    #: answered from the cache: counted, but they say nothing about the arm's model
    cached: int = 0
    requests: int = 0
    errors: int = 0
    latency_sum_ms: float = 0.0
    latency_sq_ms: float = 0.0
    shadow_requests: int = 0
    shadow_errors: int = 0
    cosine_sum: float = 0.0
    cosine_count: int = 0
    #: feedback scores callers sent for this arm's answers (``POST /v1/feedback``)
    quality_count: int = 0
    quality_sum: float = 0.0
    quality_sq: float = 0.0
    #: successful requests per latency bucket
    hist: list[int] = field(default_factory=_empty_hist)
    #: cluster -> [requests, errors, successes, latency sum, scores, score sum]
    clusters: dict[int, list[float]] = field(default_factory=dict)
    #: bits of units seen since the last push (the store keeps the arm's bitmap)
    unit_bits: set[int] = field(default_factory=set)
    #: distinct units the arm has seen (read back from the store's bitmap)
    units: int = 0

    def cluster(self, hashed_unit: int) -> list[float]:
        index = cluster_of(hashed_unit)
        row = self.clusters.get(index)
        if row is None:
            row = self.clusters[index] = [0.0] * len(CLUSTER_FIELDS)
        return row

    def saw_unit(self, hashed_unit: int) -> None:
        self.unit_bits.add(unit_bit(hashed_unit))

    def observe(self, latency_ms: float, *, ok: bool, unit: int | None = None) -> None:
        """One request the arm answered; ``unit``: its unit's hash (``_units.unit_hash``)."""
        self.requests += 1
        row = self.cluster(unit) if unit is not None else None
        if row is not None:
            row[N] += 1
        if not ok:
            self.errors += 1
            if row is not None:
                row[E] += 1
            return
        if row is not None:
            row[K] += 1
            row[L] += latency_ms
        self.latency_sum_ms += latency_ms
        self.latency_sq_ms += latency_ms * latency_ms
        i = 0
        while i < len(LATENCY_EDGES_MS) and latency_ms > LATENCY_EDGES_MS[i]:
            i += 1
        self.hist[i] += 1

    @property
    def successes(self) -> int:
        return sum(self.hist)

    def percentile_ms(self, q: float) -> float | None:
        """Interpolated within its bucket; None without samples."""
        n = self.successes
        if n == 0:
            return None
        rank = q / 100 * n
        seen = 0
        for i, count in enumerate(self.hist):
            if count and seen + count >= rank:
                lo = LATENCY_EDGES_MS[i - 1] if i > 0 else 0.0
                hi = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else lo * 1.25
                return lo + (hi - lo) * max(0.0, rank - seen) / count
            seen += count
        return LATENCY_EDGES_MS[-1]

    def merge(self, other: ArmCounts, sign: int = 1) -> ArmCounts:
        out = ArmCounts()
        for name in _SCALARS:
            setattr(out, name, getattr(self, name) + sign * getattr(other, name))
        out.hist = [a + sign * b for a, b in zip(self.hist, other.hist, strict=True)]
        out.clusters = {i: list(row) for i, row in self.clusters.items()}
        for i, row in other.clusters.items():
            mine = out.clusters.setdefault(i, [0.0] * len(CLUSTER_FIELDS))
            for f, value in enumerate(row):
                mine[f] += sign * value
        out.units = self.units + sign * other.units
        out.unit_bits = self.unit_bits | other.unit_bits if sign > 0 else set(self.unit_bits)
        return out

    def to_fields(self) -> dict[str, float]:
        """Non-zero fields, as a flat mapping (a Redis hash; ``h<i>`` = histogram bucket i,
        ``c<i>.<f>`` = unit cluster i's field f). Unit bits travel separately."""
        out: dict[str, float] = {n: getattr(self, n) for n in _SCALARS if getattr(self, n)}
        out.update({f"h{i}": c for i, c in enumerate(self.hist) if c})
        for i, row in self.clusters.items():
            for name, value in zip(CLUSTER_FIELDS, row, strict=True):
                if value:
                    out[f"c{i}.{name}"] = value
        return out

    @classmethod
    def from_fields(cls, data: Mapping[Any, Any]) -> ArmCounts:
        out = cls()
        names = {f.name for f in fields(cls)}
        for raw_key, raw_value in data.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            value = float(raw_value)
            if key.startswith("h") and key[1:].isdigit():
                index = int(key[1:])
                if index < len(out.hist):
                    out.hist[index] = int(value)
            elif (cell := _cluster_field(key)) is not None:
                out.clusters.setdefault(cell[0], [0.0] * len(CLUSTER_FIELDS))[cell[1]] = value
            elif key in names and key not in ("clusters", "unit_bits", "hist"):
                setattr(out, key, value if key in _FLOATS else int(value))
        return out


class Answer(NamedTuple):
    """Which experiment arm gave an answer, to which unit (its hash; None: not known)."""

    experiment: str
    arm: str
    unit: int | None = None


@dataclass
class GuardState:
    #: arm -> {"reason": ..., "at": unix time}
    stopped: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: arm -> counts at the last resume: guardrails judge only what came after
    baseline: dict[str, ArmCounts] = field(default_factory=dict)


class CounterStore(Protocol):
    name: str

    async def push(self, experiment: str, deltas: Mapping[str, ArmCounts]) -> None: ...

    async def totals(self, experiment: str, arms: list[str]) -> dict[str, ArmCounts]: ...

    async def guard(self, experiment: str) -> GuardState: ...

    async def stop(self, experiment: str, arm: str, info: dict[str, Any]) -> bool: ...

    async def resume(self, experiment: str, baseline: Mapping[str, ArmCounts]) -> None: ...

    async def remember(self, requests: Mapping[str, Answer], ttl_s: float) -> None:
        """Share ``request id -> (experiment, arm, unit)`` so feedback may reach any replica."""
        ...

    async def recall(self, request_id: str) -> Answer | None: ...

    async def claim(self, request_id: str, ttl_s: float) -> bool:
        """True the first time feedback on ``request_id`` arrives, on any replica."""
        ...

    async def aclose(self) -> None: ...


class MemoryCounterStore:
    """One process only: the default without Redis.

    With a ``path``, totals and guard state survive a restart: they are read from that JSON
    file at start and written back (atomically: temp file + rename) when an arm stops or
    resumes, every ``save_every_s`` while counts come in, and at shutdown. A file that cannot
    be written is logged once; serving never depends on it.
    """

    name = "memory"

    def __init__(self, path: Path | None = None, *, save_every_s: float = 5.0) -> None:
        self._totals: dict[tuple[str, str], ArmCounts] = {}
        #: (experiment, arm) -> distinct-unit bitmap
        self._units: dict[tuple[str, str], bytearray] = {}
        self._guards: dict[str, GuardState] = {}
        self.path = path
        #: what reports say: "memory", or "file" when kept across restarts
        self.name = "file" if path is not None else "memory"
        self.save_every_s = save_every_s
        self._saved_at = 0.0
        self._dirty = False
        self._save_failed = False
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for experiment, arms in doc.get("totals", {}).items():
                for arm, data in arms.items():
                    self._totals[(experiment, arm)] = ArmCounts.from_fields(data)
            for experiment, arms in doc.get("units", {}).items():
                for arm, packed in arms.items():
                    bitmap = bytearray(zlib.decompress(base64.b64decode(packed)))
                    if len(bitmap) == UNIT_BITS // 8:
                        self._units[(experiment, arm)] = bitmap
            for experiment, guard in doc.get("guards", {}).items():
                self._guards[experiment] = GuardState(
                    dict(guard.get("stopped", {})),
                    {a: ArmCounts.from_fields(d) for a, d in guard.get("baseline", {}).items()},
                )
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning("experiment state %s not read (starting empty): %r", path, exc)

    def save(self) -> None:
        """Write the state now (when there is any and it changed)."""
        if self.path is None or not self._dirty:
            return
        totals: dict[str, dict[str, Any]] = {}
        for (experiment, arm), counts in self._totals.items():
            totals.setdefault(experiment, {})[arm] = counts.to_fields()
        guards = {
            name: {
                "stopped": g.stopped,
                "baseline": {a: c.to_fields() for a, c in g.baseline.items()},
            }
            for name, g in self._guards.items()
        }
        units: dict[str, dict[str, str]] = {}
        for (experiment, arm), bitmap in self._units.items():
            # a sparse 1 MiB bitmap compresses to a few KiB
            packed = base64.b64encode(zlib.compress(bytes(bitmap), 6)).decode()
            units.setdefault(experiment, {})[arm] = packed
        doc = {"totals": totals, "units": units, "guards": guards}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            if not self._save_failed:
                log.warning("experiment state not saved to %s (kept in memory): %r", self.path, exc)
            self._save_failed = True
            return
        self._dirty = False
        self._saved_at = time.monotonic()

    def _changed(self, *, now: bool = False) -> None:
        self._dirty = True
        if now or time.monotonic() - self._saved_at >= self.save_every_s:
            self.save()

    async def push(self, experiment: str, deltas: Mapping[str, ArmCounts]) -> None:
        for arm, delta in deltas.items():
            key = (experiment, arm)
            self._totals[key] = self._totals.get(key, ArmCounts()).merge(delta)
            self._totals[key].unit_bits = set()
            if delta.unit_bits:
                bitmap = self._units.get(key)
                if bitmap is None:
                    bitmap = self._units[key] = bytearray(UNIT_BITS // 8)
                for bit in delta.unit_bits:
                    bitmap[bit >> 3] |= 0x80 >> (bit & 7)  # Redis SETBIT's bit order
        if deltas:
            self._changed()

    async def totals(self, experiment: str, arms: list[str]) -> dict[str, ArmCounts]:
        out = {}
        for arm in arms:
            counts = out[arm] = self._totals.get((experiment, arm), ArmCounts()).merge(ArmCounts())
            bitmap = self._units.get((experiment, arm))
            counts.units = distinct_units(_bits_set(bitmap)) if bitmap is not None else 0
        return out

    async def guard(self, experiment: str) -> GuardState:
        state = self._guards.get(experiment, GuardState())
        return GuardState(dict(state.stopped), dict(state.baseline))

    async def stop(self, experiment: str, arm: str, info: dict[str, Any]) -> bool:
        state = self._guards.setdefault(experiment, GuardState())
        if arm in state.stopped:
            return False
        state.stopped[arm] = info
        self._changed(now=True)  # a stop must outlive a crash right after it
        return True

    async def resume(self, experiment: str, baseline: Mapping[str, ArmCounts]) -> None:
        self._guards[experiment] = GuardState({}, dict(baseline))
        self._changed(now=True)

    async def remember(self, requests: Mapping[str, Answer], ttl_s: float) -> None:
        pass  # one process: the engine's own recent-request map is all there is

    async def recall(self, request_id: str) -> Answer | None:
        return None

    async def claim(self, request_id: str, ttl_s: float) -> bool:
        return True  # one process: the engine's own claimed set decides

    async def aclose(self) -> None:
        self.save()


def _bits_set(bitmap: bytes | bytearray) -> int:
    return int.from_bytes(bitmap, "big").bit_count()


class CountersUnavailable(Overloaded):
    """The shared counter store cannot be reached: requests go on, reports wait (503)."""

    code = "counters_unavailable"
    title = "Experiment counters unavailable"


class RedisCounterStore:
    """Counters shared by every gateway process: one hash per arm, one for guard state.

    A client of its own (not the cache's) under its own prefix, so flushing or losing the
    cache never touches experiment results. An experiment's keys share the hash tag
    ``{<experiment>}``: on a Redis Cluster its arms and guard state live in one slot, so a
    push, a totals read and the resume transaction each go to one node in one round trip.
    """

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "prism:x:", timeout_s: float = 0.5) -> None:
        self.prefix = prefix
        # typed loosely: redis-py's stubs mix sync and async return types
        self._redis: Any = bounded_redis(url, timeout_s=timeout_s)
        self._errors = redis_errors()

    @contextmanager
    def _mapped(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise CountersUnavailable(
                f"experiment counters unavailable: redis {type(exc).__name__}", retry_after_s=5
            ) from exc

    def _arm_key(self, experiment: str, arm: str) -> str:
        return f"{self.prefix}{{{experiment}}}:arm:{arm}"

    def _units_key(self, experiment: str, arm: str) -> str:
        return self._arm_key(experiment, arm) + ":units"

    def _guard_key(self, experiment: str) -> str:
        return f"{self.prefix}{{{experiment}}}:guard"

    async def push(self, experiment: str, deltas: Mapping[str, ArmCounts]) -> None:
        with self._mapped():
            async with self._redis.pipeline(transaction=False) as pipe:
                for arm, delta in deltas.items():
                    key = self._arm_key(experiment, arm)
                    for name, value in delta.to_fields().items():
                        # a field once written as a float cannot take HINCRBY again
                        if is_float_field(name):
                            pipe.hincrbyfloat(key, name, value)
                        else:
                            pipe.hincrby(key, name, int(value))
                    if delta.unit_bits:
                        units_key = self._units_key(experiment, arm)
                        for bit in delta.unit_bits:
                            pipe.setbit(units_key, bit, 1)
                        # 1 MiB each: a split or an arm definition nobody serves any more
                        # does not keep its bitmap forever
                        pipe.expire(units_key, UNITS_TTL_S)
                await pipe.execute()

    async def totals(self, experiment: str, arms: list[str]) -> dict[str, ArmCounts]:
        with self._mapped():
            async with self._redis.pipeline(transaction=False) as pipe:
                for arm in arms:
                    pipe.hgetall(self._arm_key(experiment, arm))
                    pipe.bitcount(self._units_key(experiment, arm))
                rows = await pipe.execute()
            out = {}
            for i, arm in enumerate(arms):
                counts = out[arm] = ArmCounts.from_fields(rows[2 * i])
                counts.units = distinct_units(int(rows[2 * i + 1]))
            return out

    async def guard(self, experiment: str) -> GuardState:
        with self._mapped():
            raw = await self._redis.hgetall(self._guard_key(experiment))
            state = GuardState()
            for k, v in raw.items():
                kind, _, arm = k.decode().partition(":")
                if kind == "stopped":
                    state.stopped[arm] = json.loads(v)
                elif kind == "baseline":
                    state.baseline[arm] = ArmCounts.from_fields(json.loads(v))
            return state

    async def stop(self, experiment: str, arm: str, info: dict[str, Any]) -> bool:
        with self._mapped():
            # HSETNX: when several replicas trip the same guardrail, the first one's reason stays
            return bool(
                await self._redis.hsetnx(
                    self._guard_key(experiment), f"stopped:{arm}", json.dumps(info)
                )
            )

    async def resume(self, experiment: str, baseline: Mapping[str, ArmCounts]) -> None:
        with self._mapped():
            key = self._guard_key(experiment)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                for arm, counts in baseline.items():
                    pipe.hset(key, f"baseline:{arm}", json.dumps(counts.to_fields()))
                await pipe.execute()

    async def remember(self, requests: Mapping[str, Answer], ttl_s: float) -> None:
        with self._mapped():
            async with self._redis.pipeline(transaction=False) as pipe:
                for request_id, pair in requests.items():
                    pipe.set(f"{self.prefix}req:{request_id}", json.dumps(pair), ex=int(ttl_s))
                await pipe.execute()

    async def recall(self, request_id: str) -> Answer | None:
        with self._mapped():
            raw = await self._redis.get(f"{self.prefix}req:{request_id}")
        if raw is None:
            return None
        experiment, arm, *unit = json.loads(raw)  # [experiment, arm] before units were kept
        return Answer(str(experiment), str(arm), int(unit[0]) if unit and unit[0] else None)

    async def claim(self, request_id: str, ttl_s: float) -> bool:
        with self._mapped():
            key = f"{self.prefix}fb:{request_id}"
            return bool(await self._redis.set(key, b"1", nx=True, ex=int(ttl_s)))

    async def aclose(self) -> None:
        await close_redis(self._redis)


def finite(value: float | None, digits: int = 3) -> float | None:
    """Round for JSON; NaN/inf (never valid JSON) become None."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)
