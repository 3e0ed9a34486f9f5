"""``create_app``: builds a gateway from settings; the lifespan owns every resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from prism.backends import BadRequest, FieldError, InvalidInput, MalformedBody

from .admin import AdminController
from .auth import api_key_guard
from .cache import ResponseCache
from .doors._request import PrismRequest
from .doors.kserve import gateway_kserve_router, v2_error
from .doors.native import NativeController
from .doors.openai import openai_error, openai_router
from .errors import exception_handler, problem_response
from .policy import CompiledPolicy
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("prism")


def _path_from_key(key: str) -> str:
    """litestar/pydantic ``inputs.0.image.base64`` -> ``inputs[0].image.base64``."""
    out = ""
    for part in key.split("."):
        if part.isdigit():
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _validation_handler(request: Any, exc: ValidationException) -> Any:
    """Body validation failures as 422 with a field-level list (malformed JSON stays 400)."""
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
        detail = str(exc.detail).split(" for path ")[0]
        return problem_response(BadRequest(detail), request.url.path)
    if any(e.path == "data" for e in errors):
        # Litestar reports an empty body as its missing ``data`` argument
        return problem_response(
            MalformedBody("the request body is empty; send a JSON object"), request.url.path
        )
    first = errors[0]
    detail = f"{first.path}: {first.message}" + (
        f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    )
    return problem_response(InvalidInput(detail, errors=errors), request.url.path)


def _door_error(request: Any, exc: Exception) -> Any:
    """Errors no route handler saw (unknown path, wrong method) in the shape of the door the
    path belongs to: a KServe or OpenAI client parses its own error format, not RFC 9457."""
    path = request.url.path
    if isinstance(exc, NotFoundException):
        served = _SERVED.get(path.split("/")[1] if path.count("/") > 1 else "", "")
        exc = NotFoundException(f"no such endpoint: {request.method} {path}{served}")
    if path == "/v2" or path.startswith("/v2/"):
        return v2_error(request, exc)
    # OpenAI clients are who call /v1 paths Prism does not have (/v1/chat/completions ...)
    if path.startswith("/v1/") and path not in _NATIVE_V1:
        return openai_error(request, exc)
    return exception_handler(request, exc)


_NATIVE_V1 = frozenset({"/v1/infer", "/v1/feedback"})
#: what a 404 under a door's prefix points to
_SERVED = {
    "v1": "; Prism serves POST /v1/infer, POST /v1/feedback, POST /v1/embeddings, GET /v1/models",
    "v2": "; see GET /v2/models/{model} for a model's metadata",
}


def create_app(
    settings: Settings | None = None,
    *,
    cache: ResponseCache | None = None,
    policy: CompiledPolicy | None = None,
    runtime: Runtime | None = None,
) -> Litestar:
    """Build the ASGI app. Tests pass their own cache/policy; ``prism serve`` passes settings."""
    settings = settings or Settings()
    rt = runtime or Runtime(settings, cache=cache, policy=policy)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.aclose()

    async def provide_runtime() -> Runtime:
        return rt

    app = Litestar(
        route_handlers=[
            NativeController,
            AdminController,
            openai_router(),
            gateway_kserve_router(),
        ],
        dependencies={"runtime": Provide(provide_runtime, use_cache=True)},
        lifespan=[lifespan],
        guards=[api_key_guard(settings.api_keys, settings.admin_keys)],
        exception_handlers={ValidationException: _validation_handler, Exception: _door_error},
        request_max_body_size=settings.max_body_bytes,
        request_class=PrismRequest,
        openapi_config=OpenAPIConfig(
            title="Prism",
            version="1",
            description="Multimodal model gateway: one API for text, image and recommendation models.",
            path="/schema",
            # JSON first: /schema works offline; the Swagger UI loads its JS from a CDN
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), SwaggerRenderPlugin()],
        ),
        debug=False,
    )
    app.state.runtime = rt
    return app
