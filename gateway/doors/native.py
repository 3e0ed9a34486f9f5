"""The native door: ``POST /v1/infer``, ``POST /v1/feedback``, health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, head, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_503_SERVICE_UNAVAILABLE

from prism.backends import Conflict, NotFound

from ..experiments import FEEDBACK_TTL_S
from ..runtime import Runtime
from ..schema import Feedback, InferRequest, InferResponse


def route_headers(resp: InferResponse) -> dict[str, str]:
    """The decision as response headers, for callers and proxies that only see headers."""
    r = resp.route
    headers = {"x-prism-route": f"{r.rule}; target={r.target}", "x-prism-cache": r.cache}
    if r.experiment:
        headers["x-prism-experiment"] = f"{r.experiment}; arm={r.arm}"
    return headers


def readiness(runtime: Runtime) -> Response[dict[str, Any]]:
    """200 once loading has settled and every route with a local target has one up (routes
    whose remote targets are all down are listed, status "degraded"); else 503 saying why."""
    deployments = runtime.deployments
    models = {
        d.target.key: (
            ("ready" if deployments.probe_ok(d.target) else "unreachable")
            if d.ready
            else (d.error or "loading")
        )
        for d in deployments.all()
    }
    settled = deployments.settled
    down = deployments.routes_without_healthy_target(runtime.policy) if settled else []
    ready = runtime.ready  # remote-only routes that are down degrade, they do not unready
    status = ("degraded" if down else "ready") if ready else "not ready"
    return Response(
        {"status": status, "models": models, **({"routes_down": down} if down else {})},
        status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
        headers={} if ready else {"Retry-After": "5"},
    )


class NativeController(Controller):
    tags = ["native"]

    @post("/v1/infer", status_code=HTTP_200_OK, summary="Run embed / classify / recommend")
    async def infer(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[InferRequest],
        runtime: NamedDependency[Runtime],
    ) -> Response[dict[str, Any]]:
        resp = await runtime.pipeline.infer(data, request.headers)
        return Response(resp.to_wire(), headers=route_headers(resp))

    @post("/v1/feedback", status_code=HTTP_202_ACCEPTED, summary="Score an experiment's answer")
    async def feedback(
        self, data: JSONBody[Feedback], runtime: NamedDependency[Runtime]
    ) -> dict[str, Any]:
        engine = runtime.experiments
        if data.id is not None:
            found = await engine.arm_of(data.id)
            if found is None:
                raise NotFound(
                    f"no experiment request {data.id!r} in the last "
                    f"{FEEDBACK_TTL_S // 3600} h (answers outside experiments take no feedback)"
                )
            name, arm = found
        else:
            name, arm = str(data.experiment), str(data.arm)
        experiment = runtime.policy.document.experiments.get(name)
        if experiment is None or arm not in experiment.arms:
            raise NotFound(f"the running policy has no experiment {name!r} with arm {arm!r}")
        # claimed last: a refusal above must not use up the answer's one score
        if data.id is not None and not await engine.claim(data.id):
            raise Conflict(f"answer {data.id!r} has feedback already (one score per answer)")
        engine.record_quality(name, arm, data.value)
        return {"experiment": name, "arm": arm, "value": data.value}

    @get("/healthz", summary="Liveness: the process is up", opt={"public": True})
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
    )
    async def readyz(self, runtime: NamedDependency[Runtime]) -> Response[dict[str, Any]]:
        return readiness(runtime)

    @get(
        "/metrics",
        summary="Prometheus metrics",
        media_type="text/plain; version=0.0.4",
        opt={"public": True},
    )
    async def metrics(self, runtime: NamedDependency[Runtime]) -> bytes:
        return runtime.metrics.render()
