"""The KServe V1 / TensorFlow Serving REST protocol: a real KServe ModelServer speaking V1,
and TF Serving's answers replayed by a real HTTP server on loopback (the TF Serving binary
cannot be installed here: ``tests/remote/tfserving/`` holds its status, metadata and
predict exchanges, error bodies included, in the shapes its REST API documents)."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from prism.gateway.app import create_app
from prism.gateway.settings import Settings
from tests.peers import HERE, PeerProcess, free_port

pytestmark = pytest.mark.timeout(300)

Client = AsyncTestClient[Litestar]
RECORDED = Path(__file__).resolve().parent / "tfserving"


@pytest.fixture(scope="module")
def kserve_v1() -> Iterator[PeerProcess]:
    http, grpc = free_port(), free_port()
    args = [str(HERE / "kserve_peer.py"), "--http-port", str(http), "--grpc-port", str(grpc)]
    peer = PeerProcess(args, ["/v1/models/embedder"], http).start()
    yield peer
    peer.stop()


class TFServingReplay(BaseHTTPRequestHandler):
    """Answers what TF Serving answered to the same request; anything else is a 400 the way
    TF Serving words a request it cannot parse."""

    exchanges: list[dict[str, Any]] = json.loads((RECORDED / "exchanges.json").read_text())
    seen: list[Any] = []

    def _send(self, status: int, doc: Any) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path in ("/v1/models/embedder", "/v1/models/embedder/versions/2"):
            self._send(200, json.loads((RECORDED / "status.json").read_text()))
        elif self.path in (
            "/v1/models/embedder/metadata",
            "/v1/models/embedder/versions/2/metadata",
        ):
            self._send(200, json.loads((RECORDED / "metadata.json").read_text()))
        else:
            self._send(404, {"error": "Servable not found for request: Latest(nope)"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append((self.path, body))
        if self.path not in (
            "/v1/models/embedder:predict",
            "/v1/models/embedder/versions/2:predict",
        ):
            self._send(404, {"error": "Servable not found for request: Latest(nope)"})
            return
        for exchange in self.exchanges:
            if exchange["request"] == body:
                self._send(exchange["status"], exchange["response"])
                return
        self._send(400, {"error": "JSON Value: ... Type: Object is not of expected type: string"})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def tfserving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), TFServingReplay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def policy(version: str) -> str:
    return f"""
version: 1
models:
  embedder:
    versions:
      "1":
{version}
routes:
  - name: text
    match: {{modality: [text]}}
    model: embedder
    cache: {{ttl_s: 0}}
"""


@asynccontextmanager
async def gateway(tmp_path: Path, text: str) -> AsyncIterator[Client]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    app = create_app(Settings(policy=path, policy_watch_s=0, data_dir=tmp_path))
    async with AsyncTestClient(app) as client:
        yield client


async def infer(client: Client, texts: list[str]) -> httpx.Response:
    return await client.post("/v1/infer", json={"inputs": [{"text": t} for t in texts]})


@pytest.mark.parametrize("version", ["protocol: v1", "format: inputs"])
async def test_a_kserve_v1_model_server(
    kserve_v1: PeerProcess, tmp_path: Path, version: str
) -> None:
    backend = "kserve" if version.startswith("protocol") else "tfserving"
    spec = f"""\
        backend: {backend}
        url: "{kserve_v1.url}"
        remote_model: embedder
        {version}
        tensors:
          inputs: {{text: TEXT}}
          outputs: {{embedding: EMBEDDING}}"""
    texts = ["a red circle", "ünïcode ✓"]
    async with httpx.AsyncClient() as direct:
        asked = await direct.post(
            f"{kserve_v1.url}/v1/models/embedder:predict",
            json={"instances": [{"TEXT": t} for t in texts]},
        )
    want = np.asarray(asked.json()["predictions"], dtype=np.float32)
    async with gateway(tmp_path, policy(spec)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        r = await infer(client, texts)
        assert r.status_code == 200, r.text
        got = np.array([o["embedding"] for o in r.json()["outputs"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-6)
        openai = await client.post("/v1/embeddings", json={"model": "embedder", "input": texts})
        assert openai.status_code == 200, openai.text
        # KServe's own refusal (400 {"error": ...}) is the upstream's, named, not retried
        boom = await infer(client, ["boom"])
        assert boom.status_code == 502, boom.text
        assert boom.json()["code"] == "upstream_rejected"
        assert "cannot embed 'boom'" in boom.json()["detail"]


def tf_spec(url: str, *, extra: str = "", outputs: str = "{embedding: embedding}") -> str:
    return f"""\
        backend: tfserving
        url: "{url}"
        remote_model: embedder
        signature_name: serving_default
        {extra}
        tensors:
          inputs: {{text: text}}
          outputs: {outputs}"""


RECORDED_VECTORS = np.array([[0.125, -0.5, 0.75, 0.0625], [-0.25, 0.5, 0.375, -0.875]])


@pytest.mark.parametrize("extra", ["format: instances", "format: inputs", "remote_version: '2'"])
async def test_tf_serving_rows_columns_versions_and_signature(
    tfserving: str, tmp_path: Path, extra: str
) -> None:
    TFServingReplay.seen.clear()
    async with gateway(tmp_path, policy(tf_spec(tfserving, extra=extra))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        # the signature's width (4) is the model's advertised dimension
        assert (await client.get("/v2/models/embedder")).json()["outputs"][0]["shape"][-1] == 4
        r = await infer(client, ["a red circle", "a blue square"])
        assert r.status_code == 200, r.text
        got = np.array([o["embedding"] for o in r.json()["outputs"]])
        np.testing.assert_allclose(got, RECORDED_VECTORS)
        path, body = TFServingReplay.seen[-1]
        assert body["signature_name"] == "serving_default"
        if "versions" in extra or "remote_version" in extra:
            assert path == "/v1/models/embedder/versions/2:predict"


async def test_tf_serving_errors_and_garbage(tfserving: str, tmp_path: Path) -> None:
    async with gateway(tmp_path, policy(tf_spec(tfserving))) as client:
        r = await infer(client, ["out of vocabulary"])
        assert r.status_code == 502 and r.json()["code"] == "upstream_rejected", r.text
        assert "52001 is not in [0, 52000)" in r.json()["detail"]
        # two numbers where the signature promised four per row: the answer is garbage
        r = await infer(client, ["garbage please"])
        assert r.status_code == 502 and r.json()["code"] == "backend_error", r.text


async def test_tf_serving_signature_contradicting_the_contract_is_refused(
    tfserving: str, tmp_path: Path
) -> None:
    text = policy(tf_spec(tfserving, outputs="{embedding: scores}"))
    async with gateway(tmp_path, text) as client:
        named = (await client.get("/readyz")).json()["models"][f"embedder@1/{tfserving}"]
        assert named.startswith(
            f"{tmp_path / 'policy.yaml'}:14: models.embedder.versions.1.tensors.outputs.embedding:"
        ), named
        assert "the model has no output 'scores' (it has: embedding)" in named
