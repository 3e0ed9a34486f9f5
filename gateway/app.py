"""``create_app``: builds a gateway from settings; the lifespan owns every resource."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.types import ASGIApp

from .admin import AdminController
from .admin_keys import KeysController
from .admin_models import ModelsController
from .auth import access_middleware
from .cache import ResponseCache
from .console import ConsolePages, console_static, offline_swagger, swagger_static
from .doors._errors import error_response
from .doors._openapi import WireSchemaPlugin
from .doors._request import PrismRequest
from .doors.kserve import gateway_kserve_router
from .doors.native import NativeController
from .doors.openai import openai_router
from .lane import Gateway
from .policy import CompiledPolicy
from .recording import Recorder
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger("prism")

#: the collector's young-generation threshold while the app serves (Python's default: 700)
YOUNG_COLLECTION_OBJECTS = 10_000


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
        rt.drain.install()  # from now on SIGTERM drains (the server's own handler until then)
        # what start-up made (modules, models, the policy: ~100k objects) moves out of the
        # collector's way: a full collection then scans what requests made, a ~10 ms pause
        # on the event loop instead of ~60 ms (the p99 of every request waiting behind it)
        gc.collect()
        gc.freeze()
        # A request leaves no reference cycles behind (tests/test_lane.py), so young collections
        # are set off only by what requests in flight hold: at 64 concurrent remote calls
        # that passes the default 700 objects a hundred times per 1,000 requests, each
        # collection traversing every request in flight (~30 us of CPU per request). Above the
        # live set of such a load, a collection comes only when garbage does.
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_OBJECTS, *thresholds[1:])
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()  # collectable again (tests build many apps in one process)
            rt.drain.uninstall()
            await rt.aclose()  # pushes the last experiment counters to Redis

    async def provide_runtime() -> Runtime:
        return rt

    in_flight = rt.metrics.count_in_flight()
    access = access_middleware(rt.access)
    recorder = Recorder(rt.metrics, rt.known_models, rt.experiments)
    app = Gateway(
        route_handlers=[
            NativeController,
            AdminController,
            ModelsController,
            KeysController,
            openai_router(),
            gateway_kserve_router(),
            ConsolePages,
            console_static(),
            *swagger_static(),
        ],
        dependencies={"runtime": Provide(provide_runtime, use_cache=True)},
        lifespan=[lifespan],
        # outermost first: prism_in_flight_requests (what the autoscaler scales on, deploy/)
        # counts every request, then the key check (and its limits' lease) wraps the handler
        middleware=[in_flight.middleware(), *([access] if access is not None else [])],
        exception_handlers={Exception: error_response},
        # every request is recorded once, when its response starts (recording.py)
        before_send=[recorder],
        request_max_body_size=settings.max_body_bytes,
        request_class=PrismRequest,
        plugins=[WireSchemaPlugin()],  # request bodies documented as pydantic validates them
        openapi_config=OpenAPIConfig(
            title="Prism",
            version="1",
            description="Multimodal model gateway: one API for text, image and recommendation models.",
            path="/schema",
            # JSON first; /schema/swagger loads Swagger UI from this gateway (works offline)
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"]), offline_swagger()],
        ),
        debug=False,
    )
    app.state.runtime = rt
    if settings.fast_lane:
        # the inference routes answered in front of the framework, by the same code
        # (gateway/lane.py): the same middleware, in the same order, around the answers,
        # the key's limit check overlapping the request's own work (auth.py)
        lane_access = access_middleware(rt.access, overlap=True)

        def middleware(answer: ASGIApp) -> ASGIApp:
            return in_flight.wrap(lane_access(answer) if lane_access is not None else answer)

        app.install_lane(rt, recorder, middleware)
    return app
