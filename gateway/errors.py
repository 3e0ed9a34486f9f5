"""One error path: every exception normalised once to a :class:`PrismError`, then formatted.

The exception classes live in :mod:`prism.backends` (so backends can raise them without
importing the gateway). :func:`normalize` maps anything raised while serving a request (ours,
Litestar's, a bug) to one of them; each door only formats that value in its own wire shape
(here the native one: RFC 9457 ``application/problem+json``; the OpenAI and KServe shapes in
their doors), and :mod:`prism.gateway.recording` counts the request once.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Response
from litestar.exceptions import HTTPException, ValidationException

from prism.backends import (
    BadRequest,
    FieldError,
    InvalidInput,
    MalformedBody,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PrismError,
    Unauthorized,
)

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


def _path_from_key(key: str) -> str:
    """litestar/pydantic ``inputs.0.image.base64`` -> ``inputs[0].image.base64``."""
    out = ""
    for part in key.split("."):
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _from_validation(exc: ValidationException) -> PrismError:
    """A body that parsed but does not fit the schema: 422 with a field-level list."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        FieldError(
            _path_from_key(str(e.get("key", ""))) or "body", str(e.get("message", "invalid"))
        )
        for e in extra
        if isinstance(e, dict)
    ]
    if not errors:
        # a missing query or path parameter: the request is wrong, its body is not malformed
        return BadRequest(str(exc.detail).split(" for path ")[0])
    if any(e.path == "data" for e in errors):
        # Litestar reports an empty body as its missing ``data`` argument
        return MalformedBody("the request body is empty; send a JSON object")
    first = errors[0]
    detail = f"{first.path}: {first.message}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
    return InvalidInput(detail, errors=errors)


def _from_litestar(exc: HTTPException) -> PrismError:
    """Litestar's own errors (routing, body parsing, size limit) in Prism's tree."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        return _from_validation(exc)
    if status == 413:
        return PayloadTooLarge("request body is larger than the configured limit")
    if status == 404:
        detail = str(exc.detail or "")
        return NotFound(detail if detail.startswith("no such endpoint") else "no such endpoint")
    if status == 405:  # Litestar names the allowed methods in an Allow header: keep it
        return MethodNotAllowed(exc.detail or "method not allowed", headers=dict(exc.headers or {}))
    if status in (401, 403):
        return Unauthorized(exc.detail or "not authorized")
    if status < 500:
        return MalformedBody(str(exc.detail) or "request body could not be parsed")
    return PrismError("internal error; see the gateway's logs")


def normalize(exc: BaseException, where: str = "") -> PrismError:
    """Any exception as the one :class:`PrismError` every door formats and the recorder
    counts: ours as they are, Litestar's mapped, anything else logged here (with its stack
    trace, which never leaves the process) and answered as a 500."""
    if isinstance(exc, PrismError):
        return exc
    if isinstance(exc, HTTPException):
        return _from_litestar(exc)
    log.error("unhandled error on %s", where, exc_info=exc)
    return PrismError("internal error; see the gateway's logs")


__all__ = [
    "FieldError",
    "PrismError",
    "normalize",
    "problem_body",
    "problem_response",
]
