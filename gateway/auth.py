"""API keys: ``Authorization: Bearer KEY`` (what OpenAI clients send) or ``x-api-key: KEY``.

Off when ``PRISM_API_KEYS`` is empty. Health, readiness and metrics stay open (probes and
scrapers carry no keys); handlers mark themselves with ``opt={"public": True}``.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from backends import Unauthorized


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    auth = connection.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return connection.headers.get("x-api-key")


def api_key_guard(keys: list[str]) -> Any:
    """A Litestar guard accepting any of ``keys`` (constant-time comparison)."""
    encoded = [k.encode() for k in keys]

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if not encoded or handler.opt.get("public") or connection.url.path.startswith("/schema"):
            return
        presented = _presented_key(connection)
        if presented is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not any(hmac.compare_digest(presented.encode(), k) for k in encoded):
            raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})

    return guard
