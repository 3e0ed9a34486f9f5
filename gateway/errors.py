"""Errors as RFC 9457 problem documents: one renderer for every PrismError.

The exception classes live in :mod:`backends` (so backends can raise them without importing
the gateway); this module re-exports them and turns any of them, or anything unexpected, into
``application/problem+json`` without ever leaking a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from prism.backends import FieldError, MalformedBody, PrismError

log = logging.getLogger("prism.errors")

PROBLEM_TYPE_BASE = "https://prism.dev/problems/"
PROBLEM_JSON = "application/problem+json"


def problem_body(exc: PrismError, instance: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + exc.code.replace("_", "-"),
        "title": exc.title,
        "status": exc.status_code,
        "detail": exc.detail,
        "code": exc.code,
    }
    if instance:
        body["instance"] = instance
    if exc.errors:
        body["errors"] = [e.as_dict() for e in exc.errors]
    body.update(exc.extra)
    return body


def problem_response(exc: PrismError, instance: str | None = None) -> Response[Any]:
    return Response(
        content=problem_body(exc, instance),
        status_code=exc.status_code,
        media_type=PROBLEM_JSON,
        headers=exc.headers,
    )


def _from_litestar(exc: HTTPException) -> PrismError:
    """Litestar's own errors (routing, body parsing, size limit) in Prism's tree."""
    from prism.backends import MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized

    status = exc.status_code
    if status == 413:
        return PayloadTooLarge("request body is larger than the configured limit")
    if status == 404:
        detail = str(exc.detail or "")
        return NotFound(detail if detail.startswith("no such endpoint") else "no such endpoint")
    if status == 405:  # Litestar names the allowed methods in an Allow header: keep it
        return MethodNotAllowed(exc.detail or "method not allowed", headers=dict(exc.headers or {}))
    if status in (401, 403):
        return Unauthorized(exc.detail or "not authorized")
    if isinstance(exc, ValidationException) or status < 500:
        return MalformedBody(str(exc.detail) or "request body could not be parsed")
    return PrismError("internal error; see the gateway's logs")


def exception_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Litestar's app-wide handler: every exception leaves as a problem document."""
    if isinstance(exc, PrismError):
        err = exc
    elif isinstance(exc, HTTPException):
        err = _from_litestar(exc)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        err = PrismError("internal error; see the gateway's logs")
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        runtime.metrics.errors.labels(err.code).inc()
    return problem_response(err, request.url.path)


__all__ = ["FieldError", "PrismError", "exception_handler", "problem_body", "problem_response"]
