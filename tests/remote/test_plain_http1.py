"""The lean HTTP/1.1 client of plain http:// upstreams, against real servers on loopback.

Each server here is a few lines of raw asyncio that misbehave in one precise way (closes an
idle connection, answers in chunks, trickles, resets half-way), so every edge of the client's
connection handling is exercised on a real socket: nothing of the client is mocked.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import uvloop

from prism.backends import BackendUnavailable, InputItem, OpenAISpec, Task, build_backend
from prism.backends._plain_http1 import Http1Pool, UpstreamResponse, handles
from tests.upstream import Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = b'{"ok":true}'


def ok(body: bytes = ANSWER, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Server:
    """A raw asyncio server that counts connections (all, and open at once)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and Content-Length body); b"" at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests += 1
        return head + body


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., Http1Pool]]:
    made: list[Http1Pool] = []

    def _make(url: str, max_connections: int = 4) -> Http1Pool:
        pool = Http1Pool(url, max_connections=max_connections)
        made.append(pool)
        return pool

    yield _make
    for p in made:
        await p.aclose()


async def post(pool: Http1Pool, timeout_s: float = 2.0, grace_s: float = 1.0) -> UpstreamResponse:
    return await pool.exchange(
        "POST",
        "/x",
        content=b'{"a":1}',
        timeout_s=timeout_s,
        ends_by=time.perf_counter() + timeout_s + grace_s,
    )


def test_which_urls_it_takes() -> None:
    assert handles("http://h:1") and handles("http://h:1/v1")
    assert not handles("https://h:1") and not handles("http://u:p@h:1")
    assert not handles("http://h:1/?q=1") and not handles("grpc://h:1")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN, "b": Infinity}',
        '\ufeff{"a":1}'.encode(),
        '{"a":"x"}'.encode("utf-16"),
        b'{"a":"\\ud800"}',
        b'{"n": 123456789012345678901234567890}',
        b"[1.5e300, -0.0, 1e-7]",
        b'{"a":1,"a":2}',
        b"not json",
        b"",
        b"[" * 100_000,
    ],
)
def test_json_reads_a_body_exactly_as_httpx_does(body: bytes) -> None:
    def outcome(read: Callable[[], object]) -> str:
        try:
            return repr(read())
        except (ValueError, RecursionError) as exc:
            return type(exc).__name__

    ours = UpstreamResponse(200, "OK", {}, body)
    assert outcome(ours.json) == outcome(lambda: httpx.Response(200, content=body).json())


async def test_keep_alive_one_socket_for_sequential_calls(pools) -> None:  # type: ignore[no-untyped-def]
    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request := await server.read_request(reader):
            assert request.startswith(b"POST /v1/x HTTP/1.1\r\n")
            assert b"\r\nContent-Length: 7\r\n" in request and request.endswith(b'{"a":1}')
            writer.write(ok())

    async with Server(keep) as server:
        pool = pools(server.url + "/v1")
        for _ in range(10):
            resp = await post(pool)
            assert (resp.status_code, resp.content) == (200, ANSWER)
            assert resp.headers["content-length"] == "11" and resp.json() == {"ok": True}
        assert server.connections == 1 and pool.open_count == 1


async def test_a_connection_the_server_closed_while_idle_is_not_used(pools) -> None:  # type: ignore[no-untyped-def]
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok())  # kept alive by its headers, closed right after (an idle timeout)

    async with Server(once) as server:
        pool = pools(server.url)
        for _ in range(3):
            assert (await post(pool)).content == ANSWER
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle
        assert server.connections == 3 and server.requests == 3


async def test_a_stale_connection_closed_under_a_request_is_retried_once_on_a_fresh_one(
    pools,
) -> None:  # type: ignore[no-untyped-def]
    # the server closes a kept-alive connection as its second request arrives, without a
    # byte of answer (the race of an idle timeout with our request): retried, and answered
    async def first_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok())
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request's head: hang up on it

    async with Server(first_only) as server:
        pool = pools(server.url)
        assert (await post(pool)).content == ANSWER
        assert (await post(pool)).content == ANSWER
        assert server.connections == 2  # the retry's fresh connection
        assert pool.open_count == 1


async def test_a_fresh_connection_closed_without_an_answer_is_not_retried(pools) -> None:  # type: ignore[no-untyped-def]
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    async with Server(hang_up) as server:
        pool = pools(server.url)
        with pytest.raises(httpx.RemoteProtocolError):
            await post(pool)
        assert server.requests == 1 and pool.open_count == 0


async def echo_length(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    while request := await server.read_request(reader):
        body = request.partition(b"\r\n\r\n")[2]
        writer.write(ok(b"%d %s" % (len(body), body[-4:])))


async def test_a_large_body_arrives_whole(pools) -> None:  # type: ignore[no-untyped-def]
    async with Server(lambda r, w: echo_length(server, r, w)) as server:
        pool = pools(server.url)
        body = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: written beside its head
        for _ in range(2):
            resp = await pool.exchange(
                "POST", "/x", content=body, timeout_s=5, ends_by=time.perf_counter() + 6
            )
            assert resp.content == b"%d tail" % len(body)
        assert server.connections == 1


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused(pools) -> None:  # type: ignore[no-untyped-def]
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (b'{"ok"', b":", b"true}"):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")

    async with Server(chunked) as server:
        pool = pools(server.url)
        for _ in range(3):
            assert (await post(pool)).json() == {"ok": True}
        assert server.connections == 1


async def test_a_body_without_length_ends_with_the_connection(pools) -> None:  # type: ignore[no-untyped-def]
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + ANSWER)
        await writer.drain()

    async with Server(until_close) as server:
        pool = pools(server.url)
        assert (await post(pool)).content == ANSWER
        assert (await post(pool)).content == ANSWER
        assert server.connections == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
async def test_a_compressed_answer_is_decoded(pools, encoding: str) -> None:  # type: ignore[no-untyped-def]
    import gzip
    import zlib

    packed = {
        "gzip": gzip.compress(ANSWER),
        "deflate": zlib.compress(ANSWER),
        "raw deflate": zlib.compress(ANSWER)[2:-4],
    }[encoding]
    name = encoding.split()[-1].encode()

    async def compressed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            writer.write(ok(packed, b"Content-Encoding: %s\r\n" % name))

    async with Server(compressed) as server:
        pool = pools(server.url)
        assert (await post(pool)).content == ANSWER
        assert (await post(pool)).content == ANSWER


async def test_a_trickling_answer_is_cut_off_at_the_deadline_and_its_socket_closed(pools) -> None:  # type: ignore[no-untyped-def]
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)  # always progress: no per-read timeout fires

    async with Server(trickle) as server:
        pool = pools(server.url)
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            await post(pool, timeout_s=0.2, grace_s=0.3)
        assert 0.45 < time.perf_counter() - started < 1.5  # deadline + grace, no later
        assert pool.open_count == 0
        await asyncio.sleep(0.2)
        assert server.open == 0  # the server saw the close


async def test_a_silent_upstream_fails_on_the_phase_timeout(pools) -> None:  # type: ignore[no-untyped-def]
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(10)

    async with Server(silent) as server:
        pool = pools(server.url)
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            await post(pool, timeout_s=0.2, grace_s=5)
        assert time.perf_counter() - started < 1  # no byte for timeout_s: no need to wait more
        assert pool.open_count == 0


async def test_a_reset_in_the_middle_of_an_answer_fails_and_the_socket_is_not_reused(
    pools,
) -> None:  # type: ignore[no-untyped-def]
    async def reset_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = server.connections == 1
        while await server.read_request(reader):
            if first:
                writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"half')
                await writer.drain()
                await asyncio.sleep(0.05)
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()  # RST
                return
            writer.write(ok())

    async with Server(reset_first) as server:
        pool = pools(server.url)
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await post(pool)
        assert pool.open_count == 0
        assert (await post(pool)).content == ANSWER
        assert server.connections == 2


async def test_a_malformed_answer_is_a_protocol_error_and_closes_the_socket(pools) -> None:  # type: ignore[no-untyped-def]
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await asyncio.sleep(1)

    async with Server(garbage) as server:
        pool = pools(server.url)
        with pytest.raises(httpx.RemoteProtocolError):
            await post(pool)
        assert pool.open_count == 0


async def test_max_connections_holds_under_concurrency(pools) -> None:  # type: ignore[no-untyped-def]
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            await asyncio.sleep(0.02)
            writer.write(ok())

    async with Server(slow) as server:
        pool = pools(server.url, max_connections=3)
        answers = await asyncio.gather(*(post(pool, timeout_s=5) for _ in range(40)))
        assert all(a.content == ANSWER for a in answers)
        assert server.peak <= 3 and server.connections <= 3 and pool.open_count <= 3


async def test_waiting_for_a_connection_is_bounded_by_the_timeout(pools) -> None:  # type: ignore[no-untyped-def]
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader):
            await asyncio.sleep(0.5)
            writer.write(ok())

    async with Server(slow) as server:
        pool = pools(server.url, max_connections=1)
        results = await asyncio.gather(
            post(pool, timeout_s=2), post(pool, timeout_s=0.1), return_exceptions=True
        )
        assert not isinstance(results[0], BaseException)
        assert isinstance(results[1], httpx.PoolTimeout)


async def test_refused_is_a_connect_error(pools) -> None:  # type: ignore[no-untyped-def]
    from tests.support import free_port

    pool = pools(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(httpx.ConnectError):
        await post(pool)
    assert pool.open_count == 0


async def test_aclose_lets_running_calls_end_and_refuses_later_ones(upstream: Upstream) -> None:
    spec = OpenAISpec(backend="openai", url=upstream.url, remote_model="slow")
    backend = build_backend(spec, base_dir=".", name="closing")  # type: ignore[arg-type]
    await backend.start()
    items = [InputItem(text="a red circle")]
    calls = [
        asyncio.ensure_future(backend.infer(Task.EMBED, items, {}, timeout_s=5)) for _ in range(3)
    ]
    await asyncio.sleep(0.05)  # on the wire (the upstream takes slow_s = 0.3 s)
    await backend.aclose()
    for out in await asyncio.gather(*calls):
        assert out[0]["embedding"].shape == (8,)
    with pytest.raises(BackendUnavailable):
        await backend.infer(Task.EMBED, items, {}, timeout_s=5)


async def test_a_body_that_is_not_json_holds_no_connection(upstream: Upstream) -> None:
    spec = OpenAISpec(backend="openai", url=upstream.url, remote_model="ok", max_connections=2)
    backend = build_backend(spec, base_dir=".", name="nan")  # type: ignore[arg-type]
    await backend.start()
    try:
        with pytest.raises(ValueError):
            await backend.call("POST", "/embeddings", json_body={"x": float("nan")}, timeout_s=1)  # type: ignore[attr-defined]
        assert backend._slots._value == 2  # type: ignore[attr-defined]
    finally:
        await backend.aclose()


def test_on_uvloop_as_prism_serve_runs_it() -> None:
    # prism serve runs on uvloop, whose transports are not asyncio's classes
    async def main() -> None:
        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = True
            while await server.read_request(reader):
                writer.write(ok())
                await writer.drain()
                if not first:  # the stale-connection retry, on uvloop's transports too
                    await reader.readuntil(b"\r\n\r\n")
                    return
                first = False

        async with Server(keep) as server:
            pool = Http1Pool(server.url, max_connections=2)
            try:
                for _ in range(4):
                    assert (await post(pool)).content == ANSWER
                answers = await asyncio.gather(*(post(pool) for _ in range(8)))
                assert all(a.content == ANSWER for a in answers)
                assert server.peak <= 2
            finally:
                await pool.aclose()
        async with Server(lambda r, w: echo_length(server2, r, w)) as server2:
            pool = Http1Pool(server2.url, max_connections=2)
            try:
                body = b"x" * 300_000 + b"tail"
                resp = await pool.exchange(
                    "POST", "/x", content=body, timeout_s=5, ends_by=time.perf_counter() + 6
                )
                assert resp.content == b"%d tail" % len(body)
            finally:
                await pool.aclose()

    uvloop.run(main())
