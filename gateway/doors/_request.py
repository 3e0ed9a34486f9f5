"""``PrismRequest``: how every door reads a request body.

* ``Content-Encoding: gzip`` / ``deflate`` bodies are inflated (tritonclient and many HTTP
  clients compress large requests). The inflated size is held to the same limit as the body
  itself, so a small bomb cannot expand into gigabytes, and the work runs in a thread, so a
  large body does not stall the event loop. Any other coding is a 415 naming what is accepted.
* JSON is parsed once per request; anything that is not a JSON document (empty, truncated,
  invalid UTF-8, nested deeper than the parser's recursion limit) is a 400 ``malformed_body``.

The decoded body is kept on the connection, like Litestar's own ``Request.body``, so every
``Request`` built for the same call sees the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, Protocol

import anyio.to_thread
from litestar import Request
from litestar.exceptions import InternalServerException
from litestar.types import Empty

from prism.backends import ClientClosedRequest, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from prism.backends import _json as strict_json

#: Codings Prism inflates; ``identity`` (or no header) is the body as sent.
ACCEPTED_CODINGS = ("gzip", "deflate")
#: The ``limit`` when a handler sets none (Litestar's own default).
DEFAULT_LIMIT = 10 * 2**20
_CHUNK = 1 << 16
#: gzip members one body may concatenate (cat a.gz b.gz makes two; thousands are an attack)
MAX_GZIP_MEMBERS = 64
#: bodies larger than this are parsed off the event loop
PARSE_ON_THREAD = 256 * 1024


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decoded from ``coding`` (gzip or zlib-wrapped deflate), at most ``limit`` bytes.

    Raises :class:`PayloadTooLarge` as soon as the output passes ``limit`` (without producing
    the rest) and :class:`MalformedBody` for a corrupt, truncated or trailing-garbage stream.
    Concatenated gzip members (what ``cat a.gz b.gz`` makes) are one body, as in gzip(1).
    """
    out: list[bytes] = []
    size = 0
    rest = body
    first = True
    members = 0
    while first or (coding == "gzip" and rest[:2] == b"\x1f\x8b"):
        members += 1
        if members > MAX_GZIP_MEMBERS:  # each member copies the rest: bound the work
            raise MalformedBody(f"the body has more than {MAX_GZIP_MEMBERS} gzip members")
        member, rest = _inflate_one(rest, coding, limit - size, first)
        out.append(member)
        size += len(member)
        first = False
    if rest.strip(b"\x00"):
        raise MalformedBody(f"the body has bytes after its {coding} data")
    return b"".join(out)


def _inflate_one(data: bytes, coding: str, limit: int, first: bool) -> tuple[bytes, bytes]:
    """One compressed member: (its bytes, what follows it)."""
    # wbits 47 (32 + 15) reads gzip or zlib headers; raw deflate (-15) is what some clients
    # send as "deflate" despite the RFC, so it is tried when the zlib header is missing.
    attempts = (47, -15) if coding == "deflate" and first else (47,)
    for n, wbits in enumerate(attempts):
        inflater = zlib.decompressobj(wbits)
        out: list[bytes] = []
        size = 0
        try:
            chunk = inflater.decompress(data, _CHUNK)
            while True:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the {coding} body inflates to more than the body limit")
                out.append(chunk)
                if inflater.eof or not inflater.unconsumed_tail:
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        except zlib.error as exc:
            if n + 1 < len(attempts):
                continue
            raise MalformedBody(f"the body is not valid {coding} ({exc})") from exc
        if not inflater.eof:
            raise MalformedBody(f"the {coding} body is truncated")
        return b"".join(out), inflater.unused_data
    raise AssertionError("unreachable")  # pragma: no cover


def parse_json(body: bytes) -> Any:
    """The JSON document in ``body``; a 400 :class:`MalformedBody` for anything else."""
    if not body.strip():
        raise MalformedBody("the request body is empty; send a JSON object")
    try:
        return strict_json.loads(body)
    except ValueError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from exc


class BodyRequest(Protocol):
    """What a door's answer reads of a request: Litestar's :class:`PrismRequest`, or the
    fast lane's (``gateway/lane.py``), which holds a body it already read the same way."""

    @property
    def scope(self) -> Any: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def body(self) -> bytes: ...

    async def json(self) -> Any: ...


class PrismRequest(Request[Any, Any, Any]):
    """Litestar's request with content codings and strict JSON parsing (see the module)."""

    async def body(self) -> bytes:
        if self._body is Empty:
            state = self._connection_state
            if state.body is Empty:
                try:
                    raw = b"".join([chunk async for chunk in self.stream()])
                except InternalServerException as exc:  # Litestar's word for a disconnect
                    if "disconnect" not in str(exc.detail):
                        raise
                    raise ClientClosedRequest("the client closed the connection mid-body") from exc
                # every Content-Encoding line counts: two "gzip" lines mean gzip twice
                codings = [
                    c.strip().lower()
                    for line in self.headers.getall("content-encoding", [])
                    for c in line.split(",")
                    if c.strip().lower() not in ("", "identity")
                ]
                coding = ", ".join(codings)
                if coding:
                    if coding not in ACCEPTED_CODINGS:
                        raise UnsupportedMediaType(
                            f"Content-Encoding {coding!r} is not supported; "
                            f"use {' or '.join(ACCEPTED_CODINGS)}",
                            headers={"Accept-Encoding": ", ".join(ACCEPTED_CODINGS)},
                        )
                    limit = self.route_handler.resolve_request_max_body_size() or DEFAULT_LIMIT
                    raw = await anyio.to_thread.run_sync(inflate, raw, coding, limit)
                state.body = raw
            self._body = state.body
        return self._body

    async def json(self) -> Any:
        if self._json is Empty:
            state = self._connection_state
            if state.json is Empty:
                body = await self.body()
                # a big document parses on a worker thread: 14 MiB of JSON is ~50 ms of
                # work the event loop (and every other request's health probe) should not wait on
                big = len(body) > PARSE_ON_THREAD
                state.json = (
                    await anyio.to_thread.run_sync(parse_json, body) if big else parse_json(body)
                )
            self._json = state.json
        return self._json


__all__ = ["ACCEPTED_CODINGS", "BodyRequest", "PrismRequest", "inflate", "parse_json"]
