"""The OpenAI-compatible door: ``POST /v1/embeddings``, ``GET /v1/models[/{model}]``.

The official ``openai`` client works against it unchanged (``base_url=".../v1"``). Requests
go through the same pipeline as ``/v1/infer`` (policy, cache, experiments), with:

- ``model``: a logical model, optionally ``name@version`` (a version id or a label);
- ``input``: a string or a list of non-empty strings (token arrays are refused: Prism
  tokenizes with the model's own tokenizer);
- ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32, what the
  ``openai`` client asks for by default);
- ``dimensions``: passed on to an OpenAI-compatible upstream (which may shorten its
  vectors); for other models accepted only when it equals the model's width (truncating a
  model that was not Matryoshka-trained would silently degrade quality: refused with 400);
- ``user``: the experiment unit (``routing.unit``), so a user stays in one arm.

``usage`` counts whitespace-separated words: an approximation, the door does not tokenize.
Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; caller
mistakes are 400 (OpenAI never answers 422), unknown models 404, overload 503 + Retry-After.
"""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Any

import numpy as np
from litestar import Controller, Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.params import PathParameter

from prism.backends import (
    BackendError,
    BadRequest,
    FieldError,
    InputItem,
    MalformedBody,
    ModelNotFound,
    OpenAISpec,
    PrismError,
    Task,
    VersionNotFound,
)

from ..access import OutOfScope
from ..auth import caller_of
from ..cache import CachedOutput
from ..inference import Inference
from ..recording import record_of
from ..runtime import Runtime
from ._model_server import PipelineModelServer
from ._openapi import OPENAI, documented
from ._request import BodyRequest

log = logging.getLogger("prism.openai")


class OpenAIRequestError(BadRequest):
    """A malformed OpenAI request, naming the offending ``param``."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message, errors=[FieldError(param, message)] if param else None)
        self.param = param


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(err: PrismError) -> Response[Any]:
    """A normalised error in OpenAI's format (what the official client parses)."""
    param: str | None = None
    if isinstance(err, OpenAIRequestError):
        param = err.param
    elif isinstance(err, ModelNotFound | VersionNotFound | OutOfScope):  # OutOfScope: a key's
        param = "model"
    elif err.errors:  # the pipeline's field names, in OpenAI's terms
        path = err.errors[0].path
        param = {"task": "model", "routing.unit": "user"}.get(path, "input")
    status = 400 if err.status_code == 422 else err.status_code
    code = err.code if err.code != "internal_error" else None
    body = {
        "error": {
            "message": err.detail,
            "type": _error_type(status),
            "param": param,
            "code": code,
        }
    }
    return Response(body, status_code=status, headers=err.headers)


def _split_model(raw: Any) -> tuple[str, str | None]:
    if not isinstance(raw, str) or not raw:
        raise OpenAIRequestError("you must provide a model parameter (a string)", "model")
    name, at, version = raw.partition("@")
    if not name or (at and not version):
        raise OpenAIRequestError("'model' must be a name or 'name@version'", "model")
    return name, version or None


def _texts(raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise OpenAIRequestError("'input' must be a string or a non-empty list of strings", "input")
    for i, x in enumerate(raw):
        if _is_int(x) or (isinstance(x, list) and x and _is_int(x[0])):
            raise OpenAIRequestError(
                "token arrays are not supported: send text (Prism tokenizes with the model's tokenizer)",
                "input",
            )
        if not isinstance(x, str):
            raise OpenAIRequestError(f"input[{i}] must be a string", "input")
        if not x:
            raise OpenAIRequestError(f"input[{i}] is empty", "input")
    return list(raw)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


#: what :func:`_split_model` takes, for the OpenAPI document
MODEL_PATTERN = r"^[^@]+(@[\s\S]+)?$"
#: what :meth:`OpenAIController.embeddings` reads, as JSON Schema for the OpenAPI document (the
#: checks above are the rule; other members are ignored, as OpenAI clients send more)
_TEXT = {"type": "string", "minLength": 1, "maxLength": 100_000}
EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {
            "type": "string",
            "pattern": MODEL_PATTERN,
            "description": "a logical model, or 'name@version' (a version id or a label)",
        },
        "input": {
            "description": "a text or a list of texts; token arrays are refused (Prism "
            "tokenizes with the model's tokenizer); at most PRISM_MAX_INPUTS texts",
            "oneOf": [_TEXT, {"type": "array", "minItems": 1, "items": _TEXT}],
        },
        "encoding_format": {
            "anyOf": [{"enum": ["float", "base64"]}, {"type": "null"}],
            "default": "float",
            "description": "base64: little-endian float32 bytes",
        },
        "user": {
            "type": ["string", "null"],
            "description": "experiment unit: one user stays in one arm",
        },
        "dimensions": {
            "type": ["integer", "null"],
            "description": "an OpenAI-compatible upstream may shorten its vectors; any other "
            "model takes only its own width",
        },
    },
}


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "prism"}


async def embeddings_answer(
    request: BodyRequest, server: PipelineModelServer
) -> tuple[dict[str, Any], dict[str, str]]:
    """``POST /v1/embeddings``: the response body and headers (the handler and the fast lane,
    ``gateway/lane.py``, both answer with this; the lane keeps one ``server`` for all)."""
    try:
        doc = await request.json()
    except MalformedBody as exc:
        raise OpenAIRequestError(exc.detail, None) from exc
    if not isinstance(doc, dict):
        raise OpenAIRequestError("the body must be a JSON object", None)
    name, version = _split_model(doc.get("model"))
    texts = _texts(doc.get("input"))
    fmt = doc.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in ("float", "base64"):
        raise OpenAIRequestError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise OpenAIRequestError("'user' must be a string", "user")
    served = server.describe(name, version)  # unknown model or version: 404
    dims = doc.get("dimensions")
    params: dict[str, Any] = {}
    if dims is not None and isinstance(server.rt.policy.spec(name, served.version), OpenAISpec):
        params["dimensions"] = dims  # an OpenAI upstream decides (text-embedding-3 can)
    elif dims is not None and (
        not isinstance(dims, int) or served.dim is None or dims != served.dim
    ):
        width = f"{served.dim} dimensions" if served.dim else "a fixed width"
        raise OpenAIRequestError(
            f"model {name!r} does not support 'dimensions' other than its own ({width})",
            "dimensions",
        )
    inference = Inference(
        items=[InputItem(text=t) for t in texts],
        task=Task.EMBED,
        model=name,
        version=version,
        parameters=params,
        unit=user,
        headers=request.headers,
    )
    answer = await server.infer(inference, record_of(request.scope))
    data = []
    for i, out in enumerate(answer.outputs):
        vec = np.asarray(out["embedding"], dtype=np.float32)
        if dims is not None and vec.shape[0] != dims:  # the upstream ignored the request
            raise BackendError(f"model {name!r} answered {vec.shape[0]} dimensions, not {dims}")
        emb: Any
        if fmt == "base64":
            emb = base64.b64encode(vec.astype("<f4").tobytes()).decode()
        elif isinstance(out, CachedOutput):  # a cache hit: its JSON is made once
            emb = out.list_json("embedding")
        else:
            emb = vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(len(t.split()) for t in texts)
    body = {
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return body, answer.headers


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]

    @post(
        "/embeddings",
        status_code=200,
        summary="OpenAI-compatible embeddings",
        opt={"metered": True},  # counts against the key's limits (gateway/auth.py)
        **documented(
            OPENAI, *(400, 401, 403, 404, 413, 415, 429, 502, 503, 504), body=EMBEDDINGS_REQUEST
        ),
    )
    async def embeddings(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> Response[Any]:
        body, headers = await embeddings_answer(request, PipelineModelServer(runtime))
        return Response(body, headers=headers)

    @get(
        "/models",
        summary="Models that embed (OpenAI-compatible): those the key may use",
        **documented(OPENAI, 401),
    )
    async def list_models(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        created = int(runtime.policy.loaded_at)
        server = PipelineModelServer(runtime)
        caller = caller_of(request.scope)
        names = [
            name
            for name in runtime.policy.models
            if (caller is None or caller.may_use(name))
            and Task.EMBED in server.describe(name, None).tasks
        ]
        return {"object": "list", "data": [_model_card(n, created) for n in names]}

    @get(
        "/models/{model:str}",
        summary="One model (OpenAI-compatible)",
        **documented(
            OPENAI, 400, 401, 403, 404, wording={400: "'model' is not a name or 'name@version'"}
        ),
    )
    async def get_model(
        self,
        runtime: NamedDependency[Runtime],
        model: Annotated[str, PathParameter(schema_extra={"pattern": MODEL_PATTERN})],
    ) -> dict[str, Any]:
        name, version = _split_model(model)
        served = PipelineModelServer(runtime).describe(name, version)
        if Task.EMBED not in served.tasks:  # as /v1/models: this door only knows embeddings
            raise ModelNotFound(
                f"model {name!r} does not serve embeddings; /v1/models lists those that do"
            )
        return _model_card(model, int(runtime.policy.loaded_at))


def openai_router() -> Router:
    return Router(path="/", route_handlers=[OpenAIController])


__all__ = ["OpenAIController", "embeddings_answer", "openai_error", "openai_router"]
