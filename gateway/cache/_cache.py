"""The response cache the pipeline talks to: keys, single-flight, and failing open.

Keys hash (model, resolved version, task, canonical input, parameters), one per input, so a
batch that repeats earlier inputs only computes the new ones. Concurrent identical misses in
this process share one computation. When the store fails (Redis down), requests go on
uncached (status ``off``), the failure is counted, and the store is retried after a short
back-off so the cache recovers by itself when Redis returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from prism.backends import CacheUnavailable, InputItem, Output, Task

from ._codec import CachedOutput, decode_output, encode_output
from ._stores import CacheStore

log = logging.getLogger("prism.cache")

#: decoded entries kept by their bytes: a hot entry is decoded, and its JSON made, once
DECODED_MAX = 4096


def cache_key(
    model: str,
    version: str,
    task: Task,
    item: InputItem,
    parameters: Mapping[str, Any],
    definition: str = "",
) -> str:
    """Stable across processes and restarts: canonical JSON of parameters, content digests.

    ``definition`` is the version's output fingerprint (``CompiledPolicy.fingerprint``): a
    version id redefined in place (other weights, another model) never hits old entries.
    """
    h = hashlib.blake2b(digest_size=20)
    h.update(_encode([model, version, definition, task.value]))
    h.update(item.fingerprint())
    # most requests carry no parameters: skip the encoder for them (a hot path on cache hits)
    h.update(_encode(parameters) if parameters else b"{}")
    return h.hexdigest()


#: canonical JSON: keys sorted at every depth, anything JSON lacks as its str()
_encode = msgspec.json.Encoder(order="sorted", enc_hook=str).encode


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    coalesced: int = 0


class ResponseCache:
    def __init__(
        self, store: CacheStore, *, retry_after_s: float = 1.0, half: bool = False
    ) -> None:
        self.store = store
        self.stats = CacheStats()
        self.half = half
        self._retry_after_s = retry_after_s
        self._down_until = 0.0
        self._inflight: dict[str, asyncio.Future[Output | None]] = {}
        #: entry bytes -> their output (the same bytes always decode the same)
        self._decoded: dict[bytes, CachedOutput] = {}

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _mark_down(self, exc: CacheUnavailable) -> None:
        self.stats.errors += 1
        if self.available:
            log.warning("cache store %s unavailable (%s); serving uncached", self.store.name, exc)
        self._down_until = time.monotonic() + self._retry_after_s

    async def get_many(self, keys: Sequence[str]) -> list[Output | None] | None:
        """Cached outputs (None per miss); None overall when the store is down. Hits and
        misses count when the caller says so (:meth:`count`)."""
        if not self.available:
            return None
        try:
            blobs = await self.store.get_many(keys)
        except CacheUnavailable as exc:
            self._mark_down(exc)
            return None
        if self._down_until:
            log.info("cache store %s is back", self.store.name)
            self._down_until = 0.0
        out: list[Output | None] = []
        for blob in blobs:
            out.append(None if blob is None else self._decode(blob))
        return out

    def count(self, hits: int, misses: int) -> None:
        """One request's lookups (the pipeline counts a request once it is admitted)."""
        self.stats.hits += hits
        self.stats.misses += misses

    def _decode(self, blob: bytes) -> CachedOutput | None:
        output = self._decoded.get(blob)
        if output is not None:
            return output
        try:
            output = CachedOutput(decode_output(blob))
        except (ValueError, KeyError, TypeError, IndexError, struct.error):
            # a foreign or corrupt entry (someone else's key, a truncated write, another
            # codec version) is a miss, never an error
            return None
        if len(self._decoded) >= DECODED_MAX:
            self._decoded.clear()
        self._decoded[blob] = output
        return output

    async def set_many(self, entries: Mapping[str, Output], ttl_s: float) -> bool:
        if ttl_s <= 0 or not entries or not self.available:
            return False
        blobs = {k: encode_output(v, half=self.half) for k, v in entries.items()}
        try:
            await self.store.set_many(blobs, ttl_s)
        except CacheUnavailable as exc:
            self._mark_down(exc)
            return False
        return True

    # --- single flight -------------------------------------------------------------------

    def join(self, key: str) -> asyncio.Future[Output | None] | None:
        """The in-flight computation of ``key`` in this process, if any. Its result is the
        output, or None when the leader did not get one (its request failed or left): then
        the follower computes the input itself, so it never inherits another caller's error
        (a 422 naming the other request's fields) or cancellation."""
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.coalesced += 1
        return fut

    def lead(self, key: str) -> asyncio.Future[Output | None]:
        """Register this request as the one computing ``key``; others will join it."""
        fut: asyncio.Future[Output | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        return fut

    def finish(self, key: str, output: Output | None) -> None:
        """The leader's outcome for ``key``: its output, or None (followers compute it)."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(output)

    async def aclose(self) -> None:
        await self.store.aclose()
