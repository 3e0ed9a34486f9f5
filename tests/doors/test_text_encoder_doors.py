"""The real packaged MiniLM behind the doors: the OpenAI client gets what /v1/infer gets."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton

from tests.doors.conftest import make_app
from tests.upstream import UvicornThread

POLICY = """
version: 1
models:
  text-embed:
    task: embed
    modalities: [text]
    versions:
      "1": {backend: local, kind: text-encoder, source: minilm, device: cpu}
routes:
  - {name: text, match: {modality: [text]}, model: text-embed, cache: {ttl_s: 0}}
"""
TEXTS = ["a red circle", "A man is playing a guitar on stage.", "ünïcödé and emoji 🚀"]


@pytest.mark.slow
def test_openai_and_triton_clients_equal_native_infer(tmp_path: Path) -> None:
    server = UvicornThread(make_app(tmp_path, POLICY)).start(timeout_s=180)
    try:
        r = httpx.post(
            server.url + "/v1/infer", json={"inputs": [{"text": t} for t in TEXTS]}, timeout=60
        )
        assert r.status_code == 200, r.text
        native = np.array([o["embedding"] for o in r.json()["outputs"]], dtype=np.float32)
        assert native.shape == (3, 384)

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(model="text-embed", input=TEXTS)
        np.testing.assert_allclose([d.embedding for d in got.data], native, atol=1e-6)
        with pytest.raises(openai.BadRequestError, match="dimensions"):
            client.embeddings.create(model="text-embed", input="x", dimensions=128)

        tc = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert tc.get_model_metadata("text-embed")["outputs"][0]["shape"] == [-1, 384]
        tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        np.testing.assert_allclose(
            tc.infer("text-embed", [tensor]).as_numpy("embedding"), native, atol=1e-6
        )
    finally:
        server.stop()
