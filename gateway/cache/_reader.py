"""Hot-path commands to one Redis server on a few pipelined connections, replies by hiredis:
the cache's MGET, and the key store's limit script (EVALSHA) and lease release (ZREM), on one
reader that the runtime gives both (:meth:`PipelinedReader.share`).

A hit through Redis is one MGET. redis-py's asyncio client spends several times the round trip
itself around each command (a blocking pool's condition and timeout, connection checks,
per-command observability hooks), and under load a command queues for one of the pool's
connections. :class:`PipelinedReader` keeps :data:`CONNECTIONS` connections open and sends
commands without waiting for the replies before them (Redis answers a connection's commands in
order, so each reply resolves the oldest waiter). The commands of one turn of the event loop
go on one connection and leave in one write, and hiredis parses their replies from one read;
the next turn's commands take the next connection. The fast lane's limit check is written at
once instead (:meth:`PipelinedReader.send` with ``now``, its answer read later,
``gateway/auth.py``), so that Redis runs it while the request works. Its errors are
redis-py's (``ConnectionError``, ``TimeoutError``, ``ResponseError``), so the stores map them
as they map any other Redis failure. A connection that fails or times out is closed with everything waiting on it, and
the next command opens a new one.

Only the per-request commands, and only ``redis://`` (one server, TCP, optional user, password
and database): other writes, TLS, unix sockets and clusters stay on redis-py
(``shared_redis.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

#: connections one reader keeps to its server; their commands are pipelined
CONNECTIONS = 4


def readable(url: str) -> bool:
    """Whether :class:`PipelinedReader` can read from ``url`` (else redis-py does): one server
    over TCP, so never a cluster (``redis+cluster://``), TLS or a unix socket."""
    return urlsplit(url).scheme == "redis"


def pipelined_for(url: str, *, timeout_s: float) -> PipelinedReader | None:
    """A :class:`PipelinedReader` for ``url``, or None where redis-py must do it all."""
    return PipelinedReader(url, timeout_s=timeout_s) if readable(url) else None


def _command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        import hiredis

        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: commands sent this turn of the event loop, written together by :meth:`flush`
        self.outgoing: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        import hiredis
        from redis.exceptions import ResponseError

        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(ConnectionError("unexpected reply from Redis"))
                return
            future = self.waiting.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        from redis.exceptions import ConnectionError as RedisConnectionError

        self.closed = True
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                error = RedisConnectionError(f"{type(exc).__name__}: {exc}")
                future.set_exception(error)

    def send(self, command: bytes, *, now: bool = False) -> asyncio.Future[Any]:
        """Queued with the other commands of this turn of the event loop (:meth:`flush`);
        ``now``: written at once when nothing waits to be written before it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.waiting.append(future)
        if now and not self.outgoing and self.transport is not None:
            self.transport.write(command)
            return future
        if not self.outgoing:  # the first command of this turn of the loop: write them soon
            loop.call_soon(self.flush)
        self.outgoing.append(command)
        return future

    def flush(self) -> None:
        """The commands of one turn of the event loop in one write (one syscall, and Redis
        reads them in one go)."""
        commands, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(commands))


class PipelinedReader:
    """MGET from one Redis server (see the module)."""

    def __init__(self, url: str, *, timeout_s: float, connections: int = CONNECTIONS) -> None:
        from redis.asyncio.connection import parse_url

        if not readable(url):
            raise ValueError(f"not a redis:// url: {url!r}")
        self.timeout_s = timeout_s
        options = parse_url(url)
        self.host = str(options.get("host", "localhost"))
        self.port = int(options.get("port", 6379))
        hello: list[bytes] = []
        if options.get("password") is not None:
            user = options.get("username")
            auth = [b"AUTH", *([str(user).encode()] if user else []), options["password"].encode()]
            hello.append(_command(*auth))
        if options.get("db"):
            hello.append(_command(b"SELECT", str(options["db"]).encode()))
        self._hello = hello
        self._slots: list[_Connection | None] = [None] * connections
        self._opening: list[asyncio.Future[_Connection] | None] = [None] * connections
        self._next = 0
        #: the slot of the last command: while its connection has commands waiting for this
        #: turn's write, the next command joins them (:meth:`_slot`)
        self._last = 0
        #: users that each :meth:`aclose` it (:meth:`share`)
        self._users = 1

    def share(self) -> PipelinedReader:
        """This reader for one more user, which closes it as the first did: the connections
        close with the last user. The cache and the key store share one (the runtime's): one
        set of sockets, and a turn's queued commands of both in one write."""
        self._users += 1
        return self

    def _slot(self, *, join: bool = True) -> int:
        """The connection for the next command: with ``join``, the last one while it has
        commands waiting for this turn's write (one write, one read for all of them); else
        the next in turn."""
        conn = self._slots[self._last]
        if join and conn is not None and conn.outgoing and not conn.closed:
            return self._last
        slot = self._last = self._next
        self._next = (slot + 1) % len(self._slots)
        return slot

    async def mget(
        self, keys: Sequence[str], *, timeout_s: float | None = None
    ) -> list[bytes | None]:
        words = (k.encode() for k in keys)
        reply: list[bytes | None] = await self.execute(b"MGET", *words, timeout_s=timeout_s)
        return reply

    def send(
        self, *args: bytes, timeout_s: float | None = None, now: bool = False
    ) -> asyncio.Future[Any] | None:
        """One command sent without waiting for its reply: the future of what :meth:`execute`
        would return (or raise, within the same timeout); None when the connection it would
        go on is not open (:meth:`execute` opens it). The caller awaits the future, or
        cancels it.

        ``now``: written at once, on a connection of its own this turn: Redis runs it while
        the caller works (the fast lane's limit check: the script's ~15-30 us in Redis overlap
        the request's decision, on the other core). Queued with the cache read instead (one
        write and one read for both, but the script then runs while the request waits), a
        keyed Redis hit added 0.07 ms p50 over a keyless one, against 0.03-0.04 ms written at
        once (``bench/http_wrk.py``, median of 5 rounds at c=1). Else it leaves in this
        turn's write with the others (a lease given back)."""
        slot = self._slot(join=not now)
        conn = self._slots[slot]
        if conn is None or conn.closed:
            return None
        future = conn.send(_command(*args), now=now)
        timer = asyncio.get_running_loop().call_later(
            self.timeout_s if timeout_s is None else timeout_s, self._late, conn, future
        )
        future.add_done_callback(lambda _: timer.cancel())
        return future

    async def execute(self, *args: bytes, timeout_s: float | None = None) -> Any:
        """One command (its arguments as bytes), its reply as hiredis gives it (what redis-py
        returns with hiredis installed); a Redis error reply raises ``ResponseError``.
        ``timeout_s``: this call's, where a sharer's differs from the reader's."""
        slot = self._slot()
        conn = self._slots[slot]
        if conn is None or conn.closed:
            conn = await self._connect(slot)
        future = conn.send(_command(*args))
        timer = asyncio.get_running_loop().call_later(
            self.timeout_s if timeout_s is None else timeout_s, self._late, conn, future
        )
        try:
            reply = await future
        finally:
            timer.cancel()
        return reply

    @staticmethod
    def _late(conn: _Connection, future: asyncio.Future[Any]) -> None:
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if not future.done():
            # the reply may still come, after others' replies: nothing on this connection
            # can be trusted now
            future.set_exception(RedisTimeoutError("Redis did not answer in time"))
            conn.fail(RedisTimeoutError("a read timed out"))

    async def _connect(self, slot: int) -> _Connection:
        opening = self._opening[slot]
        if opening is None:  # the first to find the slot empty opens it; others wait for it
            opening = self._opening[slot] = asyncio.ensure_future(self._open())
        try:
            conn = await asyncio.shield(opening)
        finally:
            if self._opening[slot] is opening and opening.done():
                self._opening[slot] = None
        self._slots[slot] = conn
        return conn

    async def _open(self) -> _Connection:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
                for command in self._hello:  # AUTH, SELECT: their answers must be OK
                    await conn.send(command)
        except BaseException as exc:
            if conn is not None:
                conn.fail(exc)
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError("connecting to Redis timed out") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            raise
        return conn

    async def aclose(self) -> None:
        """One user done (:meth:`share`); the last closes the connections."""
        self._users -= 1
        if self._users > 0:
            return
        for i, conn in enumerate(self._slots):
            if conn is not None:
                conn.fail(ConnectionError("closed"))
            self._slots[i] = None


__all__ = ["CONNECTIONS", "PipelinedReader", "pipelined_for", "readable"]
