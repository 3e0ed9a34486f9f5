"""API keys: ``Authorization: Bearer KEY`` (what OpenAI clients send) or ``x-api-key: KEY``.

Off when ``PRISM_API_KEYS`` is empty. Health, readiness and metrics stay open (probes and
scrapers carry no keys); handlers mark themselves with ``opt={"public": True}``.

``PRISM_ADMIN_KEYS`` (like LiteLLM's master key): when set, ``/admin/*`` (handlers with
``opt={"admin": True}``) takes only those keys, and an inference key there is a 403; admin
keys work everywhere. When unset, admin endpoints take the API keys like the rest.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from prism.backends import Forbidden, Unauthorized


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    auth = connection.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return connection.headers.get("x-api-key")


def _matches(presented: str, keys: list[bytes]) -> bool:
    # every key compared, in constant time each: no early exit that times which one matched
    raw = presented.encode()
    return sum(hmac.compare_digest(raw, k) for k in keys) > 0


def api_key_check(keys: list[str], admin_keys: list[str] | None = None) -> Any:
    """A Litestar ``before_request`` hook accepting any of ``keys``, and only ``admin_keys`` on
    admin handlers; None when no key is configured (nothing to check, nothing to run).

    A hook rather than a guard: Litestar copies the route handler for every guard call, and
    runs a sync guard on a worker thread; this is one async call on the request it already has.
    """
    inference = [k.encode() for k in keys]
    admin = [k.encode() for k in admin_keys or []]
    if not inference and not admin:
        return None

    async def check(request: Request[Any, Any, Any]) -> None:
        opt = request.route_handler.opt
        if opt.get("public") or request.scope["path"].startswith("/schema"):
            return
        admin_only = bool(admin) and bool(opt.get("admin"))
        accepted = admin if admin_only else inference + admin
        if not inference and not admin_only:
            return  # only admin keys are configured, and this is not an admin endpoint
        presented = _presented_key(request)
        if presented is None:
            raise Unauthorized(
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if _matches(presented, accepted):
            return
        if admin_only and _matches(presented, inference):
            raise Forbidden("this endpoint needs an admin key (PRISM_ADMIN_KEYS)")
        raise Unauthorized("invalid API key", headers={"WWW-Authenticate": "Bearer"})

    return check
