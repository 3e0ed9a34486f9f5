"""Every endpoint the gateway has x every kind of caller, and the 403 of each door's shape.

The endpoints are read from the app itself, so a new endpoint is in the matrix the day it is
added: public ones answer everybody; admin ones only admin keys; the rest any valid key, but
a scoped key only for the models in its scope (403 naming the scope, in the door's format).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from tests.access.conftest import ADMIN, bearer, keyed_settings, make_key

CALLERS = ("none", "wrong", "revoked", "expired", "scoped_out", "scoped_in", "admin")
TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}
BODIES: dict[str, Any] = {
    "/v1/infer": {"model": "fake", "inputs": [{"text": "hello"}]},
    "/v1/embeddings": {"model": "fake", "input": "hello"},
    "/v1/feedback": {"experiment": "none", "arm": "none", "value": 1},
    "/v2/models/fake/infer": {"inputs": [TEXT]},
    "/v2/models/fake/versions/1/infer": {"inputs": [TEXT]},
    "/admin/keys": {"name": "matrix"},
    "/admin/keys/0123456789ab": {"rpm": 5},
}
PARAMS = {
    "model": "fake",
    "version": "1",
    "label": "stable",
    "name": "none",
    "key_id": "0123456789ab",
    "page": "experiments",
    "file_path": "console.js",
}


def endpoints(app: Litestar) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, concrete path, handler opt) for every HTTP endpoint of ``app``."""
    out = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith("/schema"):
            continue
        path = re.sub(r"\{(\w+):\w+\}", lambda m: PARAMS[m.group(1)], route.path)
        for method, handler in route.route_handler_map.items():
            if method != "OPTIONS":
                out.append((method, path, dict(handler[0].opt)))
    return sorted(out)


@pytest.fixture(scope="module")
async def matrix(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[AsyncTestClient, dict[str, str | None], Litestar]]:  # type: ignore[type-arg]
    app = create_app(keyed_settings(Path(tmp_path_factory.mktemp("matrix"))))
    async with AsyncTestClient(app) as c:
        revoked = await make_key(c)
        await c.delete(f"/admin/keys/{revoked['id']}", headers=bearer(ADMIN))
        keys: dict[str, str | None] = {
            "none": None,
            "wrong": "prism_0123456789ab_" + "x" * 43,
            "revoked": revoked["key"],
            "expired": (await make_key(c, expires_at=1.0))["key"],
            "scoped_out": (await make_key(c, models=["tagger"]))["key"],
            "scoped_in": (await make_key(c, models=["fake"]))["key"],
            "admin": (await make_key(c, admin=True, models=["tagger"]))["key"],
        }
        yield c, keys, app


def expected(method: str, path: str, opt: dict[str, Any], caller: str) -> set[int] | None:
    """The status a caller must get, or None: anything but 401/403."""
    if opt.get("public"):
        return None
    if caller in ("none", "wrong", "revoked", "expired"):
        return {401}
    if opt.get("admin"):
        return None if caller == "admin" else {403}
    names_model = "/fake" in path or path in ("/v1/infer", "/v1/embeddings")
    if caller == "scoped_out" and names_model:
        return {403}
    return None


async def test_every_endpoint_for_every_caller(matrix: Any) -> None:
    client, keys, app = matrix
    seen = 0
    for method, path, opt in endpoints(app):
        for caller in CALLERS:
            key = keys[caller]
            answer = await client.request(
                method,
                path,
                headers=bearer(key) if key else {},
                json=BODIES.get(path) if method in ("POST", "PATCH") else None,
            )
            want = expected(method, path, opt, caller)
            where = f"{method} {path} as {caller}: {answer.status_code} {answer.text[:200]}"
            if want is None:
                assert answer.status_code not in (401, 403), where
                assert answer.status_code < 500 or path.endswith("/ready"), where
            else:
                assert answer.status_code in want, where
            if key and key.startswith("prism_"):
                assert key not in answer.text, where  # a secret never comes back
            seen += 1
    assert seen >= 7 * 25  # the whole app: doors, probes, admin


async def test_a_scoped_key_gets_403_naming_the_scope_in_every_door(matrix: Any) -> None:
    client, keys, _ = matrix
    h = bearer(keys["scoped_out"])
    native = await client.post("/v1/infer", json=BODIES["/v1/infer"], headers=h)
    assert native.status_code == 403
    assert native.headers["content-type"].startswith("application/problem+json")
    assert native.json()["code"] == "out_of_scope" and native.json()["scope"] == "models"
    assert native.json()["allowed"] == ["tagger"] and "'fake'" in native.json()["detail"]
    # a route picked the model (no model named): still the scope of what was decided
    routed = await client.post("/v1/infer", json={"inputs": [{"text": "x"}]}, headers=h)
    assert routed.status_code == 403 and routed.json()["scope"] == "models"
    openai = await client.post("/v1/embeddings", json=BODIES["/v1/embeddings"], headers=h)
    assert openai.status_code == 403
    assert openai.json()["error"]["type"] == "permission_error"
    assert openai.json()["error"]["code"] == "out_of_scope"
    assert openai.json()["error"]["param"] == "model"
    assert "scope models" in openai.json()["error"]["message"]
    kserve = await client.post(
        "/v2/models/fake/infer", json=BODIES["/v2/models/fake/infer"], headers=h
    )
    assert kserve.status_code == 403 and "scope models" in kserve.json()["error"]
    # the model it may use works through every door
    tag = {"inputs": [TEXT], "parameters": {"labels": ["a", "b"]}}
    assert (await client.post("/v2/models/tagger/infer", json=tag, headers=h)).status_code == 200


async def test_lists_show_only_what_the_key_may_use(matrix: Any) -> None:
    client, keys, _ = matrix
    listed = await client.get("/v1/models", headers=bearer(keys["scoped_in"]))
    assert [m["id"] for m in listed.json()["data"]] == ["fake"]
    none = await client.get("/v1/models", headers=bearer(keys["scoped_out"]))
    assert none.json()["data"] == []  # tagger classifies; this door lists embedding models
    index = await client.post("/v2/repository/index", headers=bearer(keys["scoped_out"]))
    assert {m["name"] for m in index.json()} == {"tagger"}
    full = await client.post("/v2/repository/index", headers=bearer(ADMIN))
    assert {m["name"] for m in full.json()} == {"fake", "tagger"}


async def test_task_scope(matrix: Any) -> None:
    client, _, _ = matrix
    classify_only = (await make_key(client, tasks=["classify"]))["key"]
    body = {"model": "fake", "task": "embed", "inputs": [{"text": "x"}]}
    refused = await client.post("/v1/infer", json=body, headers=bearer(classify_only))
    assert refused.status_code == 403 and refused.json()["scope"] == "tasks"
    assert refused.json()["allowed"] == ["classify"]
    emb = await client.post(
        "/v1/embeddings", json={"model": "fake", "input": "x"}, headers=bearer(classify_only)
    )
    assert emb.status_code == 403 and "scope tasks" in emb.json()["error"]["message"]


FALLBACK_POLICY = """
version: 1
models:
  broken:
    modalities: [text]
    versions: {"1": {backend: local, kind: fake, dim: 4, fail_every: 1}}
  spare:
    modalities: [text]
    versions: {"1": {backend: local, kind: fake, dim: 4}}
routes:
  - name: text
    match: {modality: [text]}
    model: broken
    version: "1"
    retries: 0
    fallback: [{model: spare, version: "1"}]
"""


async def test_a_fallback_never_serves_a_model_outside_the_scope(tmp_path: Path) -> None:
    settings = keyed_settings(tmp_path)
    settings.policy.write_text(FALLBACK_POLICY)
    async with AsyncTestClient(create_app(settings)) as c:
        scoped = (await make_key(c, models=["broken"]))["key"]
        body = {"inputs": [{"text": "x"}], "cache": "bypass"}
        served = await c.post("/v1/infer", json=body, headers=bearer(ADMIN))
        assert served.status_code == 200 and served.json()["model"] == "spare"
        refused = await c.post("/v1/infer", json=body, headers=bearer(scoped))
        assert refused.status_code == 502, refused.text  # not answered by 'spare'
