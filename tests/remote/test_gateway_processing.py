"""Gateway-side processing for models that take and give raw tensors, on a real Triton.

The proof: a plain BERT (all-MiniLM-L6-v2 exported to ONNX: token ids in, token embeddings
out, no tokenizer and no pooling on the server) behind Prism, which tokenises, mean-pools
with the attention mask and L2-normalises, answers what sentence-transformers answers.
Classifier logits become labels (softmax + a labels file); ranker scores become top-k ids.
"""

from __future__ import annotations

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

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Two men pushed carts through the woods.",
    "The quick brown fox jumps over the lazy dog, again and again, until the dog finally "
    "gets up and leaves.",
    "Ünïcode and emoji ✓ still tokenise",
    "x",
]


@pytest.fixture(scope="module")
def triton() -> Iterator[PeerProcess]:
    peer = pytriton(["bert", "classifier", "ranker", "vision"]).start(timeout_s=240)
    yield peer
    peer.stop()


def policy(url: str) -> str:
    return f"""
version: 1
models:
  minilm:
    versions:
      "1": {{backend: local, kind: text-encoder, source: minilm, device: cpu}}
      "2":
        backend: kserve
        url: "{url}"
        remote_model: bert
        tensors:
          inputs:
            text:
              tokenize: {{tokenizer: minilm, max_length: 256, token_type_ids: token_type_ids}}
          outputs:
            embedding: {{name: last_hidden_state, pooling: mean, normalize: true}}
  sentiment:
    task: classify
    versions:
      "1":
        backend: kserve
        url: "{url}"
        remote_model: classifier
        tensors:
          inputs: {{text: TEXT}}
          outputs: {{label: {{name: logits, labels_file: labels.txt}}}}
  shop:
    task: recommend
    versions:
      "1":
        backend: kserve
        url: "{url}"
        remote_model: ranker
        tensors:
          inputs: {{text: TEXT}}
          outputs: {{item: {{name: scores, ids_file: items.txt}}}}
  photos:
    versions:
      "1":
        backend: kserve
        url: "{url}"
        remote_model: vision
        tensors:
          inputs:
            image:
              pixels:
                name: pixel_values
                size: 64
                mean: [0.48145466, 0.4578275, 0.40821073]
                std: [0.26862954, 0.26130258, 0.27577711]
          outputs: {{embedding: image_embeds}}
routes:
  - name: text
    match: {{modality: [text]}}
    model: minilm
    cache: {{ttl_s: 0}}
"""


@asynccontextmanager
async def gateway(tmp_path: Path, url: str) -> AsyncIterator[Client]:
    (tmp_path / "labels.txt").write_text("negative\nneutral\npositive\n")
    (tmp_path / "items.txt").write_text("item-a\nitem-b\nitem-c\nitem-d\nitem-e\n")
    path = tmp_path / "policy.yaml"
    path.write_text(policy(url))
    app = create_app(Settings(policy=path, policy_watch_s=0, data_dir=tmp_path))
    async with AsyncTestClient(app) as client:
        yield client


async def embed(client: Client, version: str) -> np.ndarray:
    r = await client.post(
        "/v1/infer",
        json={"model": "minilm", "version": version, "inputs": [{"text": s} for s in SENTENCES]},
    )
    assert r.status_code == 200, r.text
    return np.array([o["embedding"] for o in r.json()["outputs"]], dtype=np.float64)


async def test_raw_bert_behind_prism_matches_sentence_transformers(
    triton: PeerProcess, tmp_path: Path
) -> None:
    async with gateway(tmp_path, triton.url) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        local = await embed(client, "1")  # the packaged sentence-transformers MiniLM
        remote = await embed(client, "2")  # the raw BERT on Triton, processed by Prism
        assert remote.shape == local.shape == (len(SENTENCES), 384)
        cosine = (local * remote).sum(1) / (
            np.linalg.norm(local, axis=1) * np.linalg.norm(remote, axis=1)
        )
        assert cosine.min() >= 0.9999, cosine
        print(f"cosine to sentence-transformers: min {cosine.min():.7f}")
        np.testing.assert_allclose(np.linalg.norm(remote, axis=1), 1.0, atol=1e-5)
        # the OpenAI door reaches the same remote version
        openai = await client.post(
            "/v1/embeddings", json={"model": "minilm", "input": SENTENCES[:2]}
        )
        assert openai.status_code == 200, openai.text


async def test_logits_become_labels_and_scores_become_top_k_ids(
    triton: PeerProcess, tmp_path: Path
) -> None:
    async with gateway(tmp_path, triton.url) as client:
        text = "four"  # the peer's logits: len % 3, len % 5, len % 7, halved -> [.5, 2, 2]
        r = await client.post(
            "/v1/infer", json={"model": "sentiment", "task": "classify", "inputs": [{"text": text}]}
        )
        assert r.status_code == 200, r.text
        labels = r.json()["outputs"][0]["labels"]
        logits = np.array([len(text) % 3, len(text) % 5, len(text) % 7]) / 2.0
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        names = ["negative", "neutral", "positive"]
        order = np.argsort(-probs, kind="stable")
        assert [x["label"] for x in labels] == [names[i] for i in order]
        np.testing.assert_allclose([x["score"] for x in labels], probs[order], atol=1e-6)

        r = await client.post(
            "/v1/infer",
            json={
                "model": "shop",
                "task": "recommend",
                "inputs": [{"text": "red shoes"}, {"text": "blue hat"}],
                "parameters": {"top_k": 2},
            },
        )
        assert r.status_code == 200, r.text
        async with httpx.AsyncClient() as upstream:
            asked = await upstream.post(
                f"{triton.url}/v2/models/ranker/infer",
                json={
                    "inputs": [
                        {
                            "name": "TEXT",
                            "datatype": "BYTES",
                            "shape": [2, 1],
                            "data": ["red shoes", "blue hat"],
                        }
                    ]
                },
            )
        direct = asked.json()["outputs"][0]
        scores = np.asarray(direct["data"], dtype=np.float32).reshape(2, 5)
        ids = ["item-a", "item-b", "item-c", "item-d", "item-e"]
        for out, row in zip(r.json()["outputs"], scores, strict=True):
            best = np.argsort(-row, kind="stable")[:2]
            assert [i["id"] for i in out["items"]] == [ids[j] for j in best]
            np.testing.assert_allclose([i["score"] for i in out["items"]], row[best], atol=1e-6)


async def test_images_become_the_pixels_open_clip_would_make(
    triton: PeerProcess, tmp_path: Path
) -> None:
    import base64
    import io

    import open_clip
    from PIL import Image

    rng = np.random.default_rng(7)
    images = []
    for size in ((97, 61), (40, 128)):
        out = io.BytesIO()
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(out, format="PNG")
        images.append(out.getvalue())
    transform = open_clip.image_transform(
        64, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    want = []
    for data in images:
        x = transform(Image.open(io.BytesIO(data))).numpy().reshape(3, -1)
        want.append(np.concatenate([x.mean(1), x.std(1)]))
    async with gateway(tmp_path, triton.url) as client:
        r = await client.post(
            "/v1/infer",
            json={
                "model": "photos",
                "inputs": [{"image": {"base64": base64.b64encode(d).decode()}} for d in images],
            },
        )
        assert r.status_code == 200, r.text
        got = np.array([o["embedding"] for o in r.json()["outputs"]])
        np.testing.assert_allclose(got, np.array(want), atol=1e-4)
