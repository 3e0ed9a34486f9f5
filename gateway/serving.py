"""How every Prism process serves HTTP and logs: ``prism serve`` and ``prism worker`` alike."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import signal
from types import FrameType
from typing import Any

from .draining import DEFAULT_GRACE_S, DEFAULT_TIMEOUT_S


def configure_logging(level: str) -> None:
    """One format for every Prism process; one line per upstream call is noise, not news."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def dump_stacks_on_sigusr2() -> None:
    """``kill -USR2 <pid>`` writes every thread's Python stack to stderr, even while the event
    loop is stuck in a call that never returns: what py-spy would say, without installing it."""
    import faulthandler
    import sys

    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)


def _exit_drained(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def run_http(
    app: object,
    host: str,
    port: int,
    log_level: str,
    *,
    workers: int = 1,
    drain_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Serve an ASGI app with uvicorn the way every Prism process does.

    With ``workers`` > 1, ``app`` is the import string of an app factory (``module:function``):
    uvicorn binds the port once and starts that many processes, each building its own app.
    Once the listener closes (SIGTERM, after the app's drain grace: see ``draining.py``),
    in-flight requests get ``drain_timeout_s`` seconds to finish before they are cancelled.
    """
    import uvicorn

    from .http_protocol import PrismHttpProtocol

    # uvicorn re-raises the SIGTERM it handled once it has shut down, to whatever handler was
    # there before it: a drained process exits 0 rather than "killed by SIGTERM"
    signal.signal(signal.SIGTERM, _exit_drained)
    dump_stacks_on_sigusr2()

    multi: dict[str, Any] = {"workers": workers, "factory": True} if workers > 1 else {}
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        http=PrismHttpProtocol,  # uvicorn's httptools protocol, head and body in one write
        timeout_graceful_shutdown=drain_timeout_s,  # type: ignore[arg-type]  # asyncio.timeout takes float
        **multi,
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    """``--drain-grace-s`` / ``--drain-timeout-s`` (``serve`` and ``worker``); unset = the
    ``PRISM_DRAIN_*`` environment, else the defaults."""
    parser.add_argument(
        "--drain-grace-s",
        type=_seconds,
        metavar="S",
        help="on SIGTERM, seconds /readyz answers 503 while requests are still served, so load "
        f"balancers move away first (PRISM_DRAIN_GRACE_S; default {DEFAULT_GRACE_S:g})",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=_seconds,
        metavar="S",
        help="then the longest wait for in-flight requests to finish before they are cancelled "
        f"(PRISM_DRAIN_TIMEOUT_S; default {DEFAULT_TIMEOUT_S:g})",
    )


__all__ = ["add_drain_arguments", "configure_logging", "run_http"]
