"""The real packaged MiniLM through Prism matches sentence-transformers exactly enough."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prism.backends import (
    Batching,
    InputItem,
    LocalBackend,
    Task,
    TextEncoderSpec,
    build_local_model,
)
from prism.backends._text_encoder import packaged_model_path

SENTENCES = [
    "a red circle",
    "A man is playing a guitar on stage.",
    "Prism routes text, image and recommendation requests.",
    "",
    "ünïcödé and emoji 🚀 survive tokenisation",
    "word " * 400,  # longer than max_seq_length: truncated the same way
]


@pytest.fixture(scope="module")
async def encoder() -> LocalBackend:
    spec = TextEncoderSpec(backend="local", kind="text-encoder", source="minilm", device="cpu")
    backend = LocalBackend(
        build_local_model(spec, packaged_model_path("minilm")), Batching(max_batch_size=8)
    )
    await backend.start()
    yield backend
    await backend.aclose()


@pytest.mark.slow
async def test_matches_sentence_transformers(encoder: LocalBackend) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(packaged_model_path("minilm")), device="cpu")
    expected = st.encode(SENTENCES, normalize_embeddings=True)
    outputs = await encoder.infer(Task.EMBED, [InputItem(text=s) for s in SENTENCES], {})
    got = np.stack([o["embedding"] for o in outputs])
    assert got.shape == (len(SENTENCES), 384)
    cosine = (got * expected).sum(1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert cosine.min() >= 0.9999, cosine


@pytest.mark.slow
async def test_concurrent_requests_share_batches_and_agree(encoder: LocalBackend) -> None:
    before = encoder.stats.batches
    one = await encoder.infer(Task.EMBED, [InputItem(text="alone")], {})
    many = await asyncio.gather(
        *(encoder.infer(Task.EMBED, [InputItem(text=t)], {}) for t in ["alone", *SENTENCES[:5]])
    )
    np.testing.assert_allclose(many[0][0]["embedding"], one[0]["embedding"], atol=1e-5)
    assert encoder.stats.batches - before < 7  # six concurrent singles did not need six forwards
    assert encoder.capabilities.dim == 384
