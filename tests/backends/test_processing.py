"""Gateway-side processing against the libraries it stands in for: open_clip's own image
transform, and the Hugging Face tokenizer transformers would load from the same folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from prism.backends._processing import ImageProcessor, TextTokenizer, pool
from prism.backends._tensor_specs import Pixels, Tokenize
from prism.backends._text_encoder import packaged_model_path

ROOT = Path(__file__).resolve().parents[2]


def png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_pixels_match_open_clips_preprocess() -> None:
    import open_clip

    processor = ImageProcessor.load(Pixels(open_clip_config="models/demo-clip.json"), ROOT)
    assert processor.size == (64, 64)
    transform = open_clip.image_transform(
        64, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    images = [png(97, 61, 1), png(40, 128, 2), png(64, 64, 3)]
    ours = processor.encode(images)
    theirs = np.stack([transform(Image.open(io.BytesIO(b))).numpy() for b in images])
    assert ours.shape == theirs.shape == (3, 3, 64, 64)
    # both resize with PIL's bicubic; what is left is float rounding
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_tokens_match_transformers_tokenizer() -> None:
    from transformers import AutoTokenizer

    texts = ["A man is eating food.", "x", "Ünïcode ✓ " * 100]
    ours = TextTokenizer.load(Tokenize(tokenizer="minilm", max_length=32), ROOT).encode(texts)
    hf = AutoTokenizer.from_pretrained(packaged_model_path("minilm"), local_files_only=True)
    theirs = hf(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], theirs[key])


def test_mean_pooling_ignores_padding() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    pooled = pool(hidden, mask, "mean", normalize=False)
    np.testing.assert_allclose(pooled, [hidden[0, :2].mean(0), hidden[1, 0]])
    assert np.allclose(np.linalg.norm(pool(hidden, mask, "cls", normalize=True), axis=1), 1)
