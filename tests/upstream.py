"""Real HTTP servers on loopback for tests and benchmarks.

:class:`Upstream` is a small model server that speaks KServe v2 and OpenAI embeddings and
misbehaves on purpose. The *model name* picks the behaviour, so one server serves every
mode at once (``remote_model: garbage`` in a policy, ``model="hang"`` in an OpenAI body):

========= ===========================================================================
ok        a correct answer: deterministic unit vectors of width ``dim`` per text
slow      the same, after ``slow_s`` seconds
hang      never answers (until the client gives up)
garbage   200 with a body that is not JSON
500 / 503 that status with an error body
401       that status (a wrong key): the target is misconfigured
429       that status with Retry-After: 7
400       that status with an error body in the protocol's format
wrong-shape  JSON of the right kind with the wrong number of rows
nan       the right shape, with NaN and infinity in the vectors
close     reads the request and closes the connection without a word
========= ===========================================================================

It is written on raw asyncio streams (not on the code under test, and not on a framework
that would refuse to misbehave), runs in a thread with its own event loop, and counts what
it saw (``hits`` per mode, ``connections``, the ``peak`` of ``slow`` requests at once).
``healthy = False`` makes health checks fail.
:class:`UvicornThread` runs any ASGI app (a gateway, a worker) on loopback in a thread,
for clients that need a real socket (``tritonclient`` uses gevent, not asyncio).

Run ``python -m tests.upstream --port 9100`` for a standalone upstream (benchmarks).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import struct
import threading
from collections import Counter
from typing import Any
from urllib.parse import unquote

import numpy as np

MODES = (
    "ok", "slow", "hang", "garbage", "500", "503", "400", "401", "429", "wrong-shape", "nan",
    "close",
)  # fmt: skip


def vector(text: str, dim: int) -> np.ndarray:
    """The deterministic unit vector the upstream answers for ``text``."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    vec = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vec / np.linalg.norm(vec)


class _Close(Exception):
    """Drop the connection without answering."""


class Upstream:
    def __init__(self, *, dim: int = 8, slow_s: float = 0.3, port: int = 0) -> None:
        self.dim = dim
        self.slow_s = slow_s
        self.port = port
        self.healthy = True
        self.hits: Counter[str] = Counter()
        self.connections = 0
        #: ``slow`` requests being answered now, and the most at once
        self.busy = 0
        self.peak = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Upstream:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._serve(r, w)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(on_connect, "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            for t in list(tasks):  # hanging requests end with the server
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- HTTP/1.1, just enough -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                try:
                    status, payload, extra = await self._route(method, target.split("?")[0], body)
                except _Close:
                    return
                reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Status")
                out = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(payload)}"]
                out += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] == ["v2"]:
            return await self._v2(method, parts[1:], body)
        if parts[:2] == ["v1", "models"] and method == "GET":
            return self._json(200, {"object": "list", "data": [{"id": m} for m in MODES]})
        if parts[:2] == ["v1", "embeddings"] and method == "POST":
            return await self._openai(body)
        return self._json(404, {"error": f"no route {path}"})

    @staticmethod
    def _json(
        status: int, doc: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        return (
            status,
            json.dumps(doc).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    async def _misbehave(self, mode: str, error: Any) -> tuple[int, bytes, dict[str, str]] | None:
        """The answer of a failure mode, or None to answer properly."""
        self.hits[mode] += 1
        if mode == "slow":
            self.busy += 1
            self.peak = max(self.peak, self.busy)
            try:
                await asyncio.sleep(self.slow_s)
            finally:
                self.busy -= 1
        elif mode == "hang":
            await asyncio.sleep(3600)
        elif mode == "close":
            raise _Close
        elif mode == "garbage":
            return 200, b"<html>this is not json{", {"Content-Type": "application/json"}
        elif mode in ("500", "503", "400", "401"):
            return self._json(int(mode), error(f"failure {mode} on purpose"))
        elif mode == "429":
            status, body, headers = self._json(429, error("slow down"))
            return status, body, {**headers, "Retry-After": "7"}
        return None

    # --- KServe v2 ---------------------------------------------------------------------------

    async def _v2(
        self, method: str, parts: list[str], body: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        if parts[:1] == ["health"]:
            ok = self.healthy or parts[1:] == ["live"]
            return self._json(200 if ok else 503, {"ready": ok})
        if parts[:1] != ["models"] or len(parts) < 2 or parts[1] not in MODES:
            return self._json(404, {"error": "unknown model"})
        mode, rest = parts[1], parts[2:]
        if rest[:1] == ["versions"]:
            rest = rest[2:]
        if method == "GET" and rest == ["ready"]:
            return self._json(200 if self.healthy else 503, {"ready": self.healthy})
        if method == "GET" and not rest:
            return self._json(
                200,
                {
                    "name": mode,
                    "versions": ["1"],
                    "platform": "upstream",
                    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                    "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, self.dim]}],
                },
            )
        if method != "POST" or rest != ["infer"]:
            return self._json(404, {"error": "no such endpoint"})
        bad = await self._misbehave(mode, lambda m: {"error": m})
        if bad is not None:
            return bad
        req = json.loads(body)
        texts = next(i["data"] for i in req["inputs"] if i["name"] == "text")
        params = req.get("parameters") or {}
        task = params.get("task", "embed")
        rows = len(texts) + (1 if mode == "wrong-shape" else 0)
        if task == "classify":
            labels = params["labels"]
            scores = np.array(
                [
                    [float(vector(t, self.dim) @ vector(lb, self.dim)) for lb in labels]
                    for t in texts
                ],
                dtype=np.float32,
            )
            outputs = [
                ("label", "BYTES", [len(texts), len(labels)], [lb for _ in texts for lb in labels]),
                ("score", "FP32", [len(texts), len(labels)], scores.ravel()),
            ]
        else:
            matrix = np.stack(
                [vector(t, self.dim) for t in texts]
                + ([vector("x", self.dim)] if rows > len(texts) else [])
            )
            if mode == "nan":
                matrix[:, :2] = [np.nan, np.inf]
            outputs = [("embedding", "FP32", [rows, self.dim], matrix.ravel())]
        binary = bool(params.get("binary_data_output"))
        entries, blob = [], b""
        for name, dtype, shape, data in outputs:
            entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": shape}
            if binary:
                raw = (
                    np.asarray(data, dtype="<f4").tobytes()
                    if dtype == "FP32"
                    else b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in data)
                )
                entry["parameters"] = {"binary_data_size": len(raw)}
                blob += raw
            else:
                entry["data"] = data.tolist() if isinstance(data, np.ndarray) else list(data)
            entries.append(entry)
        head = json.dumps({"model_name": mode, "model_version": "1", "outputs": entries}).encode()
        if not blob:
            return 200, head, {"Content-Type": "application/json"}
        return (
            200,
            head + blob,
            {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(head)),
            },
        )

    # --- OpenAI embeddings -----------------------------------------------------------------

    async def _openai(self, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        req = json.loads(body)
        mode = req.get("model")
        if mode not in MODES:
            return self._json(
                404,
                {
                    "error": {
                        "message": f"model {mode} not found",
                        "type": "invalid_request_error",
                        "param": "model",
                        "code": None,
                    }
                },
            )
        bad = await self._misbehave(
            mode,
            lambda m: {
                "error": {
                    "message": m,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        )
        if bad is not None:
            return bad
        texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
        if mode == "wrong-shape":
            texts = texts[:-1]
        data = []
        for i, t in enumerate(texts):
            vec = vector(t, self.dim)
            if mode == "nan":
                vec[:2] = [np.nan, np.inf]
            emb: Any = (
                base64.b64encode(vec.astype("<f4").tobytes()).decode()
                if req.get("encoding_format") == "base64"
                else vec.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": mode,
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            },
        )


class UvicornThread:
    """An ASGI app served by uvicorn on a free loopback port, in a background thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        from tests.support import free_port

        self.port = port or free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> UvicornThread:
        import time

        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--dim", type=int, default=8)
    args = parser.parse_args()
    up = Upstream(dim=args.dim, port=args.port)
    print(f"upstream on 127.0.0.1:{args.port}", flush=True)
    asyncio.run(up._main())


if __name__ == "__main__":
    main()
