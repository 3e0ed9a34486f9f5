"""Graceful drain on SIGTERM, for ``prism serve`` (each ``--workers`` process) and ``prism worker``.

A load balancer only stops sending traffic to a replica once its health check fails, so a
replica that stopped accepting the moment it got SIGTERM would refuse the requests already on
their way. On SIGTERM a :class:`Drain`:

1. flips ``/readyz`` to 503 at once (``draining`` is true), and keeps serving everything that
   still arrives for ``grace_s`` seconds (the load balancer's checks notice and move away);
2. then hands the signal to the HTTP server (uvicorn), which stops accepting, closes idle
   keep-alive connections, and waits for in-flight requests, at most the drain timeout
   (``timeout_graceful_shutdown``, set by :func:`prism.gateway.serving.run_http`);
3. the app's lifespan then closes: the gateway pushes its last experiment counters to Redis.

A second SIGTERM during the grace period skips the rest of it. SIGINT (Ctrl+C) keeps uvicorn's
immediate graceful shutdown: a person at a terminal is not a load balancer.

The drain wraps the SIGTERM handler the server installed (uvicorn installs its own with
``signal.signal`` and restores the previous one on exit), so the same code drains the
single-process server and every process of ``--workers N``, where uvicorn builds the app in
each child.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger("prism.drain")

#: defaults of PRISM_DRAIN_GRACE_S / PRISM_DRAIN_TIMEOUT_S; 5 + 20 s leave Kubernetes' default
#: terminationGracePeriodSeconds (30 s) the lifespan's own shutdown (at most 5 s, runtime.py)
DEFAULT_GRACE_S = 5.0
DEFAULT_TIMEOUT_S = 20.0

_Handler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


class Drain:
    """One process's drain: the readiness flag and the SIGTERM handler that sets it."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        #: seconds between SIGTERM and the server no longer accepting
        self.grace_s = grace_s
        #: true from the first SIGTERM on: ``/readyz`` answers 503
        self.draining = False
        #: ``time.monotonic()`` of the first SIGTERM
        self.since: float | None = None
        self._server_handler: _Handler = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def install(self) -> bool:
        """Take over SIGTERM from the server (call in the app's lifespan startup). Signals can
        only be handled in the main thread: an app run by a test client in another thread
        keeps whatever handler there is, and False says so."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        self._server_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        return True

    def uninstall(self) -> None:
        """Give SIGTERM back to the server (lifespan shutdown), unless it already has it."""
        if self._loop is None or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._server_handler)
        self._loop = None

    def begin(self) -> None:
        """Start draining now (what SIGTERM does): unready at once, stop after ``grace_s``."""
        if self.draining:
            return
        self.draining = True
        self.since = time.monotonic()
        log.warning(
            "SIGTERM: draining; /readyz answers 503, serving on for %.1f s before closing",
            self.grace_s,
        )
        if self._loop is not None:
            self._loop.call_later(self.grace_s, self.stop_serving)

    def stop_serving(self) -> None:
        """Hand SIGTERM to the server: it stops accepting and finishes what is in flight."""
        if self._stopping:
            return
        self._stopping = True
        waited = time.monotonic() - self.since if self.since is not None else 0.0
        log.warning("drain: %.1f s after SIGTERM, closing the listener", waited)
        handler = self._server_handler
        self.uninstall()
        if callable(handler):
            handler(signal.SIGTERM, None)  # as if the signal arrived now
        else:  # no server handler (SIG_DFL): deliver it for real
            signal.raise_signal(signal.SIGTERM)

    def _on_sigterm(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler may interrupt the event loop anywhere: only thread-safe calls here
        assert self._loop is not None
        if self.draining:  # a second SIGTERM: no more grace
            self._loop.call_soon_threadsafe(self.stop_serving)
        else:
            self._loop.call_soon_threadsafe(self.begin)


__all__ = ["DEFAULT_GRACE_S", "DEFAULT_TIMEOUT_S", "Drain"]
