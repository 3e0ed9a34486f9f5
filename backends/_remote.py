"""What every remote backend shares: a pooled client, deadlines, error mapping, health probes.

One pooled client per upstream replica keeps connections alive (bounded by the spec's
``max_connections``): for a plain ``http://`` upstream the lean HTTP/1.1 client of
:mod:`backends._plain_http1` (the hot path: a fraction of httpx's CPU per call), for anything
else (``https://``...) :class:`httpx.AsyncClient`. Both fail with httpx's exception classes.
Every call runs under the caller's deadline (``timeout_s``), and every foreign failure is
mapped into Prism's exception tree right here, at the boundary:

================================== ==================================================
what happened                      raised
================================== ==================================================
deadline passed, read/write timeout :class:`BackendTimeout` (504, retryable)
refused, reset, closed, DNS         :class:`BackendUnavailable` (502, retryable)
upstream 5xx                        :class:`BackendError` (502, retryable)
upstream 408 / 429                  :class:`UpstreamBusy` (503 + its Retry-After, retryable)
upstream 401 / 403 / 404            :class:`UpstreamRefused` (502, retryable elsewhere)
other upstream 4xx                  :class:`UpstreamRejected` (502, not retryable)
not JSON / wrong shapes             :class:`BackendError` "upstream answered garbage"
================================== ==================================================

A probe task started in :meth:`RemoteBackend.start` refreshes a cached health flag every
``health_interval_s``; :meth:`health` only reads it, so readiness checks and breakers cost no
network round trip. Calls also update it (a refused connection marks the upstream down).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import functools
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import msgspec

from ._base import Backend
from ._errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ModelTimeout,
    PrismError,
    QueueTimeout,
    UpstreamBusy,
    UpstreamRefused,
    UpstreamRejected,
)
from ._plain_http1 import Http1Pool, UpstreamResponse, handles

log = logging.getLogger("prism.remote")

#: how long an exchange may outlive its caller's deadline before it is closed (seconds)
EXCHANGE_GRACE_S = 1.0
#: how long aclose waits for running exchanges to end by themselves (seconds)
CLOSE_GRACE_S = 2.0
#: a call without a deadline of its own still ends (seconds)
DEFAULT_TIMEOUT_S = 60.0
#: how much of an upstream's error message a caller gets to see
MAX_UPSTREAM_MESSAGE = 300
#: connections per pooled client. httpcore's pool scans every connection (a syscall each)
#: and every waiting request on each request, which is quadratic under load: at 64
#: concurrent calls one pool of 64 ran 6x slower than at 8. Several small pools, each call
#: on the least busy one, keep that scan short.
SHARD_CONNECTIONS = 8


class ProbeAnswer(Protocol):
    """What a probe reads of an answer (:class:`httpx.Response` or :class:`UpstreamResponse`)."""

    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


class ProbeClient(Protocol):
    """What a probe calls: ``httpx.AsyncClient.get`` or :meth:`Http1Pool.get`."""

    async def get(self, url: str, *, timeout: float) -> ProbeAnswer: ...  # noqa: ASYNC109 (httpx's name)


_encode_json = msgspec.json.Encoder().encode
#: the encoder httpx's ``json=`` uses: it refuses NaN and infinities, which are not JSON
_STRICT_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_bytes(doc: Any) -> bytes:
    """A request body as compact UTF-8 JSON (both clients send bodies made here). msgspec
    makes it (the stdlib encoder was 3% of a remote miss's CPU), but it writes NaN and
    infinities as ``null``: a body with a ``null`` in it is made again by the stdlib's
    encoder, which raises ``ValueError`` for them, as httpx's ``json=`` does."""
    body = _encode_json(doc)
    if b"null" in body:
        return _STRICT_ENCODER.encode(doc).encode()
    return body


_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class RemoteStats:
    """Counters the metrics endpoint reads at scrape time (outcome = "ok" or an error code)."""

    calls: Counter[str] = field(default_factory=Counter)
    latency_s_sum: float = 0.0
    latency_count: int = 0

    def record(self, outcome: str, seconds: float) -> None:
        self.calls[outcome] += 1
        self.latency_s_sum += seconds
        self.latency_count += 1


def _upstream_message(resp: UpstreamResponse) -> str:
    """The upstream's own error text ({"error": "..."}, OpenAI's or plain), shortened."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
    else:
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            err = err.get("message") or err.get("detail") or err
        text = err if isinstance(err, str) else json.dumps(err)
    return text[:MAX_UPSTREAM_MESSAGE] or resp.reason_phrase


def _retry_after_s(value: str | None) -> int:
    """An upstream's Retry-After (seconds or an HTTP date) as whole seconds, at least 1."""
    if value is None:
        return 1
    value = value.strip()
    if value.isdigit():
        return max(1, int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(1, math.ceil((when - datetime.datetime.now(datetime.UTC)).total_seconds()))


class RemoteBackend(Backend):
    """Base of the HTTP backends; subclasses implement ``infer`` with :meth:`call`."""

    #: GET this path; 200 = healthy
    probe_path: str = "/"

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        max_connections: int = 64,
        health_interval_s: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.max_connections = max_connections
        self.health_interval_s = health_interval_s
        self.headers = headers or {}
        self.stats = RemoteStats()
        #: httpx clients (upstreams the lean client does not handle: https...), or none
        self._clients: list[httpx.AsyncClient] = []
        #: the lean client of a plain http:// upstream (calls and probes), or None
        self._pool: Http1Pool | None = None
        self._probing: asyncio.Future[bool] | None = None
        #: each probe request's own httpx timeout (it is never cancelled: see :meth:`call`)
        self.probe_timeout_s = min(2.0, health_interval_s)
        #: exchanges still running, the ones callers stopped waiting for included
        self._pending: set[asyncio.Future[UpstreamResponse]] = set()
        #: when a probe last found the upstream up after it was down (time.monotonic)
        self.healthy_since: float | None = None
        #: one per connection the upstream may see (see :meth:`call`)
        self._slots = asyncio.Semaphore(max_connections)
        self._inflight: list[int] = []
        self._prober: asyncio.Task[None] | None = None
        self._healthy = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if handles(self.base_url):
            # one pool of max_connections (no shards: it scans nothing per request); probes
            # use it too, so the upstream never sees more sockets than allowed
            self._pool = Http1Pool(
                self.base_url, max_connections=self.max_connections, headers=self.headers
            )
            self._inflight = [0]
        else:
            self._start_httpx()
        # one probe now so readiness is right from the start, but never hold startup long:
        # an upstream that is down at boot may come up later, the probe loop will notice
        await self._probe_once(timeout_s=2.0)
        self._prober = asyncio.create_task(self._probe_loop(), name=f"{self.name}-probe")

    def _start_httpx(self) -> None:
        shards = -(-self.max_connections // SHARD_CONNECTIONS)
        # split max_connections exactly: the upstream never sees more sockets than allowed
        sizes = [
            self.max_connections // shards + (i < self.max_connections % shards)
            for i in range(shards)
        ]
        self._clients = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers=self.headers,
                limits=httpx.Limits(
                    max_connections=size,
                    max_keepalive_connections=size,
                    keepalive_expiry=30,
                ),
                timeout=DEFAULT_TIMEOUT_S,
                # an upstream is a peer inside the deployment, not a place to follow links to
                follow_redirects=False,
                trust_env=False,
            )
            for size in sizes
        ]
        self._inflight = [0] * shards

    @property
    def started(self) -> bool:
        """Started and not closed: calls may go out."""
        return self._pool is not None or bool(self._clients)

    @property
    def probe_client(self) -> ProbeClient:
        """The client probes and metadata reads use (one of the call pool's connections)."""
        if self._pool is not None:
            return self._pool
        return self._clients[0]

    async def health(self) -> bool:
        return self._healthy

    @property
    def healthy(self) -> bool:
        """The cached health flag (what the last probe or call found), without awaiting."""
        return self._healthy

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        # let running exchanges (and a probe) end on their own deadlines, briefly, rather
        # than cancel them at loop shutdown; then close the clients under whatever is left
        running: list[asyncio.Future[Any]] = [*self._pending]
        if self._probing is not None:
            running.append(self._probing)
        if running:
            await asyncio.wait(running, timeout=CLOSE_GRACE_S)
        clients, self._clients = self._clients, []  # a later call: BackendUnavailable
        pool, self._pool = self._pool, None
        for client in clients:
            await client.aclose()
        if pool is not None:
            await pool.aclose()
        self._healthy = False

    # --- health --------------------------------------------------------------------------

    async def probe(self, client: ProbeClient) -> bool:
        """One health check; subclasses may learn more (e.g. model metadata) on the way."""
        resp = await client.get(self.probe_path, timeout=self.probe_timeout_s)
        return resp.status_code == 200

    async def _probe_once(self, timeout_s: float) -> None:
        assert self.started
        was = self._healthy
        # like calls, a probe is never cancelled mid-flight (see :meth:`call`); a hung one is
        # waited for no longer than ``timeout_s`` and no second one starts while it hangs
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self.probe(self.probe_client))
            self._probing.add_done_callback(
                lambda t: None if t.cancelled() else t.exception()  # retrieved, always
            )
        try:
            async with asyncio.timeout(timeout_s):
                self._healthy = await asyncio.shield(self._probing)
        except (httpx.HTTPError, TimeoutError, ValueError, PrismError):
            self._healthy = False
        if self._healthy and not was:
            self.healthy_since = time.monotonic()
        if was != self._healthy:  # a way down is news an operator wants as a warning
            log.log(
                logging.INFO if self._healthy else logging.WARNING,
                "%s is %s",
                self.name,
                "healthy" if self._healthy else "unhealthy",
            )

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            try:
                await self._probe_once(timeout_s=self.health_interval_s)
            except Exception:  # a probe that dies silently leaves health stuck forever
                self._healthy = False
                log.exception("health probe of %s failed unexpectedly", self.name)

    # --- calls ---------------------------------------------------------------------------

    def garbage(self, why: str) -> BackendError:
        return BackendError(f"upstream {self.base_url} answered garbage: {why}")

    async def call(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float | None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> UpstreamResponse:
        """One request under a deadline; returns a 2xx response or raises a mapped error."""
        if not self.started:
            raise BackendUnavailable(f"{self.name} is not started")
        started = time.perf_counter()
        budget = timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S
        if json_body is not None:
            # encoded before a slot is taken: a body that cannot be JSON holds no connection
            content = _json_bytes(json_body)
            headers = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
            json_body = None
        # Wait for one of our max_connections here, not in httpx's pool: a deadline spent
        # waiting behind our own traffic is load (503, the upstream is fine), one spent on
        # the wire is the upstream's (504, its circuit counts it).
        try:
            if self._slots.locked():
                async with asyncio.timeout(budget):
                    await self._slots.acquire()
            else:  # a free slot is taken at once: no timer to set up and tear down
                await self._slots.acquire()
        except TimeoutError as exc:
            self.stats.record("queue_timeout", time.perf_counter() - started)
            raise QueueTimeout(
                f"{self.name}: all {self.max_connections} connections busy for {budget:.3f} s",
                retry_after_s=1,
            ) from exc
        pool = self._pool
        if pool is None and not self._clients:  # closed while this call waited for a slot
            self._slots.release()
            raise BackendUnavailable(f"{self.name} is closed")
        shard = (
            0
            if pool is not None
            else min(range(len(self._clients)), key=self._inflight.__getitem__)
        )
        self._inflight[shard] += 1
        waited = time.perf_counter() - started
        remaining = max(0.001, budget - waited)
        ends_by = time.perf_counter() + remaining + EXCHANGE_GRACE_S
        # The exchange is never cancelled mid-flight: httpcore 1.0.x can leak a pool slot for
        # good when a request is cancelled (encode/httpcore#1093), and enough of those wedge
        # the pool against a healthy upstream. When our deadline passes we stop waiting; the
        # exchange ends on httpx's own timeouts (the same deadline), and only then frees its
        # connection and our slot.
        # The lean client's exchange is a future its connection settles (answered, failed, or
        # timed out by its own timer by ``ends_by``): nothing of ours can cancel it either.
        exchange: asyncio.Future[UpstreamResponse]
        if pool is not None:
            exchange = pool.exchange(
                method,
                path,
                content=content or b"",
                headers=headers,
                timeout_s=remaining,
                ends_by=ends_by,
            )
        else:
            exchange = asyncio.ensure_future(
                self._exchange(
                    self._clients[shard],
                    method,
                    path,
                    content,
                    headers,
                    remaining,
                    ends_by,
                )
            )
        self._pending.add(exchange)
        exchange.add_done_callback(functools.partial(self._exchange_done, shard))
        try:
            try:
                resp = await self._await_exchange(exchange, remaining)
            except BackendTimeout as exc:
                if waited < 0.005:
                    raise
                # part of the deadline went to waiting behind our own calls: load as much as
                # the upstream's slowness, so it is not held against the upstream's circuit
                raise ModelTimeout(
                    f"{exc.detail} (after {waited * 1000:.0f} ms waiting for a connection)",
                    headers={"Retry-After": "1"},
                ) from exc
            self._raise_for_status(resp)
        except PrismError as exc:
            self.stats.record(exc.code, time.perf_counter() - started)
            raise
        self.stats.record("ok", time.perf_counter() - started)
        self._healthy = True
        return resp

    @staticmethod
    async def _exchange(
        client: httpx.AsyncClient,
        method: str,
        path: str,
        content: bytes | None,
        headers: dict[str, str] | None,
        timeout_s: float,
        ends_by: float,
    ) -> UpstreamResponse:
        """One request, read as a stream so that its whole life is bounded: httpx's timeouts
        bound each phase and each read, not the total, so an upstream trickling its body
        could otherwise hold a connection indefinitely. Past ``ends_by`` the response is
        closed cleanly (never cancelled) and the exchange fails as a read timeout."""
        request = client.build_request(
            method, path, content=content, headers=headers, timeout=timeout_s
        )
        response = await client.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
                if time.perf_counter() > ends_by:
                    raise httpx.ReadTimeout("the answer took longer than the deadline")
        finally:
            await response.aclose()
        # a plain (non-streamed) response with the body it sent, decoded as httpx would
        return UpstreamResponse.from_httpx(
            httpx.Response(
                response.status_code,
                headers=response.headers,
                content=b"".join(chunks),
                request=request,
                extensions=response.extensions,
            )
        )

    def _exchange_done(self, shard: int, exchange: asyncio.Future[UpstreamResponse]) -> None:
        """An exchange really ended (answered, failed, or timed out inside httpx)."""
        self._pending.discard(exchange)
        self._inflight[shard] -= 1
        self._slots.release()
        if not exchange.cancelled():
            exchange.exception()  # nobody may be waiting any more: mark it retrieved

    async def _await_exchange(
        self, exchange: asyncio.Future[UpstreamResponse], deadline: float
    ) -> UpstreamResponse:
        """Wait for the exchange for ``deadline`` seconds at most, never cancelling it (see
        :meth:`call`), with httpx's failures (both clients raise them) mapped into Prism's
        tree. One future that the exchange or a timer wakes: what ``asyncio.timeout`` around
        ``asyncio.shield`` does, without the task lookup, the wrapper and their callbacks."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        expired = False

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        def expire() -> None:
            nonlocal expired
            expired = True
            wake()

        exchange.add_done_callback(wake)
        timer = loop.call_later(deadline, expire)
        try:
            await woken  # a cancelled caller cancels this future only, not the exchange
        finally:
            timer.cancel()
            exchange.remove_done_callback(wake)
        # the deadline wins over what ended the exchange on its heels (a hung upstream's
        # read timeout strikes at the same moment)
        if expired or not exchange.done():
            raise BackendTimeout(f"upstream {self.base_url} did not answer within {deadline:.3f} s")
        try:
            return exchange.result()
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"upstream {self.base_url} timed out ({type(exc).__name__})"
            ) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            self._healthy = False
            raise BackendUnavailable(
                f"upstream {self.base_url} is unreachable ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(
                f"calling upstream {self.base_url} failed ({type(exc).__name__})"
            ) from exc

    def _raise_for_status(self, resp: UpstreamResponse) -> None:
        status = resp.status_code
        if status < 300:
            return
        where = f"upstream {self.base_url}"
        extra = {"upstream_status": status}
        message = _upstream_message(resp)
        if status in (408, 429):
            raise UpstreamBusy(
                f"{where} is busy ({status}): {message}",
                extra=extra,
                headers={"Retry-After": str(_retry_after_s(resp.headers.get("retry-after")))},
            )
        if status in (401, 403, 404):
            raise UpstreamRefused(f"{where} refused the request ({status}): {message}", extra=extra)
        if 400 <= status < 500:
            raise UpstreamRejected(
                f"{where} rejected the request ({status}): {message}", extra=extra
            )
        if status == 503:
            raise BackendUnavailable(f"{where} is unavailable (503): {message}", extra=extra)
        raise BackendError(f"{where} failed ({status}): {message}", extra=extra)

    def parse_json(self, resp: UpstreamResponse) -> Any:
        """The response's JSON, or the "garbage" error."""
        try:
            return resp.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.garbage("the body is not JSON") from exc
