"""uvicorn's httptools protocol, writing each response's head and body as one segment.

uvicorn writes a response's head when the app sends ``http.response.start`` and its body on
``http.response.body``: two ``send`` system calls and two TCP segments per response, and two
wake-ups of the client, on a machine whose cores the clients share. The protocol here gives
uvicorn a transport that holds a response head back until the next write (the body, sent
right after it in the same step of the event loop) and writes both at once. A head whose
body does not follow in that step (a streamed response waiting for its first chunk, or
``100 Continue``) still leaves on the loop's next turn, and closing the connection writes a
held head first, so nothing waits on the hold and nothing is lost.

Measured with py-spy on the KServe door under wrk at c=64, uvicorn's two writes were the
largest single cost of the process outside the app (``RequestResponseCycle.send``, 9%).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadWithBody:
    """A transport that holds a response head (what uvicorn writes for
    ``http.response.start``: ``HTTP/1.x ...`` through the blank line) for the write that
    follows it; everything else passes straight through."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + bytes(data))
        elif data[:7] == b"HTTP/1." and data[-4:] == b"\r\n\r\n":
            self._head = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self._flush()
        self._transport.writelines(lines)

    def _flush(self) -> None:
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = len(self._head) if self._head is not None else 0
        return int(self._transport.get_write_buffer_size()) + held

    def __getattr__(self, name: str) -> Any:  # the rest of the transport, as it is
        return getattr(self._transport, name)


class PrismHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` on a transport that writes each head with its body."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_HeadWithBody(transport, self.loop))  # type: ignore[arg-type]


__all__ = ["PrismHttpProtocol"]
