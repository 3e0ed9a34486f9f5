"""A lean HTTP/1.1 client for plain ``http://`` upstreams: the remote backends' hot path.

httpx (on httpcore, h11 and anyio) spent about 1 ms of CPU per call here, most of the cost of
a remote miss: a URL parsed and a request model built per call, a state machine per event,
two socket writes per request (head, then body) and several layers of task and cancel-scope
bookkeeping. This module is an :class:`asyncio.Protocol` on the running loop (uvloop under
``prism serve``) with :class:`httptools.HttpResponseParser` (llhttp, which uvicorn already uses):
one ``transport.write`` per request, a response parsed in C as it arrives, a plain future per
exchange and no task at all while a kept-alive connection is free.

It keeps the semantics the backends rely on (:mod:`backends._remote`):

- at most ``max_connections`` sockets to the upstream, idle ones reused last-in first-out and
  closed after ``KEEPALIVE_EXPIRY_S``; a request that finds all of them busy waits its turn;
- every phase (waiting for a connection, connecting, each read) is bounded by the exchange's
  ``timeout_s``, and the whole exchange by ``ends_by``: an upstream trickling its body is cut
  off there;
- an exchange is never cancelled half-way: it ends answered or failed, and a connection whose
  exchange did not end cleanly (a timeout, a reset, a malformed answer) is closed, never
  reused;
- a kept-alive connection that the upstream closed before sending a single byte of the answer
  is retried once on a fresh connection (the rule browsers and Go's client follow: servers
  close idle connections at will, and a request that meets such a close cannot have been
  answered); a fresh connection that does the same is the upstream's failure;
- failures are raised as httpx's exception classes (``ConnectError``, ``ReadTimeout``,
  ``RemoteProtocolError``...), so the one error mapping of :mod:`backends._remote` covers
  both clients.

``https://`` and anything else it does not handle (credentials in the URL, a query) stay on
httpx: see :func:`handles`.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections import deque
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx
import msgspec

#: an idle kept-alive connection older than this is closed rather than reused (httpx's value)
KEEPALIVE_EXPIRY_S = 30.0
#: Prism's calls are small JSON or tensor bodies on a local network: compression would cost
#: more CPU than it saves, so none is asked for (an answer compressed anyway is still decoded)
_DEFAULT_HEADERS = {"Accept": "*/*", "User-Agent": "prism-gateway"}
_decode_json = msgspec.json.Decoder().decode
#: a body from this size on is written beside its head (uvloop: one writev), not copied after it
_COPY_LIMIT = 64 * 1024
#: the characters a request target may hold as they are (a query too, as httpx sends it);
#: everything else is %-escaped
_SAFE_PATH = "/%:@!$&'()*+,;=-._~?"


def handles(url: str) -> bool:
    """Whether this client can serve ``url``: plain http, a host, no credentials or query."""
    parts = urlsplit(url)
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and not parts.username
        and not parts.query
        and not parts.fragment
    )


class UpstreamResponse:
    """A complete answer: status, headers (lower-case names, repeats joined by ", "), body.

    The part of :class:`httpx.Response` the backends read, at a fraction of its cost; answers
    that came through httpx are converted (:meth:`from_httpx`), so backends see one type."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(
        self, status_code: int, reason_phrase: str, headers: dict[str, str], content: bytes
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content

    @classmethod
    def from_httpx(cls, resp: httpx.Response) -> UpstreamResponse:
        return cls(resp.status_code, resp.reason_phrase, dict(resp.headers.items()), resp.content)

    def json(self) -> Any:
        """The body's JSON, exactly as httpx's ``json.loads(content)`` reads it."""
        try:
            # msgspec parses a few times faster; what it refuses (NaN, a BOM, UTF-16, a lone
            # surrogate, an int past 64 bits) json then reads as httpx would, or refuses too
            return _decode_json(self.content)
        except (msgspec.DecodeError, RecursionError):
            return json.loads(self.content)  # bytes: json detects UTF-8/16/32 itself

    @property
    def text(self) -> str:
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = param.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip("\"'")
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")


class _Exchange:
    """One request on its way: the bytes to send, the future its caller holds, its clocks."""

    __slots__ = (
        "conn",
        "data",
        "ends_by",
        "future",
        "last_io",
        "phase",
        "pool",
        "retried",
        "timeout_s",
        "timer",
    )

    def __init__(
        self,
        pool: Http1Pool,
        data: bytes | tuple[bytes, bytes],
        timeout_s: float,
        ends_by: float,
        now: float,
    ) -> None:
        self.pool = pool
        self.data = data
        self.timeout_s = timeout_s
        self.ends_by = ends_by
        self.future: asyncio.Future[UpstreamResponse] = pool.loop.create_future()
        self.conn: _Connection | None = None
        self.retried = False
        #: what the exchange waits for now: names the timeout if it strikes
        self.phase = "pool"
        self.last_io = now
        self.timer: asyncio.TimerHandle | None = pool.loop.call_at(
            min(ends_by, now + timeout_s), self._check_time
        )

    def _check_time(self) -> None:
        """The exchange's one timer: a phase without progress for ``timeout_s``, or the whole
        exchange past ``ends_by``, fails it (and closes its connection, if it has one)."""
        self.timer = None
        if self.future.done():
            return
        now = self.pool.loop.time()
        if now >= self.ends_by:
            self.fail(httpx.ReadTimeout("the answer took longer than the deadline"))
        elif now >= self.last_io + self.timeout_s:
            error = {"pool": httpx.PoolTimeout, "connect": httpx.ConnectTimeout}.get(
                self.phase, httpx.ReadTimeout
            )
            self.fail(error(f"no progress for {self.timeout_s:.3f} s ({self.phase})"))
        else:  # progress since the timer was set: wait for the next bound
            self.timer = self.pool.loop.call_at(
                min(self.ends_by, self.last_io + self.timeout_s), self._check_time
            )

    def finish(self, resp: UpstreamResponse) -> None:
        self._stop_timer()
        if not self.future.done():
            self.future.set_result(resp)

    def fail(self, exc: Exception) -> None:
        """End the exchange with ``exc``; a connection it was using is closed, not reused."""
        self._stop_timer()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.close()
        self.pool.forget_waiter(self)
        if not self.future.done():
            self.future.set_exception(exc)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Connection(asyncio.Protocol):
    """One kept-alive socket; carries at most one exchange at a time (no pipelining)."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        #: exchanges this connection finished: a reused one may meet the upstream's idle close
        self.served = 0
        self.idle_since = 0.0
        self._reset_answer()

    def _reset_answer(self) -> None:
        self.got_bytes = False
        self.reason = b""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.headers_done = False
        self.status = 0
        self.complete = False
        self.keep_alive = False
        #: neither Content-Length nor chunked: the body ends when the upstream closes
        self.until_eof = False

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.pool.conns.add(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for (an idle timeout's 408): not reusable
            self.close()
            return
        self.got_bytes = True
        ex.last_io = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            ex.fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))
            return
        if self.complete:
            self._answered(ex)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost decides what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        ex, self.exchange = self.exchange, None
        retry = (
            ex is not None
            and not ex.future.done()
            and not self.got_bytes
            and self.served > 0
            and not ex.retried
        )
        if ex is not None and retry:
            # a kept-alive connection closed under a request before any byte of an answer:
            # the upstream's idle close raced our request; once more on a fresh connection
            # (opened before this one's place is given back, so no waiting request takes it)
            ex.conn = None
            ex.retried = True
            self.pool.open_for(ex)
        self._drop()
        if ex is None or retry or ex.future.done():
            return
        ex.conn = None
        if self.until_eof and self.headers_done and not self.complete:
            self._answered(ex, reuse=False)  # the close is the end of this body
        elif not self.got_bytes:
            ex.fail(httpx.RemoteProtocolError("the upstream closed without answering"))
        else:
            why = f" ({type(exc).__name__})" if exc else ""
            ex.fail(httpx.ReadError(f"the upstream closed in the middle of its answer{why}"))

    # --- httptools callbacks -----------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.status = status = self.parser.get_status_code()
        self.until_eof = (
            "content-length" not in self.headers
            and "chunked" not in self.headers.get("transfer-encoding", "").lower()
            and status >= 200
            and status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # informational: the answer follows on its heels
            self.reason, self.headers, self.headers_done = b"", {}, False
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True

    # --- the pool's side ---------------------------------------------------------------------

    def send(self, ex: _Exchange) -> None:
        assert self.transport is not None
        self.exchange = ex
        ex.conn = self
        ex.phase = "answer"
        ex.last_io = self.pool.loop.time()
        # head and body in one write (httpcore made two: two segments, two wake-ups of the
        # upstream); a large body goes as a second buffer of the same write, not copied
        if isinstance(ex.data, bytes):
            self.transport.write(ex.data)
        else:
            self.transport.writelines(ex.data)

    def _answered(self, ex: _Exchange, *, reuse: bool = True) -> None:
        headers, body = self.headers, b"".join(self.body)
        encoding = headers.get("content-encoding", "").strip().lower()
        reuse = reuse and self.keep_alive and not self.until_eof
        resp = UpstreamResponse(self.status, self.reason.decode("latin-1").strip(), headers, body)
        self.exchange = None
        ex.conn = None
        self.served += 1
        self._reset_answer()
        if encoding in ("gzip", "deflate", "x-gzip"):
            try:
                resp.content = _decompress(body, encoding)
            except zlib.error as exc:
                self.close()
                ex.fail(httpx.DecodingError(f"the answer's {encoding} body is corrupt: {exc}"))
                return
        # the connection goes back (or away) before the caller hears: the slot its caller frees
        # next can never make the pool open one socket more than max_connections
        if reuse and not self.closed:
            self.pool.release(self)
        else:
            self.close()
        ex.finish(resp)

    def close(self) -> None:
        if not self.closed:
            self._drop()
            if self.transport is not None:
                self.transport.abort()  # unsent bytes are worthless: the exchange is over

    def _drop(self) -> None:
        """Give this connection's place in the pool back, once."""
        if not self.closed:
            self.closed = True
            self.pool.lost(self)


class Http1Pool:
    """Kept-alive HTTP/1.1 connections to one ``http://`` upstream (see the module docstring).

    :meth:`exchange` starts a request and returns the future of its answer (or of its httpx
    exception); :meth:`get` is the same for a health probe, shaped like ``httpx.AsyncClient.get``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        headers: dict[str, str] | None = None,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
    ) -> None:
        parts = urlsplit(base_url)
        if not handles(base_url) or parts.hostname is None:
            raise ValueError(f"not a plain http:// URL: {base_url}")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.keepalive_expiry_s = keepalive_expiry_s
        merged = {"Host": parts.netloc, **_DEFAULT_HEADERS, **(headers or {})}
        self._headers = {k.lower(): (k, v) for k, v in merged.items()}
        self._head_block = _header_lines(self._headers.values())
        self._targets: dict[str, bytes] = {}
        self._blocks: dict[tuple[tuple[str, str], ...], bytes] = {}
        self._idle: list[_Connection] = []
        self._waiting: deque[_Exchange] = deque()
        #: sockets open or opening (idle, busy, connecting): never more than max_connections
        self.open_count = 0
        self.opened = 0  # sockets ever opened (tests and benchmarks read it)
        #: every connected socket, busy or idle
        self.conns: set[_Connection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- requests ----------------------------------------------------------------------------

    def exchange(
        self,
        method: str,
        path: str,
        *,
        content: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout_s: float,
        ends_by: float,
    ) -> asyncio.Future[UpstreamResponse]:
        """Send one request; the future ends with its answer or an httpx exception, by
        ``ends_by`` (``time.perf_counter()`` seconds, as the backends count) at the latest."""
        now = self.loop.time()
        # the loop's clock drives the timers; the caller's bound is in perf_counter seconds
        ex_ends_by = now + max(0.0, ends_by - time.perf_counter())
        try:
            data = self._request_bytes(method, path, content, headers)
        except ValueError as exc:
            ex = _Exchange(self, b"", timeout_s, ex_ends_by, now)
            ex.fail(httpx.LocalProtocolError(str(exc)))
            return ex.future
        ex = _Exchange(self, data, timeout_s, ex_ends_by, now)
        if self._closed:
            ex.fail(httpx.ConnectError("the client is closed"))
        else:
            self._dispatch(ex)
        return ex.future

    async def get(self, url: str, *, timeout: float) -> UpstreamResponse:  # noqa: ASYNC109 (httpx's name)
        """A GET for a health probe, bounded by ``timeout`` as a whole."""
        fut = self.exchange("GET", url, timeout_s=timeout, ends_by=time.perf_counter() + timeout)
        fut.add_done_callback(_retrieve)
        return await asyncio.shield(fut)  # a cancelled probe leaves its exchange to end alone

    def _request_bytes(
        self, method: str, path: str, content: bytes, extra: dict[str, str] | None
    ) -> bytes | tuple[bytes, bytes]:
        target = self._targets.get(path)
        if target is None:
            if len(self._targets) > 256:  # paths are a backend's few; never grow unbounded
                self._targets.clear()
            target = (self.base_path + quote(path, safe=_SAFE_PATH)).encode("ascii")
            self._targets[path] = target
        if extra:
            # a backend sends a few header sets (a content type, a tensor head's length):
            # each one's block is built once
            key = tuple(extra.items())
            block = self._blocks.get(key)
            if block is None:
                if len(self._blocks) > 256:
                    self._blocks.clear()
                merged = dict(self._headers)
                merged.update({k.lower(): (k, v) for k, v in extra.items()})
                block = self._blocks[key] = _header_lines(merged.values())
        else:
            block = self._head_block
        if content or method not in ("GET", "HEAD"):
            block += b"Content-Length: %d\r\n" % len(content)
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method.encode(), target, block)
        return head + content if len(content) < _COPY_LIMIT else (head, content)

    def _dispatch(self, ex: _Exchange) -> None:
        now = self.loop.time()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the others may expire
            if not conn.closed and now - conn.idle_since < self.keepalive_expiry_s:
                conn.send(ex)
                return
            conn.close()
        if self.open_count < self.max_connections:
            self.open_for(ex)
        else:
            self._waiting.append(ex)

    def open_for(self, ex: _Exchange) -> None:
        """Open a fresh connection for ``ex`` (a connection's place must be free for it)."""
        self.open_count += 1
        ex.phase = "connect"
        ex.last_io = self.loop.time()
        task = self.loop.create_task(self._connect(ex))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, ex: _Exchange) -> None:
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(ex.timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port
                )
        except asyncio.CancelledError:  # aclose
            self.open_count -= 1
            ex.fail(httpx.ConnectError("the client is closed"))
            raise
        except (OSError, TimeoutError) as exc:
            self.open_count -= 1
            self._wake()
            if isinstance(exc, TimeoutError):
                ex.fail(httpx.ConnectTimeout(f"connecting took over {ex.timeout_s:.3f} s"))
            else:
                ex.fail(httpx.ConnectError(str(exc) or type(exc).__name__))
            return
        if conn.closed or self._closed:
            conn.close()
            ex.fail(httpx.ConnectError("the connection closed as it opened"))
        elif ex.future.done():  # the exchange gave up while we connected: keep the socket
            self.release(conn)
        else:
            conn.send(ex)

    def release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: to a waiting request, or idle."""
        if self._closed:
            conn.close()
            return
        while self._waiting:
            ex = self._waiting.popleft()
            if not ex.future.done():
                conn.send(ex)
                return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def lost(self, conn: _Connection) -> None:
        """A connection is closing: its place goes to a waiting request, if any."""
        self.open_count -= 1
        self.conns.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._wake()

    def forget_waiter(self, ex: _Exchange) -> None:
        if self._waiting and ex in self._waiting:
            self._waiting.remove(ex)

    def _wake(self) -> None:
        while self._waiting and self.open_count < self.max_connections:
            ex = self._waiting.popleft()
            if not ex.future.done():
                self.open_for(ex)

    # --- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close every connection now; running exchanges fail (wait for them first)."""
        self._closed = True
        for ex in list(self._waiting):
            ex.fail(httpx.ConnectError("the client is closed"))
        for task in list(self._connecting):
            task.cancel()
        for conn in list(self.conns):
            if conn.exchange is not None:
                conn.exchange.fail(httpx.ReadError("the client closed during the exchange"))
            conn.close()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' connection_lost run


def _header_lines(headers: Any) -> bytes:
    """``Name: value`` lines for (name, value) pairs; CR or LF in either is refused (it would
    smuggle a header or a second request into ours)."""
    lines = []
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a future's exception retrieved: its caller may have stopped waiting for it."""
    if not fut.cancelled():
        fut.exception()


def _decompress(body: bytes, encoding: str) -> bytes:
    """A gzip or deflate body (never asked for, decoded anyway, as httpx would)."""
    if "gzip" in encoding:
        return zlib.decompress(body, 31)
    try:
        return zlib.decompress(body)  # deflate as the RFC has it: zlib-wrapped
    except zlib.error:
        return zlib.decompress(body, -15)  # the raw deflate some servers send
