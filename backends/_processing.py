"""Gateway-side processing for remote models that take and give raw tensors.

Tokenising (Hugging Face ``tokenizers``, a local folder only), image -> normalised NCHW
pixels (PIL + numpy, as open_clip/torchvision would: shortest side resized bicubic, centre
crop, (x - mean) / std), pooling token embeddings with the attention mask, softmax. Nothing
here imports torch or transformers; everything runs on a worker thread, one batch at a time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._tensor_specs import Pixels, Tokenize

#: open_clip's defaults (OpenAI CLIP) when a model config names no preprocess_cfg
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: the longest labels / ids list a contract may name
MAX_LINES = 10_000_000


def read_lines(path: Path) -> list[str]:
    """One label or id per line (blank lines at the end ignored); at least one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError("the file is empty")
    if len(lines) > MAX_LINES:
        raise ValueError(f"more than {MAX_LINES} lines")
    return [line.strip() for line in lines]


def _special(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


@dataclass
class TextTokenizer:
    """A fast tokenizer from a local folder, truncating to ``max_length`` and padding to the
    batch's longest text."""

    tokenizer: Any
    #: (tokenizer output, the model's tensor) for every tensor sent
    bindings: list[tuple[str, str]]

    @property
    def roles(self) -> list[str]:
        return [role for role, _ in self.bindings]

    @classmethod
    def load(cls, spec: Tokenize, base_dir: Path) -> TextTokenizer:
        from tokenizers import Tokenizer

        if spec.tokenizer == "minilm":
            from ._text_encoder import packaged_model_path

            folder = packaged_model_path("minilm")
        else:
            folder = base_dir / spec.tokenizer
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"{folder} has no tokenizer.json (a fast Hugging Face tokenizer)")
        tokenizer = Tokenizer.from_file(str(file))
        pad = "[PAD]"
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (folder / name).is_file():
                found = _special(json.loads((folder / name).read_text()).get("pad_token"))
                if found:
                    pad = found
                    break
        pad_id = tokenizer.token_to_id(pad)
        tokenizer.enable_truncation(spec.max_length)
        tokenizer.enable_padding(pad_id=pad_id or 0, pad_token=pad)
        bindings = [("input_ids", spec.input_ids)]
        if spec.attention_mask is not None:
            bindings.append(("attention_mask", spec.attention_mask))
        if spec.token_type_ids is not None:
            bindings.append(("token_type_ids", spec.token_type_ids))
        return cls(tokenizer, bindings)

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


@dataclass
class ImageProcessor:
    """Encoded images -> [n, 3, height, width] float pixels, normalised."""

    size: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    max_pixels: int = 40_000_000

    @classmethod
    def load(cls, spec: Pixels, base_dir: Path) -> ImageProcessor:
        size, mean, std = spec.size, spec.mean, spec.std
        if spec.open_clip_config is not None:
            config = json.loads((base_dir / spec.open_clip_config).read_text())
            pre = config.get("preprocess_cfg") or {}
            size = size or pre.get("size") or config.get("vision_cfg", {}).get("image_size")
            mean = mean or pre.get("mean") or list(OPENAI_MEAN)
            std = std or pre.get("std") or list(OPENAI_STD)
            if size is None:
                raise ValueError(f"{spec.open_clip_config} names no image size")
        assert size is not None and mean is not None and std is not None
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return cls(
            hw,
            np.asarray(mean, dtype=np.float32).reshape(3, 1, 1),
            np.asarray(std, dtype=np.float32).reshape(3, 1, 1),
        )

    def encode(self, images: Sequence[bytes]) -> np.ndarray:
        from PIL import Image

        from ._images import load_image

        height, width = self.size
        out = np.empty((len(images), 3, height, width), dtype=np.float32)
        for i, data in enumerate(images):
            image = load_image(data, max_pixels=self.max_pixels).convert("RGB")
            # torchvision's Resize(shortest side) + CenterCrop, rounding the way it does
            scale = max(height / image.height, width / image.width)
            resized = image.resize(
                (max(width, int(image.width * scale)), max(height, int(image.height * scale))),
                Image.Resampling.BICUBIC,
            )
            left = round((resized.width - width) / 2.0)
            top = round((resized.height - height) / 2.0)
            crop = resized.crop((left, top, left + width, top + height))
            pixels = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0
            out[i] = (pixels - self.mean) / self.std
        return out


def pool(hidden: np.ndarray, mask: np.ndarray | None, how: str, normalize: bool) -> np.ndarray:
    """[n, tokens, dim] -> [n, dim]: mean over real tokens (the mask), or the first (CLS)."""
    if how == "cls":
        pooled = hidden[:, 0, :]
    else:
        if mask is None or mask.shape != hidden.shape[:2]:
            raise ValueError("mean pooling needs the attention mask of the same batch")
        weights = mask.astype(np.float32)[:, :, None]
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = pooled / np.maximum(norms, 1e-12)
    return pooled.astype(np.float32)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


__all__ = ["ImageProcessor", "TextTokenizer", "pool", "read_lines", "softmax"]
