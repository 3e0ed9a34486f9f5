"""The KServe v2 / Open Inference Protocol door, as Triton Inference Server speaks it over HTTP.

=========================================================== ===================================
``GET /v2``                                                 server metadata (name, extensions)
``GET /v2/health/live``, ``/v2/health/ready``               200 when live / ready (else 503)
``GET /v2/models/{m}[/versions/{v}]``                       model metadata: inputs, outputs
``GET /v2/models/{m}[/versions/{v}]/ready``                 200 when that version can serve
``GET /v2/models/{m}[/versions/{v}]/config``                Triton-style model configuration
``POST /v2/models/{m}[/versions/{v}]/infer``                run it (JSON or binary tensors)
``POST /v2/repository/index``                               every model version and its state
=========================================================== ===================================

The tensor conventions (input and output names, datatypes, shapes, parameters, Triton's
binary extension) are documented in :mod:`backends._v2`, shared with the remote
``KServeBackend`` so a gateway can route to a ``prism worker`` or to any Prism-shaped Triton
model. ``{v}`` may be a version id or a label (``stable``). Errors follow the protocol:
``{"error": "<message>"}`` with 400 (bad tensors, bad parameters), 404 (unknown model or
version), 502/504 (backend failed), 503 + Retry-After (overloaded / not ready).

The same :class:`KServeController` serves the gateway (a :class:`PipelineModelServer`:
policy, cache and experiments apply) and ``prism worker`` (one backend); the router built
by :func:`kserve_router` injects which one as the ``model_server`` dependency.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, NamedTuple

import msgspec
import numpy as np
from litestar import Controller, Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from prism.backends import BadRequest, PrismError, Task
from prism.backends import _json as strict_json
from prism.backends._v2 import (
    CONTROL_PARAMETERS,
    OUTPUTS_BY_TASK,
    TensorFormatError,
    outputs_to_tensors,
    read_tensors,
    split_body,
    tensors_to_items,
    write_tensors,
)

from ..auth import caller_of
from ..cache import CachedOutput
from ..inference import Inference
from ..recording import record_of
from ..runtime import Runtime
from ._model_server import ModelServer, PipelineModelServer, model_config, model_metadata
from ._openapi import BINARY, V2, Answer, documented, header
from ._request import BodyRequest
from ._v2_schema import INFER_REQUEST, V2InferResponse, V2ModelReady, V2Ready

log = logging.getLogger("prism.kserve")

HEADER_LENGTH = "Inference-Header-Content-Length"
#: how it is looked up (request headers: lower-case names, as ASGI has them)
_HEADER_LENGTH = HEADER_LENGTH.lower()


def v2_error(err: PrismError) -> Response[Any]:
    """A normalised error as the Open Inference Protocol has it: ``{"error": "..."}``."""
    # the protocol knows "bad request", not "unprocessable": a wrong input is a 400 here
    status = 400 if err.status_code == 422 else err.status_code
    return Response({"error": err.detail}, status_code=status, headers=err.headers)


class _Control(NamedTuple):
    #: None: not given; :func:`_choose_task` decides from the model and the outputs asked for
    task: Task | None
    unit: str | None
    cache: Literal["use", "bypass", "refresh"]
    binary_output: bool


def _parameters(doc: dict[str, Any]) -> tuple[_Control, dict[str, Any]]:
    """Prism's control parameters and the model's own parameters, from a request."""
    params = doc.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise TensorFormatError("'parameters' must be an object")
    try:
        task = Task(params["task"]) if "task" in params else None
    except ValueError as exc:
        known = ", ".join(t.value for t in Task)
        raise TensorFormatError(f"parameter 'task' must be one of {known}") from exc
    model_params = {k: v for k, v in params.items() if k not in CONTROL_PARAMETERS}
    labels = model_params.get("labels")
    if isinstance(labels, str):  # tritonclient users often send a JSON array in a string
        try:
            model_params["labels"] = strict_json.loads(labels)
        except ValueError:
            model_params["labels"] = [s.strip() for s in labels.split(",") if s.strip()]
    if "labels" in model_params and not (
        isinstance(model_params["labels"], list)
        and all(isinstance(x, str) for x in model_params["labels"])
    ):
        raise TensorFormatError("parameter 'labels' must be a list of strings")
    if "top_k" in model_params:
        model_params["top_k"] = _integer(model_params["top_k"], "top_k")
    cache = params.get("cache", "use")
    if cache not in ("use", "bypass", "refresh"):
        raise TensorFormatError("parameter 'cache' must be use, bypass or refresh")
    unit = params.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise TensorFormatError("parameter 'unit' must be a string")
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise TensorFormatError("parameter 'binary_data_output' must be true or false")
    return _Control(task, unit, cache, binary), model_params


#: what a string parameter may hold to count as an int (ASCII digits, no huge values)
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def _integer(value: Any, name: str) -> int:
    """An int parameter; tritonclient may send it as a string. Never rounds, never a bool."""
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TensorFormatError(f"parameter {name!r} must be an integer")


#: in declaration order (iterating the enum itself costs a microsecond per request)
_TASKS = tuple(Task)


def _choose_task(doc: dict[str, Any], served: frozenset[Task], params: dict[str, Any]) -> Task:
    """The task of a request that names none, as a Triton client would expect it: the
    model's only task; else the one whose outputs the request names (``label`` -> classify,
    ``item`` -> recommend); else classify when ``labels`` are given; else embed."""
    candidates = [t for t in _TASKS if t in served] or list(_TASKS)
    raw = doc.get("outputs")
    names = {o.get("name") for o in raw if isinstance(o, dict)} if isinstance(raw, list) else set()
    if names:
        fitting = [t for t in candidates if names <= set(OUTPUTS_BY_TASK[t])]
        candidates = fitting or candidates
    if len(candidates) == 1:
        return candidates[0]
    if "labels" in params and Task.CLASSIFY in candidates:
        return Task.CLASSIFY
    return Task.EMBED if Task.EMBED in candidates else candidates[0]


def _requested(doc: dict[str, Any], task: Task, default_binary: bool) -> dict[str, bool]:
    """Output name -> send as binary; all of the task's outputs when none are named."""
    produced = OUTPUTS_BY_TASK[task]
    raw = doc.get("outputs")
    if raw is None:
        return {name: default_binary for name in produced}
    if not isinstance(raw, list):
        raise TensorFormatError("'outputs' must be a list")
    wanted: dict[str, bool] = {}
    for i, out in enumerate(raw):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise TensorFormatError(f"outputs[{i}] must be an object with a 'name'")
        if out["name"] not in produced:
            raise TensorFormatError(
                f"unknown output {out['name']!r}; task {task.value!r} produces {', '.join(produced)}"
            )
        params = out.get("parameters") or {}
        binary = params.get("binary_data", default_binary) if isinstance(params, dict) else None
        if not isinstance(binary, bool):
            raise TensorFormatError(
                f"outputs[{i}].parameters must be an object whose 'binary_data' is true or false"
            )
        wanted[out["name"]] = binary
    return wanted


def _cached_embedding(outputs: list[Any]) -> dict[str, Any] | None:
    """The JSON ``embedding`` tensor of cache hits, made from the hits' own JSON (kept on each
    entry: see :class:`~prism.gateway.cache.CachedOutput`) without stacking the rows into a
    matrix and listing it again (a third of this door's own CPU on a hit): the rows' lists
    joined are the flattened matrix, the same bytes. None: not all hits, or rows that are not
    vectors of one width (the general path then says what they are)."""
    if not outputs or not all(isinstance(o, CachedOutput) for o in outputs):
        return None
    rows = [o["embedding"] for o in outputs]
    first = rows[0]
    if not isinstance(first, np.ndarray) or first.ndim != 1:
        return None
    width = first.shape[0]
    if not all(isinstance(r, np.ndarray) and r.shape == (width,) for r in rows):
        return None
    if len(outputs) == 1:
        data = outputs[0].list_json("embedding")
    else:
        parts = [bytes(o.list_json("embedding"))[1:-1] for o in outputs]
        data = msgspec.Raw(b"[" + b",".join(p for p in parts if p) + b"]")
    return {"name": "embedding", "datatype": "FP32", "shape": [len(rows), width], "data": data}


async def infer_answer(
    request: BodyRequest, model_server: ModelServer, model: str, version: str | None
) -> tuple[bytes, str, dict[str, str]]:
    """``POST /v2/models/{m}[/versions/{v}]/infer``: the response body, its media type and
    headers (the handler and the fast lane, ``gateway/lane.py``, both answer with this)."""
    served = model_server.describe(model, version)  # unknown: 404 before parsing
    try:
        doc, tail = split_body(await request.body(), request.headers.get(_HEADER_LENGTH))
        inputs = read_tensors(doc.get("inputs"), tail)
        binary_inputs = frozenset(
            e["name"]
            for e in doc["inputs"]
            if isinstance(e.get("parameters"), dict) and "binary_data_size" in e["parameters"]
        )
        items = tensors_to_items(inputs, binary_inputs)
        control, params = _parameters(doc)
        task = control.task or _choose_task(doc, served.tasks, params)
        wanted = _requested(doc, task, control.binary_output)
    except TensorFormatError as exc:
        raise BadRequest(str(exc)) from exc
    inference = Inference(
        items=list(items),
        task=task,
        model=model,
        version=version,
        parameters=params,
        unit=control.unit,
        cache=control.cache,
        headers=request.headers,
    )
    answer = await model_server.infer(inference, record_of(request.scope))
    hits = None
    if task is Task.EMBED and wanted.get("embedding") is False:  # JSON, not binary
        hits = _cached_embedding(answer.outputs)
    if hits is not None:
        entries, blob = [hits], b""
    else:
        tensors = [t for t in outputs_to_tensors(task, answer.outputs) if t.name in wanted]
        entries, blob = write_tensors(tensors, wanted)
    body: dict[str, Any] = {
        "model_name": answer.model,
        "model_version": answer.version,
        "outputs": entries,
    }
    if isinstance(doc.get("id"), str):
        body["id"] = doc["id"]
    # msgspec: the stdlib encoder was a quarter of this door's CPU on a 384-float answer
    head = msgspec.json.encode(body)
    headers = dict(answer.headers)
    if not blob:
        return head, "application/json", headers
    headers[HEADER_LENGTH] = str(len(head))
    return head + blob, "application/octet-stream", headers


class KServeController(Controller):
    """The v2 endpoints; ``model_server`` is injected by :func:`kserve_router`."""

    path = "/v2"
    tags = ["kserve-v2"]

    @get("/", summary="Server metadata", **documented(V2, 401))
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "prism", "version": "1", "extensions": ["binary_tensor_data"]}

    # probes carry no API key: health and readiness stay open like /healthz and /readyz
    @get("/health/live", summary="Liveness", opt={"public": True}, **documented(V2))
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @get(
        "/health/ready",
        summary="Readiness",
        opt={"public": True},
        **documented(
            V2,
            answers={
                200: Answer("Ready", V2Ready),
                503: Answer("Not ready: models still loading, or a route has none up", V2Ready),
            },
        ),
    )
    async def ready(self, model_server: NamedDependency[ModelServer]) -> Response[dict[str, bool]]:
        ok = await model_server.ready()
        return Response({"ready": ok}, status_code=200 if ok else 503)

    @get(
        ["/models/{model:str}", "/models/{model:str}/versions/{version:str}"],
        summary="Model metadata",
        **documented(V2, 401, 403, 404),
    )
    async def metadata(
        self,
        model_server: NamedDependency[ModelServer],
        model: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> dict[str, Any]:
        return model_metadata(model_server.describe(model, version))

    @get(
        ["/models/{model:str}/config", "/models/{model:str}/versions/{version:str}/config"],
        summary="Model configuration (Triton's view)",
        **documented(V2, 401, 403, 404),
    )
    async def config(
        self,
        model_server: NamedDependency[ModelServer],
        model: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> dict[str, Any]:
        return model_config(model_server.describe(model, version))

    @get(
        ["/models/{model:str}/ready", "/models/{model:str}/versions/{version:str}/ready"],
        summary="Model readiness",
        opt={"public": True},
        **documented(
            V2,
            404,
            answers={
                200: Answer("The version can serve", V2ModelReady),
                503: Answer("The version has no backend up", V2ModelReady),
            },
        ),
    )
    async def model_ready(
        self,
        model_server: NamedDependency[ModelServer],
        model: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response[dict[str, Any]]:
        served = model_server.describe(model, version)
        ok = await model_server.model_ready(served)
        return Response({"name": model, "ready": ok}, status_code=200 if ok else 503)

    @post(
        "/repository/index",
        status_code=200,
        summary="Every model version and its state",
        **documented(V2, 401),
    )
    async def index(
        self, request: Request[Any, Any, Any], model_server: NamedDependency[ModelServer]
    ) -> list[dict[str, str]]:
        caller = caller_of(request.scope)  # a scoped key sees the models it may use
        return [
            {
                "name": m.name,
                "version": m.version,
                "state": "READY" if await model_server.model_ready(m) else "UNAVAILABLE",
            }
            for m in model_server.models()
            if caller is None or caller.may_use(m.name)
        ]

    @post(
        ["/models/{model:str}/infer", "/models/{model:str}/versions/{version:str}/infer"],
        status_code=200,
        summary="Inference (JSON tensors or Triton's binary extension)",
        opt={"metered": True},  # counts against the key's limits (gateway/auth.py)
        **documented(
            V2,
            *(400, 401, 403, 404, 413, 415, 429, 502, 503, 504),
            body=INFER_REQUEST,
            answers={
                200: Answer(
                    "The outputs: JSON, or (when outputs are asked for as binary) JSON then "
                    "the tensors' bytes",
                    V2InferResponse,
                    headers={
                        HEADER_LENGTH: header(
                            "length of the JSON part (binary outputs only)",
                            required=False,
                            integer=True,
                        )
                    },
                    alternatives={"application/octet-stream": BINARY},
                )
            },
        ),
    )
    async def infer(
        self,
        request: Request[Any, Any, Any],
        model_server: NamedDependency[ModelServer],
        model: FromPath[str],
        version: FromPath[str | None] = None,
    ) -> Response[bytes]:
        body, media_type, headers = await infer_answer(request, model_server, model, version)
        return Response(body, media_type=media_type, headers=headers)


def kserve_router(model_server: Provide) -> Router:
    """The v2 door on top of whatever ``model_server`` provides."""
    return Router(
        path="/",
        route_handlers=[KServeController],
        dependencies={"model_server": model_server},
    )


def _pipeline_server(runtime: NamedDependency[Runtime]) -> ModelServer:
    return PipelineModelServer(runtime)


def gateway_kserve_router() -> Router:
    """The v2 door of the full gateway (policy, cache, experiments)."""
    return kserve_router(Provide(_pipeline_server, sync_to_thread=False))


__all__ = [
    "KServeController",
    "gateway_kserve_router",
    "infer_answer",
    "kserve_router",
    "model_metadata",
    "v2_error",
]
