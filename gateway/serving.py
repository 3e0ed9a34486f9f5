"""How every Prism process serves HTTP and logs: ``prism serve`` and ``prism worker`` alike."""

from __future__ import annotations

import logging
from typing import Any


def configure_logging(level: str) -> None:
    """One format for every Prism process; one line per upstream call is noise, not news."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_http(app: object, host: str, port: int, log_level: str, *, workers: int = 1) -> None:
    """Serve an ASGI app with uvicorn the way every Prism process does.

    With ``workers`` > 1, ``app`` is the import string of an app factory (``module:function``):
    uvicorn binds the port once and starts that many processes, each building its own app.
    """
    import uvicorn

    multi: dict[str, Any] = {"workers": workers, "factory": True} if workers > 1 else {}
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=10,
        **multi,
    )


__all__ = ["configure_logging", "run_http"]
