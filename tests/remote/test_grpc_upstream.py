"""KServe v2 over gRPC to a real Triton (PyTriton's port 8001 twin): the same contract,
processing, deadlines, error mapping and metadata checks as over HTTP; health from
ServerReady / ModelReady."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

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
    peer = pytriton(["embedder", "bert"]).start(timeout_s=240)
    yield peer
    peer.stop()


def policy(http: str, grpc_port: int, *, embedding: str = "EMBEDDING") -> str:
    return f"""
version: 1
models:
  embedder:
    versions:
      "http":
        backend: kserve
        url: "{http}"
        remote_model: embedder
        tensors: {{inputs: {{text: TEXT}}, outputs: {{embedding: EMBEDDING}}}}
      "grpc":
        backend: kserve
        url: "grpc://127.0.0.1:{grpc_port}"
        remote_model: embedder
        health_interval_s: 0.2
        tensors: {{inputs: {{text: TEXT}}, outputs: {{embedding: {embedding}}}}}
  minilm:
    versions:
      "http":
        backend: kserve
        url: "{http}"
        remote_model: bert
        tensors: &bert
          inputs:
            text: {{tokenize: {{tokenizer: minilm, token_type_ids: token_type_ids}}}}
          outputs:
            embedding: {{name: last_hidden_state, pooling: mean, normalize: true}}
      "grpc":
        backend: kserve
        url: "http://127.0.0.1:{grpc_port}"
        grpc: true
        remote_model: bert
        tensors: *bert
routes:
  - name: text
    match: {{modality: [text]}}
    model: embedder
    version: grpc
    timeout_ms: 800
    cache: {{ttl_s: 0}}
"""


@asynccontextmanager
async def gateway(tmp_path: Path, text: str) -> AsyncIterator[Client]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    app = create_app(Settings(policy=path, policy_watch_s=0, data_dir=tmp_path))
    async with AsyncTestClient(app) as client:
        yield client


async def vectors(client: Client, model: str, version: str, texts: list[str]) -> np.ndarray:
    r = await client.post(
        "/v1/infer",
        json={"model": model, "version": version, "inputs": [{"text": t} for t in texts]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["route"]["target"].startswith(f"{model}@{version}/")
    return np.array([o["embedding"] for o in r.json()["outputs"]])


async def test_grpc_answers_what_http_answers(triton: PeerProcess, tmp_path: Path) -> None:
    assert triton.grpc_port is not None
    texts = ["a red circle", "Two men pushed carts through the woods.", "ünïcode ✓"]
    async with gateway(tmp_path, policy(triton.url, triton.grpc_port)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        np.testing.assert_array_equal(
            await vectors(client, "embedder", "grpc", texts),
            await vectors(client, "embedder", "http", texts),
        )
        np.testing.assert_allclose(
            await vectors(client, "minilm", "grpc", texts),
            await vectors(client, "minilm", "http", texts),
            atol=1e-6,
        )
        metrics = (await client.get("/metrics")).text
        target = f"embedder@grpc/grpc://127.0.0.1:{triton.grpc_port}"
        assert f'prism_upstream_calls_total{{outcome="ok",target="{target}"}}' in metrics
        assert f'prism_upstream_healthy{{target="{target}"}} 1.0' in metrics
        # the route's deadline is the RPC's: a model that takes 3 s is a 504 at 0.8 s
        slow = await client.post("/v1/infer", json={"inputs": [{"text": "slow"}]})
        assert slow.status_code == 504, slow.text
        assert slow.json()["code"] == "backend_timeout"
        # the target stays usable once the model has finished its slow batch
        for _ in range(50):
            again = await client.post("/v1/infer", json={"inputs": [{"text": "fast"}]})
            if again.status_code == 200:
                break
            await asyncio.sleep(0.2)
        assert again.status_code == 200, again.text


async def test_grpc_metadata_checks_the_contract(triton: PeerProcess, tmp_path: Path) -> None:
    assert triton.grpc_port is not None
    text = policy(triton.url, triton.grpc_port, embedding="VECTOR")
    async with gateway(tmp_path, text) as client:
        key = f"embedder@grpc/grpc://127.0.0.1:{triton.grpc_port}"
        named = (await client.get("/readyz")).json()["models"][key]
        assert named.startswith(
            f"{tmp_path / 'policy.yaml'}:16: models.embedder.versions.grpc.tensors.outputs.embedding:"
        ), named
        assert "the model has no output 'VECTOR' (it has: EMBEDDING)" in named


async def test_grpc_health_follows_server_and_model_ready(tmp_path: Path) -> None:
    peer = pytriton(["embedder"]).start()
    try:
        assert peer.grpc_port is not None
        text = policy(peer.url, peer.grpc_port).replace(
            "remote_model: bert", "remote_model: embedder"
        )
        text = text.split("  minilm:")[0] + "routes:" + text.split("routes:")[1]
        async with gateway(tmp_path, text) as client:
            key = f"embedder@grpc/grpc://127.0.0.1:{peer.grpc_port}"
            assert (await client.get("/readyz")).json()["models"][key] == "ready"
            peer.stop()
            for _ in range(100):
                if (await client.get("/readyz")).json()["models"][key] == "unreachable":
                    break
                await asyncio.sleep(0.1)
            assert (await client.get("/readyz")).json()["models"][key] == "unreachable"
            r = await client.post("/v1/infer", json={"version": "grpc", "inputs": [{"text": "x"}]})
            assert r.status_code in (502, 503), r.text
    finally:
        peer.stop()


async def test_a_caller_that_leaves_cancels_its_rpc(triton: PeerProcess) -> None:
    from prism.backends import InputItem, Task
    from prism.backends._kserve_grpc import KServeGrpcBackend
    from prism.backends._tensor_specs import TensorContract

    contract = TensorContract.model_validate(
        {"inputs": {"text": "TEXT"}, "outputs": {"embedding": "EMBEDDING"}}
    )
    backend = KServeGrpcBackend(
        f"grpc://127.0.0.1:{triton.grpc_port}",
        "embedder",
        name="embedder@grpc",
        max_connections=1,
        contract=contract,
    )
    await backend.start()
    try:
        call = asyncio.create_task(
            backend.infer(Task.EMBED, [InputItem(text="slow")], {}, timeout_s=30)
        )
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert not backend._slots.locked()  # released with the cancelled caller
        # the one call slot is free again at once (the RPC ended with its caller), so the
        # next call goes through instead of waiting behind the abandoned one
        for _ in range(50):
            try:
                out = await backend.infer(Task.EMBED, [InputItem(text="next")], {}, timeout_s=5)
                break
            except Exception:  # the model may still be finishing its slow batch
                await asyncio.sleep(0.2)
        assert len(out[0]["embedding"]) == 8
        assert backend.stats.calls["ok"] >= 1
    finally:
        await backend.aclose()
