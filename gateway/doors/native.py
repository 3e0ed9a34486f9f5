"""The native door: ``POST /v1/infer``, ``POST /v1/feedback``, health, readiness, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from litestar import Controller, Request, Response, get, head, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_503_SERVICE_UNAVAILABLE
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from prism.backends import (
    Conflict,
    FieldError,
    InputItem,
    InvalidImage,
    NotFound,
    decode_base64_image,
)

from ..experiments import FEEDBACK_TTL_S
from ..inference import Inference
from ..recording import record_of
from ..runtime import Runtime
from ..schema import Feedback, InferRequest, InferResponse
from ._openapi import PROBLEM, RETRY_AFTER, Answer, documented


def inference_from_wire(
    req: InferRequest, max_image_bytes: int, headers: Mapping[str, str] | None = None
) -> Inference:
    """The native wire request as the pipeline's :class:`Inference`: base64 images decoded
    here (errors name their field), image URLs kept to be fetched once the model is known."""
    items: list[InputItem] = []
    urls: dict[int, str] = {}
    for i, spec in enumerate(req.inputs):
        image: bytes | None = None
        if spec.image is not None and spec.image.base64 is not None:
            path = f"inputs[{i}].image.base64"
            try:
                image = decode_base64_image(spec.image.base64)
            except InvalidImage as exc:
                exc.errors = [FieldError(path, e.message) for e in exc.errors] or [
                    FieldError(path, exc.detail)
                ]
                raise
            if len(image) > max_image_bytes:
                raise InvalidImage(
                    f"image is {len(image)} bytes; the limit is {max_image_bytes}",
                    errors=[FieldError(path, "too large")],
                )
        elif spec.image is not None and spec.image.url:
            urls[i] = spec.image.url
        history = tuple(spec.history) if spec.history is not None else None
        items.append(InputItem(text=spec.text, image=image, user=spec.user, history=history))
    return Inference(
        items=items,
        task=req.task,
        model=req.model,
        version=req.version,
        parameters=req.parameters,
        unit=req.routing.unit,
        latency_budget_ms=req.routing.latency_budget_ms,
        cache=req.cache,
        image_urls=urls,
        # ASGI header names are lower-case already
        headers=headers if headers is not None else {},
    )


def route_headers(resp: InferResponse) -> dict[str, str]:
    """The decision as response headers, for callers and proxies that only see headers."""
    r = resp.route
    headers = {"x-prism-route": f"{r.rule}; target={r.target}", "x-prism-cache": r.cache}
    if r.experiment:
        headers["x-prism-experiment"] = f"{r.experiment}; arm={r.arm}"
    return headers


async def infer_answer(
    data: InferRequest, runtime: Runtime, headers: Mapping[str, str], scope: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``POST /v1/infer`` once its body is validated: the response body and headers (the
    handler below and the fast lane, ``gateway/lane.py``, both answer with this)."""
    inference = inference_from_wire(data, runtime.settings.max_body_bytes, headers)
    resp = await runtime.pipeline.infer(inference, record_of(scope))
    return resp.to_wire(), route_headers(resp)


class Readiness(BaseModel):
    """What ``/readyz`` answers (documentation: :func:`readiness` builds it)."""

    status: Literal["ready", "degraded", "not ready", "draining"]
    models: dict[str, str] = Field(
        description="each target (model@version/where): ready, unreachable, loading, or why "
        "it could not load"
    )
    routes_down: list[str] | SkipJsonSchema[None] = Field(
        None, description="routes whose targets are all down (status degraded)"
    )
    keys: dict[str, Any] | SkipJsonSchema[None] = Field(
        None,
        description="when keys are on: where managed keys and limits live (redis or file), "
        "whether it is reachable, and what happens while it is not (on_store_down)",
    )


def readiness(runtime: Runtime) -> Response[dict[str, Any]]:
    """200 once loading has settled and every route with a local target has one up (routes
    whose remote targets are all down are listed, status "degraded"); else 503 saying why
    ("draining" from SIGTERM on: see :mod:`prism.gateway.draining`)."""
    deployments = runtime.deployments
    models = {
        d.target.key: (
            (
                "ready"
                if deployments.probe_ok(d.target)
                else getattr(d.backend, "problem", None) or "unreachable"
            )
            if d.ready
            else (d.error or "loading")
        )
        for d in deployments.all()
    }
    settled = deployments.settled
    down = deployments.routes_without_healthy_target(runtime.policy) if settled else []
    ready = runtime.ready  # remote-only routes that are down degrade, they do not unready
    status = ("degraded" if down else "ready") if ready else "not ready"
    if runtime.drain.draining:  # SIGTERM: the load balancer moves away while we still serve
        ready, status = False, "draining"
    body: dict[str, Any] = {"status": status, "models": models}
    if down:
        body["routes_down"] = down
    if runtime.access.enabled:
        body["keys"] = runtime.access.status()
    return Response(
        body,
        status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
        headers={} if ready else {"Retry-After": "5"},
    )


class NativeController(Controller):
    tags = ["native"]

    @post(
        "/v1/infer",
        status_code=HTTP_200_OK,
        summary="Run embed / classify / recommend",
        opt={"metered": True},  # counts against the key's limits (gateway/auth.py)
        **documented(
            PROBLEM,
            *(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
            wording={413: "The body (inflated), or an image fetched from its URL, is too large"},
        ),
    )
    async def infer(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[InferRequest],
        runtime: NamedDependency[Runtime],
    ) -> Response[dict[str, Any]]:
        body, headers = await infer_answer(data, runtime, request.headers, request.scope)
        return Response(body, headers=headers)

    @post(
        "/v1/feedback",
        status_code=HTTP_202_ACCEPTED,
        summary="Score an experiment's answer",
        **documented(
            PROBLEM,
            *(400, 401, 404, 409, 413, 415, 422),
            wording={
                404: f"No experiment answer with this id in the last {FEEDBACK_TTL_S // 3600} h, "
                "or no such experiment and arm in the running policy",
            },
        ),
    )
    async def feedback(
        self, data: JSONBody[Feedback], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        engine = runtime.experiments
        if data.id is not None:
            found = await engine.feedback.arm_of(data.id)
            if found is None:
                raise NotFound(
                    f"no experiment request {data.id!r} in the last "
                    f"{FEEDBACK_TTL_S // 3600} h (answers outside experiments take no feedback)"
                )
            name, arm, unit = found
        else:
            name, arm, unit = str(data.experiment), str(data.arm), None
        experiment = runtime.policy.document.experiments.get(name)
        if experiment is None or arm not in experiment.arms:
            raise NotFound(f"the running policy has no experiment {name!r} with arm {arm!r}")
        # claimed last: a refusal above must not use up the answer's one score
        if data.id is not None and not await engine.feedback.claim(data.id):
            raise Conflict(f"answer {data.id!r} has feedback already (one score per answer)")
        engine.record_quality(name, arm, data.value, unit)
        return {"experiment": name, "arm": arm, "value": data.value}

    @get(
        "/healthz",
        summary="Liveness: the process is up",
        opt={"public": True},
        **documented(PROBLEM),
    )
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    # load balancers and uptime checks often probe with HEAD: same answer, no body
    @head("/healthz", opt={"public": True}, include_in_schema=False)
    async def healthz_head(self) -> None:
        return None

    @head("/readyz", opt={"public": True}, include_in_schema=False)
    async def readyz_head(self, runtime: NamedDependency[Runtime]) -> Response[None]:
        full = readiness(runtime)
        return Response(None, status_code=full.status_code, headers=dict(full.headers))

    @get(
        "/readyz",
        summary="Readiness: local models loaded, every local route servable",
        opt={"public": True},
        **documented(
            PROBLEM,
            answers={
                200: Answer("Ready, or degraded: remote-only routes are down", Readiness),
                503: Answer(
                    "Not ready: loading, a route has no target up, or draining (SIGTERM)",
                    Readiness,
                    headers={"Retry-After": RETRY_AFTER},
                ),
            },
        ),
    )
    async def readyz(self, runtime: NamedDependency[Runtime]) -> Response[dict[str, Any]]:
        return readiness(runtime)

    @get(
        "/metrics",
        summary="Prometheus metrics",
        media_type="text/plain; version=0.0.4",
        opt={"public": True},
        **documented(PROBLEM),
    )
    async def metrics(self, runtime: NamedDependency[Runtime]) -> bytes:
        return runtime.metrics.render()
