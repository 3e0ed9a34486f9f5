"""Remote models with their own tensors, on a real Triton server (PyTriton) on loopback.

``embedder`` takes ``TEXT`` (BYTES [-1, 1]) and gives ``EMBEDDING`` (FP32 [-1, 8]); the
contract maps Prism's ``text``/``embedding`` onto them, and every door reaches it. A
contract the model's metadata contradicts is refused at load (``/readyz`` names it with
file:line) and at reload, and an upstream that comes back serving another contract is
named too, each time as a 503, never a 502 per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.peers import PeerProcess, pytriton

pytestmark = pytest.mark.timeout(300)

Client = AsyncTestClient[Litestar]


@pytest.fixture(scope="module")
def triton() -> Iterator[PeerProcess]:
    peer = pytriton(["embedder", "classifier", "ranker"]).start()
    yield peer
    peer.stop()


def policy(url: str, tensors: str, *, model: str = "embedder", extra: str = "") -> str:
    return f"""
version: 1
models:
  remote:
    versions:
      "3":
        backend: kserve
        url: "{url}"
        remote_model: {model}
        health_interval_s: 0.2
        tensors:
{tensors}
{extra}
routes:
  - name: text
    match: {{modality: [text]}}
    model: remote
    cache: {{ttl_s: 0}}
"""


GOOD = """\
          inputs: {text: TEXT}
          outputs: {embedding: EMBEDDING}"""


@asynccontextmanager
async def gateway(tmp_path: Path, text: str) -> AsyncIterator[Client]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    app = create_app(Settings(policy=path, policy_watch_s=0, data_dir=tmp_path))
    async with AsyncTestClient(app) as client:
        yield client


def triton_embeddings(url: str, texts: list[str]) -> np.ndarray:
    """What the model itself answers, asked directly in its own tensor names."""
    body = {
        "inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}]
    }
    r = httpx.post(f"{url}/v2/models/embedder/infer", json=body, timeout=10)
    r.raise_for_status()
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


async def test_the_contract_reaches_the_model_through_every_door(
    triton: PeerProcess, tmp_path: Path
) -> None:
    texts = ["a red circle", "a blue square", "ünïcode ✓"]
    want = triton_embeddings(triton.url, texts)
    async with gateway(tmp_path, policy(triton.url, GOOD)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text

        native = await client.post("/v1/infer", json={"inputs": [{"text": t} for t in texts]})
        assert native.status_code == 200, native.text
        got = np.array([o["embedding"] for o in native.json()["outputs"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

        openai = await client.post("/v1/embeddings", json={"model": "remote", "input": texts})
        assert openai.status_code == 200, openai.text
        got = np.array([d["embedding"] for d in openai.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)

        v2 = await client.post(
            "/v2/models/remote/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]},
        )
        assert v2.status_code == 200, v2.text
        out = v2.json()["outputs"][0]
        assert out["name"] == "embedding" and out["shape"] == [3, 8]
        np.testing.assert_allclose(
            np.asarray(out["data"], dtype=np.float32).reshape(3, 8), want, rtol=0, atol=1e-6
        )
        # the model's width comes from its metadata, and images are not what it takes
        meta = (await client.get("/v2/models/remote")).json()
        assert meta["outputs"][0]["shape"][-1] == 8
        image = await client.post(
            "/v1/infer", json={"inputs": [{"image": {"base64": "aGk="}}], "model": "remote"}
        )
        assert image.status_code == 422, image.text


@pytest.mark.parametrize(
    ("tensors", "where", "reason"),
    [
        (
            "          inputs: {text: TEXT}\n          outputs: {embedding: EMBEDDINGS}",
            ":13: models.remote.versions.3.tensors.outputs.embedding:",
            "the model has no output 'EMBEDDINGS' (it has: EMBEDDING)",
        ),
        (
            "          inputs: {text: TEXT}\n"
            "          outputs: {embedding: {name: EMBEDDING, datatype: FP16}}",
            ":13: models.remote.versions.3.tensors.outputs.embedding:",
            "output 'EMBEDDING' is FP32 on the model, not FP16",
        ),
        (
            "          inputs: {text: {name: TEXT, datatype: INT64}}\n"
            "          outputs: {embedding: EMBEDDING}",
            ":12: models.remote.versions.3.tensors.inputs.text:",
            "input 'TEXT' is INT64; this binding needs BYTES",
        ),
        (
            "          inputs: {text: TEXT}\n"
            "          outputs: {embedding: {name: EMBEDDING, shape: [-1, 8, 1]}}",
            ":13: models.remote.versions.3.tensors.outputs.embedding:",
            "output 'EMBEDDING' has shape [-1, 8] on the model, not [-1, 8, 1]",
        ),
    ],
)
async def test_a_contract_the_metadata_contradicts_is_refused_at_load(
    triton: PeerProcess, tmp_path: Path, tensors: str, where: str, reason: str
) -> None:
    async with gateway(tmp_path, policy(triton.url, tensors)) as client:
        ready = await client.get("/readyz")
        named = ready.json()["models"][f"remote@3/{triton.url}"]
        assert named.startswith(f"{tmp_path / 'policy.yaml'}{where}"), named
        assert reason in named
        r = await client.post("/v1/infer", json={"inputs": [{"text": "x"}]})
        assert r.status_code == 503 and r.json()["code"] == "not_ready", r.text


async def test_a_reload_with_a_contradicted_contract_changes_nothing(
    triton: PeerProcess, tmp_path: Path
) -> None:
    good = policy(triton.url, GOOD)
    async with gateway(tmp_path, good) as client:
        bad = good.replace("outputs: {embedding: EMBEDDING}", "outputs: {embedding: VECTOR}")
        (tmp_path / "policy.yaml").write_text(bad)
        r = await client.post("/admin/policy/reload")
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(
            f"{tmp_path / 'policy.yaml'}:13: models.remote.versions.3.tensors.outputs.embedding:"
            f" cannot load remote@3/{triton.url}: ContractMismatch: the model has no output "
            "'VECTOR' (it has: EMBEDDING)"
        )
        r = await client.post("/v1/infer", json={"inputs": [{"text": "still served"}]})
        assert r.status_code == 200, r.text


async def test_an_upstream_that_changes_its_contract_is_named_not_a_502(tmp_path: Path) -> None:
    first = pytriton(["embedder"]).start()
    second: PeerProcess | None = None
    try:
        async with gateway(tmp_path, policy(first.url, GOOD)) as client:
            ok = await client.post("/v1/infer", json={"inputs": [{"text": "before"}]})
            assert ok.status_code == 200, ok.text
            # the team redeploys its model under the same address, with a renamed output
            first.stop()
            second = pytriton(["embedder"], variant="renamed", port=first.port).start()
            key = f"remote@3/{first.url}"
            for _ in range(100):
                models = (await client.get("/readyz")).json()["models"]
                if "contract mismatch" in models[key]:
                    break
                await asyncio.sleep(0.1)
            assert models[key] == (
                "contract mismatch at tensors.outputs.embedding: the model has no output "
                "'EMBEDDING' (it has: VECTOR)"
            )
            r = await client.post("/v1/infer", json={"inputs": [{"text": "after"}]})
            assert r.status_code == 503 and "contradicts its tensor contract" in r.json()["detail"]
            # a reload of the unchanged policy re-reads the metadata: refused, with the line
            reload = await client.post("/admin/policy/reload")
            assert reload.status_code == 422
            assert (
                ":13: models.remote.versions.3.tensors.outputs.embedding:"
                in (reload.json()["detail"])
            )
            # the operator follows the model: the new contract loads and serves
            (tmp_path / "policy.yaml").write_text(
                policy(first.url, GOOD.replace("embedding: EMBEDDING", "embedding: VECTOR"))
            )
            assert (await client.post("/admin/policy/reload")).status_code == 200
            r = await client.post("/v1/infer", json={"inputs": [{"text": "after"}]})
            assert r.status_code == 200, r.text
            assert len(r.json()["outputs"][0]["embedding"]) == 8
    finally:
        first.stop()
        if second is not None:
            second.stop()
