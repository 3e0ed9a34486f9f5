"""The native door: ``POST /v1/infer`` plus health and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from ..runtime import Runtime
from ..schema import InferRequest, InferResponse


def route_headers(resp: InferResponse) -> dict[str, str]:
    """The decision as response headers, for callers and proxies that only see headers."""
    r = resp.route
    headers = {"x-prism-route": f"{r.rule}; target={r.target}", "x-prism-cache": r.cache}
    if r.experiment:
        headers["x-prism-experiment"] = f"{r.experiment}; arm={r.arm}"
    return headers


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

    @get("/healthz", summary="Liveness: the process is up", opt={"public": True})
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", summary="Readiness: the policy's local models are loaded", opt={"public": True})
    async def readyz(self, runtime: NamedDependency[Runtime]) -> Response[dict[str, Any]]:
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
        ready = settled and not down
        return Response(
            {
                "status": "ready" if ready else "not ready",
                "models": models,
                **({"routes_down": down} if down else {}),
            },
            status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE,
            headers={} if ready else {"Retry-After": "5"},
        )

    @get(
        "/metrics",
        summary="Prometheus metrics",
        media_type="text/plain; version=0.0.4",
        opt={"public": True},
    )
    async def metrics(self, runtime: NamedDependency[Runtime]) -> bytes:
        return runtime.metrics.render()
