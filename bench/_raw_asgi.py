"""Raw ASGI apps for ``bench/http_wrk.py``: no framework, constant answers, nothing parsed.

``static``: the ceiling, one constant JSON body for any request. ``litestar``: the same answer
from a bare Litestar app (one ``POST /v1/infer`` handler that reads the body and returns
constant bytes, no middleware, no hooks): the floor of any Litestar app, so the table shows how
much of Prism's cost is the framework's and how much its own. ``upstream``: a model server
that answers what Prism's remote backends send (``backends/_openai.py``, ``backends/_kserve.py``):

- ``POST /v1/embeddings``: one constant 384-float embedding, base64 float32 (Prism asks for
  ``encoding_format: base64``; the body is not read, so one input per request is assumed);
- ``POST /v2/models/{m}/infer``: a constant FP32 [1, 384] ``embedding`` in Triton's binary
  form (Prism asks for ``binary_data_output``);
- the probes and metadata those backends read: ``GET /v1/models``, ``GET /v2/models/{m}``,
  ``GET /v2/models/{m}/ready``, ``GET /v2/health/{live,ready}``.

Both run on uvicorn with httptools + uvloop, the HTTP stack ``prism serve`` uses:
``python -m bench._raw_asgi static|litestar|upstream PORT``.
"""

from __future__ import annotations

import base64
import json
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DIM = 384
_VECTOR = struct.pack(f"<{DIM}f", *([DIM**-0.5] * DIM))  # a unit vector, little-endian FP32


def _json_answer(doc: object, status: int = 200) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(doc, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers, body


def _kserve_infer() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    head = json.dumps(
        {
            "model_name": "emb",
            "model_version": "1",
            "outputs": [
                {
                    "name": "embedding",
                    "datatype": "FP32",
                    "shape": [1, DIM],
                    "parameters": {"binary_data_size": len(_VECTOR)},
                }
            ],
        },
        separators=(",", ":"),
    ).encode()
    body = head + _VECTOR
    headers = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(head)).encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    return 200, headers, body


STATIC = _json_answer({"status": "ok"})
EMBEDDINGS = _json_answer(
    {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": base64.b64encode(_VECTOR).decode()}
        ],
        "model": "emb",
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
)
KSERVE_INFER = _kserve_infer()
KSERVE_METADATA = _json_answer(
    {
        "name": "emb",
        "versions": ["1"],
        "platform": "bench",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}],
    }
)
READY = _json_answer({"ready": True})
MODELS = _json_answer({"object": "list", "data": [{"id": "emb", "object": "model"}]})
NOT_FOUND = _json_answer({"error": "no such endpoint"}, 404)


async def _drain(receive: Receive) -> None:
    """Read the request body to its end (and throw it away)."""
    while (await receive()).get("more_body", False):
        pass


async def _answer(send: Send, answer: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def static(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await _drain(receive)
    await _answer(send, STATIC)


def _route(method: str, path: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    parts = path.strip("/").split("/")
    if method == "POST":
        if parts == ["v1", "embeddings"]:
            return EMBEDDINGS
        if len(parts) == 4 and parts[:2] == ["v2", "models"] and parts[3] == "infer":
            return KSERVE_INFER
        return NOT_FOUND
    if parts == ["v1", "models"]:
        return MODELS
    if parts[:2] == ["v2", "health"] or (len(parts) == 4 and parts[3] == "ready"):
        return READY
    if len(parts) == 3 and parts[:2] == ["v2", "models"]:
        return KSERVE_METADATA
    return NOT_FOUND


async def upstream(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await _drain(receive)
    await _answer(send, _route(scope["method"], scope["path"]))


def bare_litestar() -> Any:
    from litestar import Litestar, Request, Response, post

    status, _, body = STATIC

    @post("/v1/infer", status_code=status)
    async def infer(request: Request[Any, Any, Any]) -> Response[bytes]:
        await request.body()
        return Response(body, media_type="application/json")

    namespace = {"Request": Request, "Response": Response}  # the hints are strings here
    return Litestar(
        [infer], openapi_config=None, logging_config=None, signature_namespace=namespace
    )


def main() -> None:
    import uvicorn

    apps = {"static": lambda: static, "upstream": lambda: upstream, "litestar": bare_litestar}
    app = apps[sys.argv[1]]()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[2]),
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
