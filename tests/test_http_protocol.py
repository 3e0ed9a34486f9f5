"""The serving protocol: uvicorn's httptools protocol with each response's head and body in
one write, on a real uvicorn server and real sockets; a head whose body is late still leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from prism.gateway.http_protocol import PrismHttpProtocol
from tests.support import free_port

#: every write a connection's real transport received, per connection
WRITES: list[list[bytes]] = []


class _Recording:
    """The real transport, recording what reaches it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []
        WRITES.append(self.writes)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _RecordedProtocol(PrismHttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recording(transport))  # type: ignore[arg-type]


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/late":  # the head now, the body a while later
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"late", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    answer = b"echo:" + body
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(answer)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=_RecordedProtocol,
        log_level="warning",
        lifespan="off",
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(1000):  # uvicorn says it started with a flag, no event
        if srv.started:
            break
        await asyncio.sleep(0.01)
    else:
        raise RuntimeError("uvicorn did not start in 10 s")
    WRITES.clear()
    try:
        yield port
    finally:
        srv.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_each_response_leaves_in_one_write_on_a_kept_alive_connection(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        for n in range(3):
            body = f"request {n}".encode()
            writer.write(
                b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            head, answer = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert answer == b"echo:" + body
    finally:
        writer.close()
    (writes,) = WRITES
    assert len(writes) == 3  # one per response: head and body together
    assert all(
        w.startswith(b"HTTP/1.1 200 OK") and w.endswith(b"echo:request %d" % i)
        for i, w in enumerate(writes)
    )


async def test_a_head_whose_body_is_late_leaves_at_once(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        writer.write(b"GET /late HTTP/1.1\r\nhost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.4)  # before the body
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert b"late" in rest
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"ping")
        head, answer = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK") and answer == b"echo:ping"
    finally:
        writer.close()


async def test_a_malformed_request_still_gets_its_400(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # uvicorn answers, then closes
        assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    finally:
        writer.close()
