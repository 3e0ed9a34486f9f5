"""The native API end to end through create_app: answers, decisions, and every bad input."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings

POLICY = """
version: 1
models:
  fake:
    modalities: [text, image]
    versions:
      "1": {backend: local, kind: fake, dim: 16}
      "2": {backend: local, kind: fake, dim: 16, seed: 7}
    labels: {stable: "1", canary: "2"}
  other:
    versions:
      "1": {backend: local, kind: fake, dim: 4}
routes:
  - name: text
    match: {modality: [text], task: embed}
    model: fake
    version: stable
    cache: {ttl_s: 60}
  - name: tenant-b
    match: {modality: [image], headers: {x-tenant: b}}
    model: fake
    version: canary
    cache: {ttl_s: 0}
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    settings = Settings(policy=policy, policy_watch_s=0, max_inputs=8, max_body_bytes=64 * 1024)
    async with AsyncTestClient(create_app(settings)) as c:
        yield c


async def test_embed_answers_and_reports_the_decision(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    r = await client.post("/v1/infer", json={"inputs": [{"text": "a red circle"}, {"text": "b"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fake" and body["version"] == "1"
    assert body["id"].startswith("req_")
    vecs = [np.array(o["embedding"]) for o in body["outputs"]]
    assert [v.shape for v in vecs] == [(16,), (16,)]
    assert abs(np.linalg.norm(vecs[0]) - 1) < 1e-5
    assert body["route"]["rule"] == "text"
    assert body["route"]["target"] == "fake@1/local"
    assert body["route"]["cache"] == "miss"
    assert set(body["timing_ms"]) >= {"total", "backend"}
    assert r.headers["x-prism-cache"] == "miss"
    assert r.headers["x-prism-route"].startswith("text; target=fake@1/local")


async def test_second_identical_request_is_a_cache_hit(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    req = {"inputs": [{"text": "cache me"}]}
    first = (await client.post("/v1/infer", json=req)).json()
    second = await client.post("/v1/infer", json=req)
    assert second.json()["route"]["cache"] == "hit"
    assert second.headers["x-prism-cache"] == "hit"
    np.testing.assert_allclose(
        second.json()["outputs"][0]["embedding"], first["outputs"][0]["embedding"], rtol=1e-6
    )
    bypass = (await client.post("/v1/infer", json={**req, "cache": "bypass"})).json()
    assert bypass["route"]["cache"] == "bypass"
    refresh = (await client.post("/v1/infer", json={**req, "cache": "refresh"})).json()
    assert refresh["route"]["cache"] == "refresh"


async def test_version_by_label_and_id_and_headers_route(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    by_label = (
        await client.post(
            "/v1/infer", json={"model": "fake", "version": "canary", "inputs": [{"text": "x"}]}
        )
    ).json()
    by_id = (
        await client.post(
            "/v1/infer", json={"model": "fake", "version": "2", "inputs": [{"text": "x"}]}
        )
    ).json()
    assert by_label["version"] == by_id["version"] == "2"
    assert by_label["outputs"] == by_id["outputs"]
    png = base64.b64encode(b"\x89PNG not really").decode()
    tenant = await client.post(
        "/v1/infer", json={"inputs": [{"image": {"base64": png}}]}, headers={"x-tenant": "b"}
    )
    assert tenant.status_code == 200, tenant.text
    assert tenant.json()["route"]["rule"] == "tenant-b"
    assert tenant.json()["route"]["cache"] == "bypass"  # ttl_s: 0


async def test_model_without_route_is_addressable_directly(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    r = await client.post("/v1/infer", json={"model": "other", "inputs": [{"text": "x"}]})
    assert r.status_code == 200
    assert r.json()["route"]["rule"] == "model:other"
    assert len(r.json()["outputs"][0]["embedding"]) == 4


def _problem(r, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status
    assert body["detail"] and body["title"] and body["type"].startswith("https://")
    assert "Traceback" not in r.text
    return body


@pytest.mark.parametrize(
    ("body", "status", "code", "path"),
    [
        ("{not json", 400, "malformed_body", None),
        ("[1, 2]", 422, "invalid_input", None),
        ('{"inputs": []}', 422, "invalid_input", "inputs"),
        ('{"inputs": [{"text": 5}]}', 422, "invalid_input", "inputs[0].text"),
        ('{"inputs": [{}]}', 422, "invalid_input", "inputs[0]"),
        ('{"inputs": [{"text": "x"}], "task": "dance"}', 422, "invalid_input", "task"),
        ('{"inputs": [{"text": "x"}], "cache": "maybe"}', 422, "invalid_input", "cache"),
        ('{"inputs": [{"text": "x"}], "surprise": 1}', 422, "invalid_input", "surprise"),
        (
            '{"inputs": [{"text": "x"}], "routing": {"latency_budget_ms": -1}}',
            422,
            "invalid_input",
            "routing.latency_budget_ms",
        ),
        (
            '{"inputs": [{"image": {"base64": "@@@not base64"}}]}',
            422,
            "invalid_image",
            "inputs[0].image.base64",
        ),
        ('{"inputs": [{"image": {}}]}', 422, "invalid_input", "inputs[0].image"),
        ('{"inputs": [{"image": {"url": ""}}]}', 422, "invalid_input", "inputs[0].image.url"),
        ('{"model": "nope", "inputs": [{"text": "x"}]}', 404, "model_not_found", None),
        (
            '{"model": "fake", "version": "9", "inputs": [{"text": "x"}]}',
            404,
            "version_not_found",
            None,
        ),
        (
            '{"model": "fake", "version": "beta", "inputs": [{"text": "x"}]}',
            404,
            "version_not_found",
            None,
        ),
        ('{"inputs": [{"user": "u1", "history": ["a"]}]}', 422, "no_route", None),
        (
            json.dumps({"inputs": [{"text": str(i)} for i in range(9)]}),
            422,
            "invalid_input",
            "inputs",
        ),
    ],
)
async def test_bad_input_gets_a_problem_document(
    client: AsyncTestClient, body: str, status: int, code: str, path: str | None
) -> None:  # type: ignore[type-arg]
    r = await client.post("/v1/infer", content=body, headers={"content-type": "application/json"})
    problem = _problem(r, status)
    assert problem["code"] == code
    if path is not None:
        assert path in [e["path"] for e in problem["errors"]], problem
    # and the gateway keeps serving
    ok = await client.post("/v1/infer", json={"inputs": [{"text": "still up"}]})
    assert ok.status_code == 200


async def test_oversize_body_is_413(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    big = json.dumps({"inputs": [{"text": "a" * 70_000}]})
    problem = _problem(
        await client.post("/v1/infer", content=big, headers={"content-type": "application/json"}),
        413,
    )
    assert problem["code"] == "payload_too_large"


async def test_unknown_endpoint_and_method_are_problems(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert _problem(await client.get("/nothing"), 404)["code"] == "not_found"
    assert _problem(await client.get("/v1/infer"), 405)["code"] == "method_not_allowed"


async def test_health_readiness_and_openapi(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    for probe in ("/healthz", "/readyz"):  # load balancers probe with HEAD too
        head = await client.head(probe)
        assert head.status_code == 200 and head.content == b"", probe
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {
        "fake@1/local": "ready",
        "fake@2/local": "ready",
        "other@1/local": "ready",
    }
    schema = (await client.get("/schema/openapi.json")).json()
    assert (await client.get("/schema")).json() == schema  # offline: JSON, not a CDN page
    assert (await client.get("/schema/swagger")).status_code == 200
    assert "/v1/infer" in schema["paths"]


async def test_readyz_is_503_until_models_load(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    settings = Settings(policy=policy, policy_watch_s=0, load_models=False)
    async with AsyncTestClient(create_app(settings)) as c:
        r = await c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["retry-after"]
        problem = _problem(await c.post("/v1/infer", json={"inputs": [{"text": "x"}]}), 503)
        assert problem["code"] == "not_ready"
        assert r.headers["retry-after"]


async def test_concurrent_identical_misses_are_computed_once(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.replace("dim: 4}", "dim: 4, latency_ms: 200}"))
    app = create_app(Settings(policy=policy, policy_watch_s=0))
    async with AsyncTestClient(app) as c:
        req = {"model": "other", "inputs": [{"text": "same"}]}
        import asyncio

        results = await asyncio.gather(*(c.post("/v1/infer", json=req) for _ in range(8)))
        assert all(r.status_code == 200 for r in results)
        assert len({json.dumps(r.json()["outputs"]) for r in results}) == 1
        dep = next(
            d for d in app.state.runtime.deployments.all() if d.target.key == "other@1/local"
        )
        assert dep.backend.model._calls == 1


async def test_a_follower_never_inherits_the_leaders_failure(tmp_path: Path) -> None:
    # B joins A's in-flight computation of the same input, and A's call fails (the fake
    # fails every 2nd call). B must not get A's 502: it computes the input itself.
    import asyncio

    import httpx

    from tests.upstream import UvicornThread

    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.replace("dim: 4}", "dim: 4, latency_ms: 300, fail_every: 2}"))
    app = create_app(Settings(policy=policy, policy_watch_s=0))
    server = UvicornThread(app).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            warm = await c.post("/v1/infer", json={"model": "other", "inputs": [{"text": "w"}]})
            assert warm.status_code == 200  # call 1
            req = {"model": "other", "inputs": [{"text": "x"}]}

            async def after(delay_s: float) -> httpx.Response:
                await asyncio.sleep(delay_s)
                return await c.post("/v1/infer", json=req)

            leader, follower = await asyncio.gather(after(0), after(0.1))
        assert app.state.runtime.cache.stats.coalesced == 1
        assert leader.status_code == 502  # call 2 failed
        assert follower.status_code == 200, follower.text  # call 3: its own
    finally:
        server.stop()


async def test_api_keys_guard_everything_but_probes(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    settings = Settings(policy=policy, policy_watch_s=0, api_keys=["s3cret"])
    async with AsyncTestClient(create_app(settings)) as c:
        req = {"inputs": [{"text": "x"}]}
        missing = _problem(await c.post("/v1/infer", json=req), 401)
        assert missing["code"] == "unauthorized"
        assert (
            _problem(
                await c.post("/v1/infer", json=req, headers={"authorization": "Bearer nope"}), 401
            )["detail"]
            == "invalid API key"
        )
        assert (
            await c.post("/v1/infer", json=req, headers={"authorization": "Bearer s3cret"})
        ).status_code == 200
        assert (
            await c.post("/v1/infer", json=req, headers={"x-api-key": "s3cret"})
        ).status_code == 200
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/readyz")).status_code == 200


@pytest.mark.parametrize("api_keys", [["user-key"], []])
async def test_admin_keys_guard_the_admin_endpoints(tmp_path: Path, api_keys: list[str]) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    settings = Settings(
        policy=policy, policy_watch_s=0, api_keys=api_keys, admin_keys=["admin-key"]
    )

    def key(k: str) -> dict[str, str]:
        return {"authorization": f"Bearer {k}"}

    async with AsyncTestClient(create_app(settings)) as c:
        assert _problem(await c.get("/admin/policy"), 401)["code"] == "unauthorized"
        if api_keys:  # an inference key is valid, but not here
            assert (
                _problem(await c.get("/admin/policy", headers=key("user-key")), 403)["code"]
                == "forbidden"
            )
        assert (await c.get("/admin/policy", headers=key("admin-key"))).status_code == 200
        req = {"inputs": [{"text": "x"}]}
        answer = await c.post("/v1/infer", json=req, headers=key("admin-key"))
        assert answer.status_code == 200  # the admin key works everywhere
        # any bootstrap key turns keys on for inference too (as LiteLLM's master key does)
        assert (await c.post("/v1/infer", json=req)).status_code == 401
    # PRISM_REQUIRE_KEY=false keeps inference open beside admin keys
    settings = Settings(
        policy=policy, policy_watch_s=0, admin_keys=["admin-key"], require_key=False
    )
    async with AsyncTestClient(create_app(settings)) as c:
        assert (await c.post("/v1/infer", json=req)).status_code == 200
        assert (await c.get("/admin/policy")).status_code == 401


async def test_timing_reports_time_spent_queueing(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    slow = "dim: 4, latency_ms: 50, batching: {max_batch_size: 1}}"
    policy.write_text(POLICY.replace("dim: 4}", slow))
    async with AsyncTestClient(create_app(Settings(policy=policy, policy_watch_s=0))) as c:
        import asyncio

        reqs = [
            {"model": "other", "inputs": [{"text": f"q{i}"}], "cache": "bypass"} for i in range(3)
        ]
        results = await asyncio.gather(*(c.post("/v1/infer", json=r) for r in reqs))
        timings = [r.json()["timing_ms"] for r in results]
        # one forward at a time: whoever came second or third waited in the batcher's queue
        assert max(t["queue"] for t in timings) > 0
        assert all(t["total"] >= t["queue"] for t in timings)


async def test_model_at_version_reads_like_the_openai_door(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    r = await client.post("/v1/infer", json={"model": "fake@canary", "inputs": [{"text": "x"}]})
    assert r.status_code == 200, r.text
    assert (r.json()["model"], r.json()["version"]) == ("fake", "2")
    clash = {"model": "fake@canary", "version": "1", "inputs": [{"text": "x"}]}
    problem = _problem(await client.post("/v1/infer", json=clash), 422)
    assert "names version 'canary' but 'version' is '1'" in problem["detail"]


async def test_labels_without_a_task_mean_classify(client: AsyncTestClient) -> None:  # type: ignore[type-arg]
    body = {"model": "fake", "inputs": [{"text": "x"}], "parameters": {"labels": ["a", "b"]}}
    r = await client.post("/v1/infer", json=body)
    assert r.status_code == 200, r.text
    assert [x["label"] for x in r.json()["outputs"][0]["labels"]] in (["a", "b"], ["b", "a"])
    explicit = await client.post("/v1/infer", json={**body, "task": "embed"})
    assert "embedding" in explicit.json()["outputs"][0]  # an explicit task wins


def test_history_across_inputs_is_bounded() -> None:
    import pydantic

    from prism.gateway.schema import MAX_HISTORY_IDS, InferRequest

    each = {"user": "u", "history": ["i"] * 9_000}
    InferRequest.model_validate({"inputs": [each] * (MAX_HISTORY_IDS // 9_000)})
    with pytest.raises(pydantic.ValidationError, match="history ids in one request"):
        InferRequest.model_validate({"inputs": [each] * (MAX_HISTORY_IDS // 9_000 + 1)})
