"""Who may call what, and how often: API keys, scopes and per-key limits, before dispatch.

Keys come as ``Authorization: Bearer KEY`` (what OpenAI clients send) or ``x-api-key: KEY``.
Two kinds:

- **bootstrap keys** from ``PRISM_API_KEYS`` / ``PRISM_ADMIN_KEYS`` (no scopes, no limits);
  with ``PRISM_ADMIN_KEYS`` set, ``/admin/*`` takes only admin keys (an inference key there
  is a 403); without it, admin endpoints take the API keys like the rest;
- **managed keys** (``prism_<id>_...``, made by ``POST /admin/keys``): scopes (models,
  tasks), limits (rpm, rpd, max_concurrent), an expiry; kept in Redis or a file
  (``access``).

Keys are required once any bootstrap key is set (``PRISM_REQUIRE_KEY`` overrides: false
leaves inference open to callers without a key; a key that is sent is still checked). Health,
readiness and metrics stay open (probes and scrapers carry no keys): handlers mark
themselves with ``opt={"public": True}``; inference handlers with ``opt={"metered": True}``
count against a key's limits.

The check is an ASGI middleware around each route (it must see the response finish to give
a concurrency lease back, also when the handler fails or is cancelled). Records are cached
here. A managed key with limits costs one Redis round trip per request (one Lua script:
revision check + limits), and a changed revision makes the request fetch the record again,
so a revocation or a new limit applies to its next request on every replica. A key without
limits costs no round trip: a loop re-checks the cached records every :data:`SYNC_S` (and
adds their usage), and a record the loop has not vouched for within :data:`FRESH_S` is
checked by the request itself: a change applies everywhere within a second.

On the fast lane (``lane.py``) the round trip of a key with limits is not waited for idle.
When the record is cached (and Redis is one server on ``redis://``), the middleware sends
the script (:meth:`Access.admit_later`) and the request goes on with a
:class:`PendingAdmission` on its record: it decides and reads the cache meanwhile, and waits
for Redis's answer before anything leaves the process or is counted (``pipeline.py``), before
its response starts, and on every way out of the middleware. A Redis cache hit then costs
about one round trip for the cache read and the check together. The limits stay exact:
nothing is computed, fetched or answered for a request before it is admitted; a refusal
(429, 401 revoked, 503 ``fail_closed``) wins over the request's own error and leaves no trace
of the request's run on its record; a record the script finds stale drops the run, and the
request is checked again from the start with the record read again. Litestar's routes,
keys whose record is not cached, and keys refused a moment ago (:data:`REFUSED_HOLD_S`: a
refused request then costs what it did before, not a decision and a cache read) wait for
the check first.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge

from prism.backends import Forbidden, PrismError, Unauthorized

from .access import (
    Admission,
    Caller,
    FileKeyStore,
    KeyRecord,
    KeyStore,
    LimitsUnavailable,
    LocalLimiter,
    RateLimited,
    RedisKeyStore,
    SentAdmit,
    StoreDown,
    bootstrap_id,
    id_in,
)
from .ids import random_hex
from .recording import record_of, restart_record

if TYPE_CHECKING:
    from litestar import Request

    from .cache._reader import PipelinedReader
    from .metrics import Metrics
    from .settings import Settings

log = logging.getLogger("prism.auth")

#: where the caller is kept in the ASGI scope's ``state``
CALLER_KEY = "prism.caller"
#: after a failed call, the key store is not asked again for this long (requests take the
#: fallback path at once instead of each waiting for a connection to fail)
STORE_RETRY_S = 1.0
#: how often cached records of keys without limits are checked against Redis (their requests
#: make no round trip of their own); a cache not checked within FRESH_S is not trusted: the
#: request then asks Redis itself, so a change applies everywhere within FRESH_S, even when
#: the check loop stalls
SYNC_S = 0.25
FRESH_S = 1.0
#: an id no store knows is not looked up again for this long (keys are made with fresh random
#: ids, so only a made-up id is ever asked for twice), and at most this many are remembered
UNKNOWN_TTL_S = 1.0
UNKNOWN_MAX = 10_000
#: after a refusal (429), a key's requests wait for their limit check first again for this
#: long: a caller hammering past its limit costs the gateway a refusal's price of before the
#: overlap (the script alone: no decision, no cache read), and each refusal renews it
REFUSED_HOLD_S = 1.0


def _presented_key(scope: Scope) -> str | None:
    api_key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    return api_key


def key_id_of(request: Request[Any, Any, Any]) -> str | None:
    """The id of the key that made ``request`` (never its secret); None without auth."""
    caller = request.scope["state"].get(CALLER_KEY)
    return caller.id if caller is not None else None


def caller_of(scope: Scope) -> Caller | None:
    """The request's :class:`Caller`; None when authentication is off."""
    return scope["state"].get(CALLER_KEY)


def _missing() -> Unauthorized:
    return Unauthorized(
        "missing API key: send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _invalid(why: str = "invalid API key") -> Unauthorized:
    return Unauthorized(why, headers={"WWW-Authenticate": "Bearer"})


class KeyMetrics:
    """Per-key figures (key ids only) and key store failures, in the app's registry."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.requests = Counter(
            "prism_key_requests",
            "Requests by managed key id and outcome (admitted, or the limit that refused it)",
            ["key", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "prism_key_in_flight",
            "Requests in flight per managed key (this process)",
            ["key"],
            registry=r,
        )
        self.store_errors = Counter(
            "prism_key_store_errors",
            "Requests that found the key store unreachable, by what happened (fail_open: "
            "served under this process's own limits; fail_closed: refused)",
            ["mode"],
            registry=r,
        )

    def admitted(self, key_id: str) -> Gauge:
        """Count an admitted request of ``key_id``: its in-flight gauge, to take down after."""
        self.requests.labels(key_id, "admitted").inc()
        gauge = self.in_flight.labels(key_id)
        gauge.inc()
        return gauge


class Access:
    """Authentication, scopes and limits of one gateway (built by the runtime)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        keys_file: Path | None,
        reader: PipelinedReader | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap_api = [(k.encode(), bootstrap_id(k)) for k in settings.api_keys]
        self.bootstrap_admin = [(k.encode(), bootstrap_id(k)) for k in settings.admin_keys]
        self.enabled = bool(self.bootstrap_api or self.bootstrap_admin or settings.require_key)
        self.required = (
            settings.require_key
            if settings.require_key is not None
            else bool(self.bootstrap_api or self.bootstrap_admin)
        )
        self.fail_closed = settings.limits_on_store_down == "fail_closed"
        self.store: KeyStore = (
            RedisKeyStore(settings.redis_url, reader=reader)
            if settings.redis_url
            else FileKeyStore(keys_file)
        )
        self.fallback = LocalLimiter()
        self.metrics = KeyMetrics(metrics)
        self._records: dict[str, KeyRecord] = {}
        #: each cached record's Caller, built once per revision (not per request)
        self._callers: dict[str, tuple[KeyRecord, Caller]] = {}
        #: leases on their way back (tasks, or ZREM replies to come)
        self._releases: set[asyncio.Future[Any]] = set()
        #: keys without limits: requests counted here, added to Redis by the sync loop
        self._counts: dict[str, int] = {}
        self._last: dict[str, float] = {}
        #: when the last successful sync started (monotonic): what the cache is vouched for
        self._verified_at = -1e9
        self._sync_task: asyncio.Task[None] | None = None
        self._unknown: dict[str, float] = {}
        self._store_down_until = 0.0
        #: key id -> until when its checks are not overlapped (:data:`REFUSED_HOLD_S`)
        self._refused: dict[str, float] = {}
        self.refused_hold_s = REFUSED_HOLD_S
        self.store_reachable = True

    # --- the admin API's view -------------------------------------------------------------

    def forget(self, key_id: str) -> None:
        """Drop a cached record (this process changed it)."""
        self._records.pop(key_id, None)

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` says about keys and limits."""
        return {
            "store": self.store.kind,
            "reachable": self.store_reachable,
            "on_store_down": self.settings.limits_on_store_down,
        }

    # --- per request ------------------------------------------------------------------------

    def _bootstrap(self, presented: str, admin_only: bool) -> Caller | None:
        raw = presented.encode()
        # every key compared, in constant time each: no early exit that times which one matched
        admin = [kid for k, kid in self.bootstrap_admin if hmac.compare_digest(raw, k)]
        if admin:
            return Caller(admin[0], admin=True)
        api = [kid for k, kid in self.bootstrap_api if hmac.compare_digest(raw, k)]
        if not api:
            return None
        if admin_only and self.bootstrap_admin:
            raise Forbidden("this endpoint needs an admin key (PRISM_ADMIN_KEYS)")
        # without PRISM_ADMIN_KEYS the API keys are the admin keys (as before managed keys)
        return Caller(api[0], admin=not self.bootstrap_admin)

    async def _fetch(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        if now < self._store_down_until:
            raise StoreDown("key store unreachable (retrying shortly)")
        if self._unknown.get(key_id, 0.0) > now:
            return None  # asked a moment ago: a flood of made-up ids costs Redis nothing
        try:
            record = await self.store.fetch(key_id)
        except StoreDown:
            self._down()
            raise
        if record is not None:
            self._records[key_id] = record
            self._unknown.pop(key_id, None)
        else:
            if len(self._unknown) >= UNKNOWN_MAX:
                self._unknown.clear()
            self._unknown[key_id] = now + UNKNOWN_TTL_S
        return record

    def _down(self) -> None:
        self._store_down_until = time.monotonic() + STORE_RETRY_S
        if self.store_reachable:
            log.warning(
                "the key store is unreachable; keys and limits: %s",
                self.settings.limits_on_store_down,
            )
        self.store_reachable = False

    def _verify(self, record: KeyRecord | None, presented: str, admin_only: bool) -> KeyRecord:
        if record is None or not record.matches(presented):
            raise _invalid()
        if record.revoked_at is not None:
            raise _invalid("this API key was revoked")
        if record.expired():
            raise _invalid("this API key has expired")
        if admin_only and not record.admin:
            raise Forbidden(f"this endpoint needs an admin key; key {record.id} is not one")
        return record

    async def _managed(
        self, key_id: str, presented: str, admin_only: bool, lease: str, metered: bool
    ) -> tuple[KeyRecord, bool]:
        """The verified record, admitted against its limits; True when the lease was taken
        from the local fallback limiter (Redis down, fail_open)."""
        record = self._records.get(key_id)
        if record is None:
            try:
                record = await self._fetch(key_id)
            except StoreDown as exc:
                self.metrics.store_errors.labels("refused").inc()
                raise LimitsUnavailable(
                    "the key store is unreachable and this key is not known here yet",
                    retry_after_s=1,
                ) from exc
        record = self._verify(record, presented, admin_only)
        if (
            not record.limited
            and self._sync_task is not None
            and time.monotonic() - self._verified_at < FRESH_S
        ):
            # no limits to take: the sync loop vouches for the cached record, and counts
            self._last[key_id] = time.time()
            if metered:
                self._counts[key_id] = self._counts.get(key_id, 0) + 1
            return record, False
        for _ in range(3):
            try:
                if time.monotonic() < self._store_down_until:
                    raise StoreDown("key store unreachable (retrying shortly)")
                answer = await self.store.admit(record, lease, metered=metered)
            except StoreDown:
                return record, self._unreachable(record, lease, metered)
            if self._judged(record, answer):
                return record, False
            # stale: another replica changed the key; read it again and re-check
            record = self._verify(await self._fetch(key_id), presented, admin_only)
        raise LimitsUnavailable("the key kept changing while it was checked", retry_after_s=1)

    def _refusal(self, key_id: str, exc: RateLimited) -> None:
        """A request of ``key_id`` refused by its limits: counted, and the key's next checks
        are waited for (:data:`REFUSED_HOLD_S`)."""
        self.metrics.requests.labels(key_id, exc.extra["limit"]).inc()
        if self.refused_hold_s > 0:
            self._refused[key_id] = time.monotonic() + self.refused_hold_s

    def _judged(self, record: KeyRecord, answer: Admission) -> bool:
        """Redis's word on an admission: True admitted, False stale (the record changed:
        read it again, check again); revoked raises 401. (A refusal was raised already.)"""
        self.store_reachable = True
        if answer == "ok":
            return True
        if answer == "revoked":
            self._records.pop(record.id, None)
            raise _invalid("this API key was revoked")
        return False

    def _unreachable(self, record: KeyRecord, lease: str, metered: bool) -> bool:
        """Redis did not answer an admission: ``fail_closed`` refuses (503), ``fail_open``
        admits under this process's own count (True: the lease is the local limiter's)."""
        self._down()
        mode = "fail_closed" if self.fail_closed else "fail_open"
        self.metrics.store_errors.labels(mode).inc()
        if self.fail_closed:
            raise LimitsUnavailable(
                "rate limits cannot be checked (key store unreachable)", retry_after_s=1
            ) from None
        self.fallback.admit(record, lease, metered=metered)
        return True

    def admit_later(
        self,
        key_id: str,
        presented: str,
        admin_only: bool,
        lease: str,
        metered: bool,
        model: str | None,
    ) -> PendingAdmission | None:
        """The admission of a cached key with limits, sent to Redis without waiting for its
        answer (the fast lane's overlap, see the module); the record is verified here, as
        :meth:`_managed` does. None where the request waits for the answer first: the record
        is not cached or has no limits, the store is a file or a cluster, Redis failed a
        moment ago, the key was refused a moment ago (:data:`REFUSED_HOLD_S`), or the key
        may not use the path's ``model`` (the 429 comes before that 403)."""
        record = self._records.get(key_id)
        now = time.monotonic()
        if (
            record is None
            or not record.limited
            or not isinstance(self.store, RedisKeyStore)
            or now < self._store_down_until
        ):
            return None
        held = self._refused.get(key_id)
        if held is not None:
            if now < held:
                return None
            del self._refused[key_id]
        record = self._verify(record, presented, admin_only)
        if model is not None and not self.caller(record).may_use(model):
            return None
        sent = self.store.admit_later(record, lease, metered=metered)
        return PendingAdmission(self, sent, lease, metered) if sent is not None else None

    def start(self) -> None:
        """Start checking cached records of keys without limits (Redis only)."""
        if self.enabled and isinstance(self.store, RedisKeyStore) and self._sync_task is None:
            self._sync_task = asyncio.create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync()
            except Exception:  # never let the loop die; the next round tries again
                log.exception("key sync failed")
            await asyncio.sleep(SYNC_S)

    async def sync(self) -> None:
        """One round: push local usage, read every cached unlimited key's live revision, and
        drop records that changed (their next request fetches them again)."""
        assert isinstance(self.store, RedisKeyStore)
        started = time.monotonic()
        ids = [k for k, r in self._records.items() if not r.limited]
        counts, last = self._counts, self._last
        self._counts, self._last = {}, {}
        try:
            revs = await self.store.sync(ids, counts, last)
        except StoreDown:
            self._down()
            for k, n in counts.items():  # counted again next round
                self._counts[k] = self._counts.get(k, 0) + n
            self._last = {**last, **self._last}
            return
        for key_id, rev in revs.items():
            record = self._records.get(key_id)
            if record is not None and rev != record.rev:
                self._records.pop(key_id, None)
        self._verified_at = started
        self.store_reachable = True

    async def aclose(self) -> None:
        """Stop the sync loop, let leases being given back finish, then close the store."""
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
            await self.sync()  # the last usage counts
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=2.0)
        await self.store.aclose()

    def caller(self, record: KeyRecord) -> Caller:
        cached = self._callers.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        caller = record.caller()
        self._callers[record.id] = (record, caller)
        return caller

    def release_later(self, record: KeyRecord, lease: str, local: bool) -> None:
        """Give a lease back without holding up the connection (HTTP/1.1 keep-alive serves
        the next request only once this one's app call returns): a ZREM queued with this
        turn's commands, its reply read by a callback (no task per request), or where that
        cannot be, a task of its own. Either way a cancelled request still gives it back."""
        if not lease:
            return
        if local:
            self.fallback.release(record.id, lease)
            return
        sent: asyncio.Future[Any] | None = None
        if isinstance(self.store, RedisKeyStore):
            sent = self.store.release_soon(record, lease)
        if sent is not None:  # no task: the reply's callback reads a failure
            sent.add_done_callback(self._released)
        else:
            sent = asyncio.ensure_future(self.release(record, lease, local))
            sent.add_done_callback(self._releases.discard)
        self._releases.add(sent)

    def _released(self, reply: asyncio.Future[Any]) -> None:
        self._releases.discard(reply)
        if not reply.cancelled() and reply.exception() is not None:
            self._down()  # the lease expires by itself (LEASE_TTL_S)

    async def release(self, record: KeyRecord, lease: str, local: bool) -> None:
        if not lease:
            return
        if local:
            self.fallback.release(record.id, lease)
            return
        try:
            await self.store.release(record, lease)
        except StoreDown:
            self._down()  # the lease expires by itself (LEASE_TTL_S)


class _Stale(Exception):
    """The key's record changed elsewhere while its overlapped check was on its way: what the
    request did with the old record is dropped, and the request is checked again from the
    start (the record read again). Never leaves :class:`AccessMiddleware`."""


class PendingAdmission:
    """A managed key's limit check on its way to Redis while the request goes on (the fast
    lane's overlap, see the module). :meth:`wait` reads Redis's answer once and says it to
    every later caller: it returns once the key is admitted, or raises the refusal (429,
    401 revoked, 503 ``fail_closed``) or :class:`_Stale`. Read from the request's own task
    (the pipeline before any work leaves the process, the first response message, the
    middleware on every way out)."""

    __slots__ = (
        "_access",
        "_error",
        "_sent",
        "_token",
        "gauge",
        "lease",
        "local",
        "metered",
        "settled",
    )

    def __init__(self, access: Access, sent: SentAdmit, lease: str, metered: bool) -> None:
        self._access = access
        self._sent = sent
        self._token = lease
        self.metered = metered
        #: only a metered request of a key with max_concurrent holds a lease to give back
        self.lease = lease if metered and sent.record.max_concurrent else ""
        self.settled = False
        self._error: BaseException | None = None
        #: True: admitted under this process's own count (Redis down, ``fail_open``)
        self.local = False
        #: the key's in-flight gauge, once admitted
        self.gauge: Gauge | None = None

    @property
    def record(self) -> KeyRecord:
        return self._sent.record

    async def wait(self) -> None:
        if not self.settled:
            self._error = await self._settle()
            self.settled = True
        if self._error is not None:
            raise self._error

    async def _settle(self) -> BaseException | None:
        access, record = self._access, self._sent.record
        store = access.store
        assert isinstance(store, RedisKeyStore)
        try:
            try:
                answer = await store.answer(self._sent)
            except StoreDown:
                self.local = access._unreachable(record, self._token, self.metered)
            else:
                if not access._judged(record, answer):
                    return _Stale()
        except RateLimited as exc:
            access._refusal(record.id, exc)
            return exc
        except PrismError as exc:  # revoked (401), or fail_closed (503)
            return exc
        self.gauge = access.metrics.admitted(record.id)
        return None

    def finish(self) -> None:
        """After the response (or the failure): the gauge down, the lease back, if admitted."""
        if self.gauge is not None:
            self.gauge.dec()
            self.gauge = None
            self._access.release_later(self.record, self.lease, self.local)

    def abandon(self) -> None:
        """The request was cancelled (the caller left): :meth:`finish` if the answer was read;
        else once Redis answers, the lease goes back unless the answer says none was taken."""
        if self.settled:
            self.finish()
            return
        self._sent.reply.add_done_callback(self._answered_late)

    def _answered_late(self, reply: asyncio.Future[Any]) -> None:
        taken = True  # a reply lost to the cancellation says nothing: give back (ZREM is safe)
        if not reply.cancelled():
            # read even when no lease is held: an error nobody reads is logged as lost
            taken = reply.exception() is not None or int(reply.result()[0]) == 1
        if taken and self.lease:
            self._access.release_later(self.record, self.lease, False)


class AccessMiddleware:
    """The per-route ASGI middleware that applies :class:`Access` (see the module doc).
    ``overlap``: the fast lane's stack, where a cached key's limit check overlaps the
    request's own work (:class:`PendingAdmission`); Litestar's routes wait for it first."""

    def __init__(self, app: ASGIApp, access: Access, *, overlap: bool = False) -> None:
        self.app = app
        self.access = access
        self.overlap = overlap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        opt = handler.opt if handler is not None else {}
        if scope["type"] != "http" or opt.get("public") or scope["path"].startswith("/schema"):
            await self.app(scope, receive, send)
            return
        access = self.access
        admin_only = bool(opt.get("admin"))
        presented = _presented_key(scope)
        if presented is None:
            if admin_only or access.required:
                raise _missing()
            await self.app(scope, receive, send)
            return
        key_id = id_in(presented)
        model = (scope.get("path_params") or {}).get("model")
        model = model.partition("@")[0] if isinstance(model, str) else None
        if key_id is None:
            caller = access._bootstrap(presented, admin_only)
            if caller is None:
                raise _invalid()
            scope["state"][CALLER_KEY] = caller
            record_of(scope).caller = caller
            if model is not None:
                caller.check_model(model)
            await self.app(scope, receive, send)
            return
        metered = bool(opt.get("metered"))
        lease = random_hex()
        if self.overlap:
            pending = access.admit_later(key_id, presented, admin_only, lease, metered, model)
            if pending is not None:
                await self._overlapped(pending, presented, admin_only, model, scope, receive, send)
                return
        await self._admitted_first(
            key_id, presented, admin_only, lease, metered, model, scope, receive, send
        )

    async def _admitted_first(
        self,
        key_id: str,
        presented: str,
        admin_only: bool,
        lease: str,
        metered: bool,
        model: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """A managed key checked (one round trip when it has limits), then the app;
        ``model``: the path's model, which the key must be allowed (else 403)."""
        access = self.access
        try:
            record, local = await access._managed(key_id, presented, admin_only, lease, metered)
        except RateLimited as exc:
            access._refusal(key_id, exc)
            raise
        caller = access.caller(record)
        # only a metered request of a key with max_concurrent holds a lease to give back
        if not (metered and record.max_concurrent):
            lease = ""
        scope["state"][CALLER_KEY] = caller
        record_of(scope).caller = caller
        try:
            if model is not None:
                caller.check_model(model)
        except BaseException:
            access.release_later(record, lease, local)
            raise
        gauge = access.metrics.admitted(record.id)
        try:
            await self.app(scope, receive, send)
        finally:
            gauge.dec()
            access.release_later(record, lease, local)

    async def _overlapped(
        self,
        pending: PendingAdmission,
        presented: str,
        admin_only: bool,
        model: str | None,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """The app runs while the key's check is on its way; the pipeline waits for it before
        any work leaves the process, the response before it starts, and every way out of
        here reads it first: a refusal wins over whatever the app raised, and leaves no trace
        of the app's run on the request's record."""
        caller = self.access.caller(pending.record)
        scope["state"][CALLER_KEY] = caller
        request = record_of(scope)
        request.caller = caller
        request.admission = pending

        async def answered(message: Message) -> None:
            if message["type"] == "http.response.start":
                await pending.wait()
            await send(message)

        failure: Exception | None = None
        try:
            await self.app(scope, receive, answered)
        except Exception as exc:
            failure = exc
        except BaseException:  # cancelled: the caller left
            pending.abandon()
            raise
        try:
            await pending.wait()
        except _Stale:
            _forget_run(scope)
            key_id = pending.record.id
            self.access.forget(key_id)  # read the record again, check it again
            lease = random_hex()
            await self._admitted_first(
                key_id, presented, admin_only, lease, pending.metered, model, scope, receive, send
            )
            return
        except Exception:  # refused: the request did nothing
            _forget_run(scope)
            raise
        except BaseException:
            pending.abandon()
            raise
        try:
            if failure is not None:
                raise failure
        finally:
            pending.finish()


def _forget_run(scope: Scope) -> None:
    """What a request did under a key check that then refused it, or found its record changed:
    its record begun again, its caller gone."""
    restart_record(scope)
    del scope["state"][CALLER_KEY]


def access_middleware(access: Access, *, overlap: bool = False) -> Any:
    """The middleware factory Litestar takes (``None`` when authentication is off);
    ``overlap`` for the fast lane's stack (:class:`AccessMiddleware`)."""
    if not access.enabled:
        return None

    def factory(app: ASGIApp) -> ASGIApp:
        return AccessMiddleware(app, access, overlap=overlap)

    return factory


__all__ = [
    "CALLER_KEY",
    "Access",
    "AccessMiddleware",
    "PendingAdmission",
    "access_middleware",
    "caller_of",
    "key_id_of",
]
