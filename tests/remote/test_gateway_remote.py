"""A gateway routing to a real upstream on loopback: answers, failures, fallback, metrics.

Whatever the upstream does (garbage, 4xx, 5xx, hangs, hangs up), every door answers in its
own error format with the right status, no stack trace leaks, and the gateway keeps serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.upstream import Upstream, vector

Client = AsyncTestClient  # type: ignore[type-arg]

MODES = ["ok", "garbage", "wrong-shape", "500", "503", "400", "hang", "close"]


def policy(url: str) -> str:
    models = "\n".join(
        f"""  k-{m}:
    versions: {{"1": {{backend: kserve, url: "{url}", remote_model: "{m}", health_interval_s: 0.5}}}}
  o-{m}:
    versions: {{"1": {{backend: openai, url: "{url}", remote_model: "{m}", health_interval_s: 0.5}}}}"""
        for m in MODES
    )
    return f"""
version: 1
models:
{models}
routes:
  - {{name: k-hang, match: {{model: k-hang}}, model: k-hang, timeout_ms: 400}}
  - {{name: o-hang, match: {{model: o-hang}}, model: o-hang, timeout_ms: 400}}
  - name: k-close
    match: {{model: k-close}}
    model: k-close
    fallback: [{{model: o-ok}}]
    cache: {{ttl_s: 0}}
"""


@pytest.fixture(scope="module")
async def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    path = tmp_path_factory.mktemp("remote") / "policy.yaml"
    path.write_text(policy(upstream.url))
    async with AsyncTestClient(create_app(Settings(policy=path, policy_watch_s=0))) as client:
        yield client


async def infer(gw: Client, model: str, texts: list[str] | None = None) -> Any:
    body = {"model": model, "inputs": [{"text": t} for t in texts or ["a", "b"]], "cache": "bypass"}
    return await gw.post("/v1/infer", json=body)


@pytest.mark.parametrize("kind", ["k", "o"])
async def test_remote_models_answer_through_the_native_door(gw: Client, kind: str) -> None:
    r = await infer(gw, f"{kind}-ok", ["a red circle"])
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        r.json()["outputs"][0]["embedding"], vector("a red circle", 8), rtol=1e-6
    )
    assert r.json()["route"]["target"].startswith(f"{kind}-ok@1/http://127.0.0.1:")


@pytest.mark.parametrize("kind", ["k", "o"])
@pytest.mark.parametrize(
    ("mode", "status", "code", "fragment"),
    [
        ("garbage", 502, "backend_error", "answered garbage"),
        ("wrong-shape", 502, "backend_error", "answered garbage"),
        ("500", 502, "backend_error", "failed (500)"),
        ("503", 502, "backend_unavailable", "unavailable (503)"),
        ("400", 502, "upstream_rejected", "rejected the request (400)"),
        ("hang", 504, "backend_timeout", "did not answer"),
    ],
)
async def test_upstream_failures_are_problem_documents(
    gw: Client, upstream: Upstream, kind: str, mode: str, status: int, code: str, fragment: str
) -> None:
    r = await infer(gw, f"{kind}-{mode}")
    assert r.status_code == status, r.text
    doc = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert doc["code"] == code and fragment in doc["detail"], doc
    assert "Traceback" not in r.text and 'File "' not in r.text
    if code == "upstream_rejected":
        assert upstream.url in doc["detail"]
    assert (await infer(gw, f"{kind}-ok")).status_code == 200  # still serving


async def test_a_hung_up_connection_falls_back(gw: Client, upstream: Upstream) -> None:
    before = upstream.hits["close"]
    r = await infer(gw, "k-close", ["fallback please"])
    assert r.status_code == 200, r.text
    route = r.json()["route"]
    assert route["fallback"] is True and route["target"].startswith("o-ok@1/")
    assert upstream.hits["close"] > before
    np.testing.assert_allclose(
        r.json()["outputs"][0]["embedding"], vector("fallback please", 8), rtol=1e-6
    )


async def test_other_doors_speak_their_own_error_format(gw: Client) -> None:
    r = await gw.post("/v1/embeddings", json={"model": "k-garbage", "input": "x"})
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "server_error" and "garbage" in r.json()["error"]["message"]
    tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}
    r = await gw.post("/v2/models/o-hang/infer", json={"inputs": [tensor]})
    assert r.status_code == 504 and list(r.json()) == ["error"]
    r = await gw.post("/v2/models/k-ok/infer", json={"inputs": [tensor]})
    assert r.status_code == 200
    assert r.json()["outputs"][0]["shape"] == [1, 8]


async def test_remote_readiness_and_metadata_come_from_the_upstream(gw: Client) -> None:
    assert (await gw.get("/v2/models/k-ok/ready")).status_code == 200
    meta = (await gw.get("/v2/models/k-ok")).json()
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}]
    assert [i["name"] for i in meta["inputs"]] == ["text"]


async def test_upstream_calls_show_in_metrics(gw: Client) -> None:
    await infer(gw, "k-ok")
    await infer(gw, "o-500")
    text = (await gw.get("/metrics")).text
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }

    def find(name: str, **labels: str) -> float:
        return sum(
            v
            for (n, lb), v in got.items()
            if n == name and all(dict(lb).get(k, "").startswith(x) for k, x in labels.items())
        )

    assert find("prism_upstream_calls_total", target="k-ok@1/", outcome="ok") >= 1
    assert find("prism_upstream_calls_total", target="o-500@1/", outcome="backend_error") >= 1
    assert find("prism_upstream_call_seconds_count", target="k-ok@1/") >= 1
    assert find("prism_upstream_healthy", target="k-ok@1/") == 1


async def test_openai_door_passes_dimensions_to_an_openai_upstream(gw: Client) -> None:
    ok = await gw.post("/v1/embeddings", json={"model": "o-ok", "input": "x", "dimensions": 8})
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == 8
    # this upstream ignores `dimensions`: Prism notices the width is not what was asked, and
    # says so as the upstream's fault (502), not the caller's
    r = await gw.post("/v1/embeddings", json={"model": "o-ok", "input": "x", "dimensions": 4})
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"
    assert "answered 8 dimensions, not 4" in r.json()["error"]["message"]
    # a KServe model is not an OpenAI upstream: only its own width is accepted
    r = await gw.post("/v1/embeddings", json={"model": "k-ok", "input": "x", "dimensions": 4})
    assert r.status_code == 400 and "does not support 'dimensions'" in r.json()["error"]["message"]
