"""The one exception handler of every Prism app: normalise, note on the record, format.

Every exception raised while serving a request reaches :func:`error_response` (Litestar's
app-wide ``exception_handlers``): it becomes one :class:`PrismError` (``normalize``), goes on
the request's record (counted once when the response starts, see ``recording``), and leaves
in the wire shape of the door its path belongs to, so an OpenAI or KServe client parses its
own error format even for a path Prism does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Request, Response
from litestar.exceptions import NotFoundException

from prism.backends import PrismError

from ..errors import normalize, problem_response
from ..recording import door_of, record_of
from .kserve import v2_error
from .openai import openai_error

#: what a 404 under a door's prefix points to
_SERVED = {
    "v1": "; Prism serves POST /v1/infer, POST /v1/feedback, POST /v1/embeddings, GET /v1/models",
    "v2": "; see GET /v2/models/{model} for a model's metadata",
}


def _native(err: PrismError, path: str) -> Response[Any]:
    return problem_response(err, path)


_FORMATS: dict[str, Callable[[PrismError, str], Response[Any]]] = {
    "native": _native,
    "openai": lambda err, path: openai_error(err),
    "kserve": lambda err, path: v2_error(err),
}


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    path = request.scope["path"]
    if isinstance(exc, NotFoundException):
        served = _SERVED.get(path.split("/")[1] if path.count("/") > 1 else "", "")
        exc = NotFoundException(f"no such endpoint: {request.method} {path}{served}")
    err = normalize(exc, f"{request.method} {path}")
    record_of(request.scope).error = err
    return _FORMATS[door_of(path)](err, path)


__all__ = ["error_response"]
