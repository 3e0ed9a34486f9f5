"""The fast lane: the inference doors answered straight from ASGI messages, in front of Litestar.

A cache hit spent more time in the framework (routing, the kwargs and signature models, a
``Response`` and its header structures, the exception and ``before_send`` wrappers) than in
Prism. :class:`Lane` answers the three inference routes itself, ``POST /v1/infer``,
``POST /v1/embeddings`` and ``POST /v2/models/{m}[/versions/{v}]/infer``, with the code the
Litestar handlers run, so both paths answer alike to the byte (``tests/test_lane.py``):

* the body: only one with a ``Content-Length`` within the body limit and at most
  :data:`~prism.gateway.doors._request.PARSE_ON_THREAD`, and no ``Content-Encoding``; chunked,
  compressed, large or too large bodies go to Litestar (``PrismRequest`` inflates them, parses
  them on a thread, or answers 413), as does a client that leaves mid-body;
* the native body: parsed by ``parse_json`` and validated by the same pydantic model the way
  Litestar does (``model_validate(strict=False)``); a body that fails either is handed to
  Litestar as it came (the ASGI messages replayed), so every 400 and 422 document is the
  framework's own;
* around the answer, the same middleware in the same order (``prism_in_flight_requests``,
  then the key, scope and limits of ``auth.py``, whose limit check for a cached key
  overlaps the request's own work here, answering alike), with Litestar's own route handler
  in the scope, so its ``opt`` (``metered``) reads the same;
* the answer: the doors' functions (``native.infer_answer``, ``openai.embeddings_answer``,
  ``kserve.infer_answer``), serialised by Litestar's JSON encoder, headers in its order;
* errors: the app's one exception handler (``doors/_errors.py``: normalised once, in the
  door's shape), rendered by Litestar's response class, as its exception middleware does;
* the response is recorded by the same :class:`~prism.gateway.recording.Recorder`, once, as
  it starts.

Every other request (other paths and methods, admin, docs, console, metrics, probes) goes to
Litestar untouched. ``PRISM_FAST_LANE=false`` sends every request there.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.routes import HTTPRoute
from litestar.serialization import encode_json, get_serializer
from litestar.types import ASGIApp, HTTPScope, Message, Receive, ReceiveMessage, Scope, Send

from .doors._errors import error_response
from .doors._model_server import PipelineModelServer
from .doors._request import PARSE_ON_THREAD, parse_json
from .doors.kserve import infer_answer as kserve_answer
from .doors.native import infer_answer as native_answer
from .doors.openai import embeddings_answer
from .recording import Recorder
from .runtime import Runtime
from .schema import InferRequest

#: where the lane puts the request it read, for the answer inside the middleware
_REQUEST_KEY = "prism.lane"
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_JSON = b"application/json"
_UNSET: Any = object()


class LaneRequest:
    """A request whose body the lane read: what the doors' answer functions read of one
    (:class:`~prism.gateway.doors._request.BodyRequest`), as ``PrismRequest`` has it."""

    __slots__ = ("_body", "_json", "headers", "scope")

    def __init__(self, scope: Scope, headers: Mapping[str, str], body: bytes) -> None:
        self.scope = scope
        #: lower-case names, the first of repeated ones (what Litestar's ``Headers.get`` reads)
        self.headers = headers
        self._body = body
        self._json = _UNSET

    async def body(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        if self._json is _UNSET:
            self._json = parse_json(self._body)
        return self._json


@dataclass(frozen=True, slots=True)
class _Route:
    #: the door's answer, inside the middleware (reads the request from the scope)
    answer: Callable[[Scope, Send], Awaitable[None]]
    #: Litestar's handler of the route: the middleware and the recorder read its ``opt``
    handler: HTTPRouteHandler
    #: the middleware stack around ``answer``, as Litestar wraps the handler
    app: ASGIApp
    serializer: Callable[[Any], Any]
    #: the native body is validated before the middleware, as Litestar's kwargs are
    validate: bool = False


def _handler(app: Litestar, path: str) -> HTTPRouteHandler:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path == path:
            return route.route_handler_map["POST"][0]
    raise LookupError(f"no POST {path} in the app")


def _replay(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` that gives the messages the lane already took first."""
    pending = deque(messages)

    async def replay() -> ReceiveMessage:
        return pending.popleft() if pending else await receive()

    return replay


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope["headers"]:
        key = name.decode("latin-1")
        if key not in out:
            out[key] = value.decode("latin-1")
    return out


class Lane:
    """The fast lane of one app (see the module)."""

    def __init__(
        self,
        app: Litestar,
        runtime: Runtime,
        recorder: Recorder,
        middleware: Callable[[ASGIApp], ASGIApp],
        litestar: ASGIApp,
    ) -> None:
        self.app = app
        self.runtime = runtime
        self.recorder = recorder
        #: where everything the lane does not answer goes
        self.litestar = litestar
        #: the largest body the lane reads itself
        self.max_body = min(runtime.settings.max_body_bytes, PARSE_ON_THREAD)
        self.server = PipelineModelServer(runtime)

        def route(path: str, answer: Callable[[Scope, Send], Awaitable[None]]) -> _Route:
            handler = _handler(app, path)
            serializer = get_serializer(handler.resolve_type_encoders())
            return _Route(answer, handler, middleware(self._inner), serializer, path == "/v1/infer")

        self.infer = route("/v1/infer", self._native)
        self.embeddings = route("/v1/embeddings", self._openai)
        self.kserve = route("/v2/models/{model:str}/infer", self._kserve)
        versioned = _handler(app, "/v2/models/{model:str}/versions/{version:str}/infer")
        assert versioned is self.kserve.handler, "one handler serves both v2 infer paths"

    def route(self, scope: HTTPScope) -> tuple[_Route, dict[str, str]] | None:
        """The lane's route for this request, and its path parameters; None: Litestar's."""
        if scope["method"] != "POST" or scope.get("root_path"):
            return None
        path = scope["path"]
        if path == "/v1/infer":
            return self.infer, {}
        if path == "/v1/embeddings":
            return self.embeddings, {}
        if path.startswith("/v2/models/") and (m := _V2_INFER.fullmatch(path)) is not None:
            model, version = m.groups()
            return self.kserve, {"model": model} if version is None else {
                "model": model,
                "version": version,
            }
        return None

    async def serve(
        self,
        route: _Route,
        path_params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-encoding":
                length = None
                break
        if length is None or not length.isdigit() or int(length) > self.max_body:
            await self.litestar(scope, receive, send)
            return
        messages: list[ReceiveMessage] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client left mid-body
                await self.litestar(scope, _replay(messages, receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        data: InferRequest | None = None
        if route.validate:
            try:
                data = InferRequest.model_validate(parse_json(body), strict=False)
            except Exception:  # Litestar answers it, with its own words
                await self.litestar(scope, _replay(messages, receive), send)
                return

        scope["app"] = scope["litestar_app"] = self.app
        scope.setdefault("state", {})
        scope["route_handler"] = route.handler
        scope["path_params"] = path_params
        scope[_REQUEST_KEY] = (LaneRequest(scope, _headers(scope), body), data, route)  # type: ignore[literal-required]
        started = False
        recorder = self.recorder

        async def recorded(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                await recorder(message, scope)
            await send(message)

        try:
            await route.app(scope, receive, recorded)
        except Exception as exc:
            if started:
                raise
            await self._error(route, scope, receive, recorded, exc)
        finally:
            # the request holds the scope that holds it: left as it is, every request would
            # leave a reference cycle (its scope, body and model) that only the collector
            # frees, and the collections that garbage set off traverse every request in
            # flight (at 64 concurrent remote calls, a tenth of the process's CPU)
            del scope[_REQUEST_KEY]  # type: ignore[misc]

    async def _error(
        self, route: _Route, scope: Scope, receive: Receive, send: Send, exc: Exception
    ) -> None:
        """As Litestar's exception middleware answers: the app's handler, its response class."""
        request = self.app.request_class(scope=scope, receive=receive, send=send)
        response = error_response(request, exc)
        encoders = route.handler.resolve_type_encoders()
        asgi = response.to_asgi_response(app=None, request=request, type_encoders=encoders)
        await asgi(scope, receive, send)

    async def _inner(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: _Route = scope[_REQUEST_KEY][2]  # type: ignore[literal-required]
        await route.answer(scope, send)

    async def _native(self, scope: Scope, send: Send) -> None:
        request, data, route = scope[_REQUEST_KEY]  # type: ignore[literal-required]
        body, headers = await native_answer(data, self.runtime, request.headers, scope)
        await _send(send, 200, headers, _JSON, encode_json(body, route.serializer))

    async def _openai(self, scope: Scope, send: Send) -> None:
        request, _, route = scope[_REQUEST_KEY]  # type: ignore[literal-required]
        body, headers = await embeddings_answer(request, self.server)
        await _send(send, 200, headers, _JSON, encode_json(body, route.serializer))

    async def _kserve(self, scope: Scope, send: Send) -> None:
        request = scope[_REQUEST_KEY][0]  # type: ignore[literal-required]
        params = scope["path_params"]
        body, media_type, headers = await kserve_answer(
            request, self.server, params["model"], params.get("version")
        )
        await _send(send, 200, headers, media_type.encode("latin-1"), body)


async def _send(
    send: Send, status: int, headers: Mapping[str, str], media_type: bytes, body: bytes
) -> None:
    """Start and body, the headers as Litestar's response lists them: the response's own
    (names lower-cased), then content-type and content-length."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-type", media_type))
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Gateway(Litestar):
    """Prism's app: Litestar, with the fast lane in front when it is on."""

    lane: Lane | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        lane = self.lane
        if lane is not None and scope["type"] == "http":
            found = lane.route(scope)
            if found is not None:
                await lane.serve(found[0], found[1], scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def install_lane(self, runtime: Runtime, recorder: Recorder, middleware: Any) -> None:
        """Answer the inference routes on the fast lane (call once the app is built)."""
        self.lane = Lane(self, runtime, recorder, middleware, super().__call__)


__all__ = ["Gateway", "Lane", "LaneRequest"]
