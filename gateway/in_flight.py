"""Requests a process is serving right now: Prism's own load signal for autoscaling.

``prism_in_flight_requests`` (per pod, summed by Prometheus) is what the Kubernetes autoscaler
scales the gateway on: by Little's law it is request rate x time in the gateway, so it rises
when a pod is saturated (requests queue on its event loop) or its targets slow down, and it
does not depend on a CPU limit. Probes, metrics scrapes and docs are not counted (handlers
marked ``opt={"public": True}``), so a scrape never sees itself.
"""

from __future__ import annotations

from typing import Any

from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send


class InFlight:
    """A plain counter (no lock: one event loop per process), read at scrape time."""

    def __init__(self) -> None:
        self.count = 0

    def middleware(self) -> DefineMiddleware:
        """Litestar middleware that counts every request while the app handles it."""
        return DefineMiddleware(_CountInFlight, counter=self)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """The same middleware around a plain ASGI app (the fast lane's answers)."""
        return _CountInFlight(app, self)


class _CountInFlight:
    def __init__(self, app: ASGIApp, counter: InFlight) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler: Any = scope.get("route_handler")
        if scope["type"] != "http" or (handler is not None and handler.opt.get("public")):
            await self.app(scope, receive, send)
            return
        self.counter.count += 1
        try:
            await self.app(scope, receive, send)
        finally:  # the response was sent, or the request failed or was cancelled
            self.counter.count -= 1


__all__ = ["InFlight"]
