"""The fast lane (``gateway/lane.py``) and Litestar answer every inference request alike.

Each case sends the same request to one app twice: once with the lane on, once with it off
(everything through Litestar), and compares status, headers and body byte for byte. Only what
differs between any two requests is masked: the answer's random ``id``, its ``timing_ms``, the
``content-length`` that follows from them, and a rate limit's seconds-to-wait.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prism.gateway.app import YOUNG_COLLECTION_OBJECTS, create_app
from prism.gateway.lane import Gateway
from prism.gateway.settings import Settings
from tests.doors.conftest import POLICY

Client = AsyncTestClient  # type: ignore[type-arg]
ADMIN = "lane-admin-secret"
API = "lane-api-secret"
TEXT = {"inputs": [{"text": "a red circle"}]}
V2_TEXT = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a red circle"]}]
}
#: bodies past 1 KiB are refused by these gateways (the setting's floor)
LIMIT = 1024

_ID = re.compile(rb'"id":"req_[0-9a-f]{16}"')
_TIMING = re.compile(rb'"timing_ms":\{[^}]*\}')
_MASKED_HEADERS = {"content-length", "retry-after", "ratelimit", "date"}


def _masked(body: bytes) -> bytes:
    return _TIMING.sub(b'"timing_ms":{}', _ID.sub(b'"id":"req_"', body))


class Both:
    """One app, asked once on the lane and once through Litestar alone."""

    def __init__(self, client: Client) -> None:
        self.client = client
        app = client.app
        assert isinstance(app, Gateway) and app.lane is not None
        self.app: Gateway = app
        self.lane = app.lane
        #: what the lane handed to Litestar (a request it does not answer itself)
        self.handed_over = 0
        litestar = self.lane.litestar

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            self.handed_over += 1
            await litestar(scope, receive, send)

        self.lane.litestar = counting

    async def send(self, lane: bool, method: str, path: str, **kwargs: Any) -> httpx.Response:
        self.app.lane = self.lane if lane else None
        try:
            return await self.client.request(method, path, **kwargs)
        finally:
            self.app.lane = self.lane

    async def same(
        self,
        path: str,
        *,
        before: Callable[[], Any] | None = None,
        answered_on_lane: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """POST ``path`` both ways; both answers alike. ``before`` runs before each (a cache
        to empty); ``answered_on_lane``: the lane answers it itself, or hands it over."""
        answers = []
        for lane in (True, False):
            if before is not None:
                await before()
            handed = self.handed_over
            answers.append(await self.send(lane, "POST", path, **kwargs))
            if lane:
                assert (self.handed_over == handed) == answered_on_lane
        on_lane, through_litestar = answers
        assert on_lane.status_code == through_litestar.status_code
        assert _masked(on_lane.content) == _masked(through_litestar.content), (
            on_lane.content,
            through_litestar.content,
        )

        def headers(r: httpx.Response) -> list[tuple[str, str]]:
            raw = [(k.decode().lower(), v.decode()) for k, v in r.headers.raw]
            return [(k, v) for k, v in raw if k not in _MASKED_HEADERS]

        assert headers(on_lane) == headers(through_litestar)
        for r in answers:
            assert int(r.headers["content-length"]) == len(r.content)
            assert ("retry-after" in r.headers) == ("retry-after" in through_litestar.headers)
        return on_lane


def _app(tmp: Path, **settings: Any) -> Litestar:
    path = tmp / "policy.yaml"
    path.write_text(POLICY)
    return create_app(
        Settings(policy=path, policy_watch_s=0, max_body_bytes=LIMIT, **settings)  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
async def both(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Both]:
    async with AsyncTestClient(_app(tmp_path_factory.mktemp("lane"))) as client:
        yield Both(client)


@pytest.fixture(params=["file", "redis"])
async def keyed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Both]:
    """Keys in a file, or in Redis (where the lane overlaps a cached key's limit check with
    the request's own work: ``auth.py``)."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    app = _app(tmp_path, api_keys=[API], admin_keys=[ADMIN], max_inputs=256, redis_url=redis_url)
    async with AsyncTestClient(app) as client:
        yield Both(client)


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def _empty_cache(client: Client) -> None:
    store = client.app.state.runtime.cache.store
    await store.aclose()  # the memory store: every entry gone


def _counted(metrics: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(("prism_requests_total", "prism_errors_total", "prism_cache_lookups"))
    }


async def test_a_hit_on_each_door(both: Both) -> None:
    for path, body in (
        ("/v1/infer", TEXT),
        ("/v1/embeddings", {"model": "fake", "input": ["a red circle"]}),
        ("/v1/embeddings", {"model": "fake", "input": "a red circle", "encoding_format": "base64"}),
        ("/v2/models/fake/infer", V2_TEXT),
        ("/v2/models/fake/versions/stable/infer", V2_TEXT),
    ):
        await both.send(True, "POST", path, json=body)  # fills the cache
        answer = await both.same(path, json=body)
        assert answer.status_code == 200 and answer.headers["x-prism-cache"] == "hit"


async def test_a_miss_and_its_recording(both: Both) -> None:
    async def empty() -> None:
        await _empty_cache(both.client)

    before = _counted((await both.client.get("/metrics")).text)
    answer = await both.same("/v1/infer", json=TEXT, before=empty)
    assert answer.headers["x-prism-cache"] == "miss"
    after = _counted((await both.client.get("/metrics")).text)
    changed = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
    # two requests, each counted once, in the same series
    ok = 'prism_requests_total{door="native",model="fake",route="text",status="ok",target="fake@1/local",version="1"}'
    assert changed == {ok: 2.0, 'prism_cache_lookups_total{result="miss"}': 2.0}


async def test_a_hit_answers_the_bytes_a_miss_does(both: Both) -> None:
    """A hit's JSON is made once and kept (``CachedOutput``): the same bytes as the miss's."""
    _outputs = re.compile(rb'"outputs":.*,"route"')
    texts = ["a red circle", "ünïcödé 🚀", "a blue square"]
    for path, body in (
        ("/v1/infer", {"inputs": [{"text": t} for t in texts]}),
        ("/v1/embeddings", {"model": "fake", "input": texts}),
        (
            "/v2/models/fake/infer",
            {**V2_TEXT, "inputs": [{**V2_TEXT["inputs"][0], "shape": [3], "data": texts}]},
        ),
    ):
        await _empty_cache(both.client)
        miss = await both.send(True, "POST", path, json=body)
        hit = await both.send(True, "POST", path, json=body)
        assert (miss.headers["x-prism-cache"], hit.headers["x-prism-cache"]) == ("miss", "hit")
        if path == "/v1/infer":
            assert _outputs.search(miss.content)[0] == _outputs.search(hit.content)[0]  # type: ignore[index]
        else:
            assert miss.content == hit.content


async def test_errors_recorded_alike(both: Both) -> None:
    before = _counted((await both.client.get("/metrics")).text)
    await both.same("/v1/infer", json={"model": "nope", **TEXT})
    after = _counted((await both.client.get("/metrics")).text)
    changed = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k)}
    assert changed == {
        'prism_requests_total{door="native",model="",route="",status="model_not_found",target="",version=""}': 2.0,
        'prism_errors_total{code="model_not_found"}': 2.0,
    }


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"inputs": [{"text": "a"}', 400),  # truncated
        (b"", 400),
        (b"\xff\xfe", 400),  # not UTF-8
        (b"[1, 2]", 422),
        (b'{"inputs": "text"}', 422),
        (b'{"inputs": [{"text": 5}]}', 422),
        (b'{"inputs": [{}]}', 422),
        (b'{"inputs": [{"text": "a"}], "extra": 1}', 422),
        (b'{"model": "fake@", "inputs": [{"text": "a"}]}', 422),
        (b'{"inputs": [{"text": "a"}], "routing": {"latency_budget_ms": -1}}', 422),
    ],
)
async def test_bodies_litestar_refuses_are_its_own_answer(
    both: Both, body: bytes, status: int
) -> None:
    headers = {"content-type": "application/json"}
    answer = await both.same("/v1/infer", content=body, headers=headers, answered_on_lane=False)
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/infer", {"model": "nope", **TEXT}, 404),
        ("/v1/infer", {"model": "fake", "version": "9", **TEXT}, 404),
        ("/v1/infer", {"model": "tagger", "task": "embed", **TEXT}, 422),
        ("/v1/infer", {"inputs": [{"image": {"base64": "bm90IGFuIGltYWdl"}}]}, 422),
        ("/v1/embeddings", {"model": "nope", "input": "a"}, 404),
        ("/v1/embeddings", {"model": "fake", "input": [1, 2]}, 400),
        ("/v1/embeddings", {"model": "fake@9", "input": "a"}, 404),
        ("/v2/models/nope/infer", V2_TEXT, 404),
        ("/v2/models/fake/versions/9/infer", V2_TEXT, 404),
        ("/v2/models/fake/infer", {"inputs": [{"name": "text"}]}, 400),
    ],
)
async def test_errors_on_the_lane_are_the_doors_own(
    both: Both, path: str, body: dict[str, Any], status: int
) -> None:
    answer = await both.same(path, json=body)
    assert answer.status_code == status


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/v1/embeddings", b"{not json"),
        ("/v1/embeddings", b"[]"),
        ("/v2/models/fake/infer", b"{not json"),
    ],
)
async def test_malformed_bodies_on_the_other_doors(both: Both, path: str, content: bytes) -> None:
    answer = await both.same(path, content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 400


async def test_an_oversize_body_is_litestars_413(both: Both) -> None:
    big = json.dumps({"inputs": [{"text": "x" * (2 * LIMIT)}]}).encode()
    for path in ("/v1/infer", "/v1/embeddings", "/v2/models/fake/infer"):
        answer = await both.same(path, content=big, answered_on_lane=False)
        assert answer.status_code == 413


async def test_compressed_bodies_go_to_litestar(both: Both) -> None:
    import gzip

    body = gzip.compress(json.dumps(TEXT).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    answer = await both.same("/v1/infer", content=body, headers=headers, answered_on_lane=False)
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/json"]
)
async def test_whatever_the_content_type(both: Both, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    await both.send(True, "POST", "/v1/infer", content=json.dumps(TEXT), headers=headers)
    answer = await both.same("/v1/infer", content=json.dumps(TEXT), headers=headers)
    assert answer.status_code == 200


async def test_other_routes_are_litestars(both: Both) -> None:
    handed = both.handed_over
    for method, path in (
        ("GET", "/v1/infer"),
        ("POST", "/v1/infer/"),
        ("POST", "/v2/models//infer"),
    ):
        on_lane = await both.send(True, method, path, json=TEXT)
        through_litestar = await both.send(False, method, path, json=TEXT)
        assert on_lane.status_code == through_litestar.status_code
        assert _masked(on_lane.content) == _masked(through_litestar.content)
    assert both.handed_over == handed  # never the lane's: not even read


async def test_draining_serves_on_alike(both: Both) -> None:
    """SIGTERM: /readyz answers 503 + Retry-After, inference is still served on both paths."""
    drain = both.app.state.runtime.drain
    drain.draining = True
    try:
        ready = await both.client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        answer = await both.same("/v1/infer", json=TEXT)
        assert answer.status_code == 200
    finally:
        drain.draining = False


async def test_keys_missing_invalid_scoped_and_rate_limited(keyed: Both) -> None:
    missing = await keyed.same("/v1/infer", json=TEXT)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    for path, body in (("/v1/infer", TEXT), ("/v1/embeddings", {"model": "fake", "input": "a"})):
        invalid = await keyed.same(path, json=body, headers=_bearer("prism_nope_secret"))
        assert invalid.status_code == 401
        await keyed.send(True, "POST", path, json=body, headers=_bearer(API))  # a hit next
        assert (await keyed.same(path, json=body, headers=_bearer(API))).status_code == 200
    made = await keyed.client.post(
        "/admin/keys",
        json={"name": "lane", "models": ["tagger"], "rpm": 5},
        headers=_bearer(ADMIN),
    )
    assert made.status_code == 201, made.text
    key = _bearer(made.json()["key"])
    scoped = await keyed.same("/v2/models/fake/infer", json=V2_TEXT, headers=key)
    assert scoped.status_code == 403
    classify = {"model": "tagger", "parameters": {"labels": ["a", "b"]}, **TEXT}
    await keyed.send(True, "POST", "/v1/infer", json=classify, headers=key)  # a hit next
    assert (await keyed.same("/v1/infer", json=classify, headers=key)).status_code == 200
    limited = await keyed.same("/v1/infer", json=classify, headers=key)
    assert limited.status_code == 429 and "retry-after" in limited.headers


def test_a_cached_outputs_json_is_made_once_and_is_the_same_bytes() -> None:
    import numpy as np
    from litestar.serialization import encode_json

    from prism.gateway.cache import CachedOutput, decode_output, encode_output
    from prism.gateway.schema import wire_output

    vector = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    output = {"embedding": vector, "note": "ünï", "labels": [{"label": "a", "score": 0.5}]}
    cached = CachedOutput(decode_output(encode_output(output)))
    plain = {"outputs": [{k: v.tolist() if k == "embedding" else v for k, v in cached.items()}]}
    first = wire_output(cached)
    assert wire_output(cached) is first  # made once
    assert encode_json({"outputs": [first]}) == encode_json(plain)


async def _call(app: Gateway, path: str, doc: dict[str, Any]) -> int:
    """One request straight to the ASGI app, as uvicorn hands it over; its status."""
    body = json.dumps(doc).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "POST",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # in a task of its own, as the server runs each request
    await asyncio.create_task(app(scope, receive, send))
    return int(sent[0]["status"])


async def test_a_request_on_the_lane_leaves_no_reference_cycles(tmp_path: Path) -> None:
    """Whatever a request made is freed when it ends, never left for the cycle collector:
    the app raises the collector's young-generation threshold on that (``gateway/app.py``);
    garbage from every request would set collections off again, each one traversing every
    request in flight. (A failure still leaves its exception's traceback in a cycle: the
    collector runs now and then on those, not on every answer.)"""
    bypass = {"cache": "bypass"}
    cases = [
        ("/v1/infer", TEXT),  # a hit once the first has filled the cache
        ("/v1/infer", {**TEXT, **bypass}),  # computed by the model every time
        ("/v1/embeddings", {"model": "fake", "input": ["a red circle"]}),
        ("/v2/models/fake/infer", V2_TEXT),
        ("/v2/models/fake/infer", {**V2_TEXT, "parameters": bypass}),
    ]
    before = gc.get_threshold()
    app = _app(tmp_path)
    assert isinstance(app, Gateway)
    async with app.lifespan():  # on this test's loop, as the server runs it
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_OBJECTS
        for path, doc in cases:
            await _call(app, path, doc)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            statuses = [await _call(app, path, doc) for path, doc in cases for _ in range(5)]
            gc.collect()
        finally:
            gc.set_debug(0)
            left = Counter(type(o).__qualname__ for o in gc.garbage)
            gc.garbage.clear()
    assert gc.get_threshold() == before
    assert statuses == [200] * 25
    assert not left, left
