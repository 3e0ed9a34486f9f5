"""A real ``prism worker`` subprocess, and a gateway that routes to it with ``backend: kserve``."""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.support import PRISM, ROOT, free_port

Client = AsyncTestClient  # type: ignore[type-arg]

FAKE = "{backend: local, kind: fake, dim: 12, seed: 3, batching: {max_queue_delay_ms: 5}}"
WORKER_POLICY = f"""
version: 1
models:
  fake:
    versions: {{"1": {FAKE}}}
    labels: {{stable: "1"}}
"""


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("worker")
    (tmp / "worker.yaml").write_text(WORKER_POLICY)
    port = free_port()
    log = (tmp / "worker.log").open("wb")
    cmd = [
        *PRISM,
        "worker",
        "--policy",
        str(tmp / "worker.yaml"),
        "--model",
        "fake@stable",
        "--port",
        str(port),
        "--drain-grace-s",  # no load balancer to wait for: stop at once
        "0",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, (tmp / "worker.log").read_text()
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "worker did not become ready"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
async def gw(worker: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    path = tmp_path_factory.mktemp("gw") / "policy.yaml"
    path.write_text(f"""
version: 1
models:
  remote:
    versions: {{"1": {{backend: kserve, url: "{worker}", remote_model: fake}}}}
  local:
    versions: {{"1": {FAKE}}}
routes:
  - {{name: remote, model: remote, cache: {{ttl_s: 0}}}}
""")
    async with AsyncTestClient(create_app(Settings(policy=path, policy_watch_s=0))) as client:
        yield client


async def test_gateway_routes_to_the_worker(gw: Client) -> None:
    texts = [{"text": "a red circle"}, {"text": "a blue square"}]
    remote = await gw.post("/v1/infer", json={"inputs": texts})
    local = await gw.post("/v1/infer", json={"model": "local", "inputs": texts})
    assert remote.status_code == 200, remote.text
    assert remote.json()["route"]["target"].startswith("remote@1/http://127.0.0.1:")
    np.testing.assert_allclose(
        [o["embedding"] for o in remote.json()["outputs"]],
        [o["embedding"] for o in local.json()["outputs"]],
        rtol=1e-6,
    )
    classify = await gw.post(
        "/v1/infer",
        json={"task": "classify", "inputs": texts, "parameters": {"labels": ["red", "blue"]}},
    )
    assert classify.status_code == 200, classify.text
    assert [len(o["labels"]) for o in classify.json()["outputs"]] == [2, 2]


async def test_images_and_histories_travel_to_the_worker(gw: Client) -> None:
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    inputs = [
        {"image": {"base64": image}},
        {"text": "a caption", "image": {"base64": image}},
        {"user": "u1", "history": ["item-0", "item-2"]},
    ]
    remote = await gw.post("/v1/infer", json={"inputs": inputs})
    local = await gw.post("/v1/infer", json={"model": "local", "inputs": inputs})
    assert remote.status_code == 200, remote.text
    np.testing.assert_allclose(
        [o["embedding"] for o in remote.json()["outputs"]],
        [o["embedding"] for o in local.json()["outputs"]],
        rtol=1e-6,
    )
    body = {"task": "recommend", "inputs": inputs[2:], "parameters": {"top_k": 3}}
    rec = await gw.post("/v1/infer", json=body)
    assert rec.status_code == 200, rec.text
    ids = [i["id"] for i in rec.json()["outputs"][0]["items"]]
    assert ids == ["item-1", "item-3", "item-4"]  # the fake skips the user's history


async def test_the_workers_refusal_is_a_clear_502(gw: Client, worker: str) -> None:
    r = await gw.post("/v1/infer", json={"task": "classify", "inputs": [{"text": "x"}]})
    assert r.status_code == 502
    doc = r.json()
    assert doc["code"] == "upstream_rejected"
    assert worker in doc["detail"] and "classify needs parameters.labels" in doc["detail"]


def test_worker_speaks_kserve_to_tritonclient(worker: str) -> None:
    tc = triton.InferenceServerClient(worker.removeprefix("http://"))
    assert tc.is_server_live() and tc.is_model_ready("fake") and tc.is_model_ready("fake", "stable")
    assert tc.get_model_metadata("fake")["outputs"][0] == {
        "name": "embedding",
        "datatype": "FP32",
        "shape": [-1, 12],
    }
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([b"a", b"b", b"c"], dtype=object))
    assert tc.infer("fake", [tensor]).as_numpy("embedding").shape == (3, 12)
    with pytest.raises(Exception, match="this worker serves 'fake'"):
        tc.get_model_metadata("other")
    metrics = httpx.get(worker + "/metrics").text
    assert (
        'prism_requests_total{door="kserve",model="fake",route="worker",status="ok",target="fake@1/local",version="1"}'
        in metrics
    )
    assert 'prism_batch_size_count{target="fake@1/local"}' in metrics
    assert httpx.get(worker + "/readyz").status_code == 200


def test_worker_refuses_remote_and_unknown_models(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        WORKER_POLICY
        + '  remote:\n    versions: {"1": {backend: kserve, url: "http://x:1", remote_model: m}}\n'
    )
    for ref, message in [("remote@1", "is a remote backend"), ("nope", "unknown model 'nope'")]:
        proc = subprocess.run(
            [*PRISM, "worker", "--policy", str(policy), "--model", ref],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
