"""``prism worker``: one local model version of a policy, served alone over KServe v2.

Heavy models run as their own processes (a Kubernetes Deployment each, scaled on their own);
the gateway reaches them with ``backend: kserve`` like any Triton/KServe server::

    prism worker --policy policies/default.yaml --model text-embed@1 --port 9000
    # gateway policy:  "2": {backend: kserve, url: http://text-worker:9000, remote_model: text-embed}

The worker runs the same KServe door as the gateway (:mod:`gateway.doors.kserve`) on a
:class:`BackendModelServer`: the model's batcher, no policy routing, no cache (the gateway in
front caches). It also answers ``/healthz``, ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from litestar import Litestar, Response, get, head
from litestar.di import Provide

from prism.backends import (
    Backend,
    KServeSpec,
    ModelNotFound,
    OpenAISpec,
    PrismError,
    TFServingSpec,
    VersionNotFound,
    build_backend,
)

from .doors._errors import error_response
from .doors._model_server import Answer, ModelServer, ServedModel, describe_capabilities
from .doors._request import PrismRequest
from .doors.kserve import kserve_router
from .draining import DEFAULT_GRACE_S, DEFAULT_TIMEOUT_S, Drain
from .inference import Inference
from .metrics import Metrics
from .policy import ModelEntry, compile_policy_file
from .recording import Recorder, RequestRecord
from .serving import add_drain_arguments, configure_logging, run_http

log = logging.getLogger("prism.worker")


class BackendModelServer:
    """One backend behind the KServe door: ``model`` at ``version`` (or one of its labels)."""

    door = "kserve"

    def __init__(
        self,
        backend: Backend,
        model: str,
        version: str,
        entry: ModelEntry,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.backend = backend
        self.model = model
        self.version = version
        self.entry = entry
        self.timeout_s = timeout_s
        self.aliases = {version} | {k for k, v in entry.labels.items() if v == version}

    async def ready(self) -> bool:
        return await self.backend.health()

    def describe(self, model: str, version: str | None) -> ServedModel:
        if model != self.model:
            raise ModelNotFound(f"unknown model {model!r}; this worker serves {self.model!r}")
        if version is not None and version not in self.aliases:
            raise VersionNotFound(
                f"model {model!r} has no version {version!r} here; this worker serves {self.version!r}"
            )
        return describe_capabilities(
            model,
            self.version,
            [self.version],
            self.backend.capabilities,
            self.entry.modalities,
            self.entry.tasks,
        )

    def models(self) -> list[ServedModel]:
        return [self.describe(self.model, None)]

    async def model_ready(self, model: ServedModel) -> bool:
        return await self.backend.health()

    async def infer(self, inference: Inference, record: RequestRecord) -> Answer:
        record.rule, record.model, record.version = "worker", self.model, self.version
        record.target = self.backend.name
        outputs = await self.backend.infer(
            inference.task, inference.items, inference.parameters, timeout_s=self.timeout_s
        )
        return Answer(self.model, self.version, outputs)


def create_worker_app(
    policy: Path,
    model_ref: str,
    *,
    data_dir: Path | None = None,
    timeout_s: float = 30.0,
    max_body_bytes: int = 16 * 2**20,
    drain: Drain | None = None,
) -> Litestar:
    """A KServe v2 app serving ``model_ref`` (``NAME``, ``NAME@VERSION`` or ``NAME@LABEL``).

    ``drain``: what SIGTERM does (``/readyz`` 503 for its grace period, then close); a
    default :class:`Drain` when not given."""
    drain = drain or Drain()
    compiled = compile_policy_file(str(policy), data_dir)
    name, _, wanted = model_ref.partition("@")
    version = compiled.resolve_version(name, wanted or None)
    spec = compiled.spec(name, version)
    if isinstance(spec, KServeSpec | OpenAISpec | TFServingSpec):
        raise PrismError(f"{name}@{version} is a remote backend; a worker serves local models")
    key = f"{name}@{version}/local"
    backend = build_backend(spec, base_dir=data_dir or Path.cwd(), name=key)
    metrics = Metrics()
    metrics.watch_backends(lambda: [(key, backend)])
    server = BackendModelServer(backend, name, version, compiled.models[name], timeout_s=timeout_s)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await backend.start()
        log.info("worker serves %s over KServe v2", key)
        drain.install()
        try:
            yield
        finally:
            drain.uninstall()
            await backend.aclose()

    @get("/healthz", sync_to_thread=False, opt={"public": True})
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @head("/healthz", sync_to_thread=False, opt={"public": True})
    def healthz_head() -> None:
        return None

    async def ready() -> str:
        if drain.draining:  # SIGTERM: gateways and load balancers move away first
            return "draining"
        return "ready" if await backend.health() else "not ready"

    @get("/readyz", opt={"public": True})
    async def readyz() -> Response[dict[str, Any]]:
        status = await ready()
        return Response({"status": status}, status_code=200 if status == "ready" else 503)

    @head("/readyz", opt={"public": True})
    async def readyz_head() -> Response[None]:
        return Response(None, status_code=200 if await ready() == "ready" else 503)

    @get(
        "/metrics",
        media_type="text/plain; version=0.0.4",
        sync_to_thread=False,
        opt={"public": True},
    )
    def metrics_endpoint() -> bytes:
        return metrics.render()

    def provide_server() -> ModelServer:
        return server

    return Litestar(
        route_handlers=[
            kserve_router(Provide(provide_server, sync_to_thread=False)),
            healthz,
            healthz_head,
            readyz,
            readyz_head,
            metrics_endpoint,
        ],
        lifespan=[lifespan],
        exception_handlers={Exception: error_response},
        # every request is recorded once, when its response starts (recording.py)
        before_send=[Recorder(metrics, lambda: {name: compiled.models[name]})],
        # prism_in_flight_requests, beside prism_queue_depth (deploy/ scales workers on it)
        middleware=[metrics.count_in_flight().middleware()],
        openapi_config=None,
        request_class=PrismRequest,
        request_max_body_size=max_body_bytes,
        debug=False,
    )


def _seconds(flag: float | None, variable: str, default: float) -> float:
    """A drain setting: the flag, else the environment (as ``prism serve`` reads it)."""
    if flag is not None:
        return flag
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise PrismError(f"{variable} must be seconds >= 0, got {os.environ[variable]!r}")
    return value


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    try:
        grace_s = _seconds(args.drain_grace_s, "PRISM_DRAIN_GRACE_S", DEFAULT_GRACE_S)
        timeout_s = _seconds(args.drain_timeout_s, "PRISM_DRAIN_TIMEOUT_S", DEFAULT_TIMEOUT_S)
        app = create_worker_app(
            args.policy,
            args.model,
            data_dir=args.data_dir,
            timeout_s=args.timeout_s,
            max_body_bytes=args.max_body_bytes,
            drain=Drain(grace_s),
        )
    except PrismError as exc:
        print(f"prism worker: {exc.detail}", file=sys.stderr)
        return 2
    run_http(app, args.host, args.port, args.log_level, drain_timeout_s=timeout_s)
    return 0


def add_worker_parser(sub: Any) -> None:
    """Register ``prism worker`` on the CLI's sub-parsers."""
    worker = sub.add_parser(
        "worker",
        help="serve one local model over KServe v2",
        description="Serve one local model version of a policy over KServe v2 "
        "(so a gateway can route to it with backend: kserve).",
    )
    worker.add_argument("--policy", type=Path, required=True, help="policy file defining the model")
    worker.add_argument(
        "--model", required=True, help="NAME@VERSION (a version id or label; NAME alone = stable)"
    )
    worker.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    worker.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    worker.add_argument(
        "--data-dir", type=Path, help="folder relative model paths resolve in (default: cwd)"
    )
    worker.add_argument(
        "--timeout-s", type=float, default=30.0, help="deadline per request (default 30)"
    )
    worker.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    worker.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(os.environ.get("PRISM_MAX_BODY_BYTES", 16 * 2**20)),
        help="larger requests get 413; keep it at least the gateway's "
        "(default: PRISM_MAX_BODY_BYTES, else 16 MiB)",
    )
    add_drain_arguments(worker)
    worker.set_defaults(handler=_run)
