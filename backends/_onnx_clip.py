"""Both towers of an open_clip model exported to ONNX by ``prism optimize``, run by ONNX
Runtime (CPU).

The variant folder holds ``image.onnx`` (pixels ``[B, 3, H, W]`` in, unit embedding out),
``text.onnx`` (token ids ``[B, context_length]`` in, unit embedding out) and ``variant.json``:
the model's open_clip preprocessing config (size, mean, std, interpolation, resize mode), its
tokenizer (the open_clip model name and context length), the embedding width and the learned
logit scale that zero-shot classification multiplies by.

Only the forward passes move to ONNX Runtime. Preprocessing and tokenising are open_clip's own
objects, rebuilt at load from ``variant.json`` (``open_clip.transform.image_transform_v2`` and
``open_clip.get_tokenizer``), not a re-implementation: a bicubic, antialiased resize written
again in NumPy or PIL drifts from torchvision's by a few grey levels, and a second BPE
tokenizer would have to match open_clip's special tokens and truncation; with the same objects,
the variant's inputs are bit for bit the source's, so any difference in the embeddings is the
variant's own. open_clip and torch are in the install that served the source anyway.

Everything else (inputs, ``embed`` of text or images, zero-shot ``classify`` with a cache of
label embeddings) is :class:`~prism.backends._open_clip.OpenClipModel`'s: this class only
replaces the encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from ._onnx_lanes import BatchLanes, session_options
from ._open_clip import OpenClipModel, ensure_arch
from ._specs import OnnxClipSpec

#: files of a variant folder
IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
VARIANT_FILE = "variant.json"


class OnnxClipModel(OpenClipModel):
    """Serves what ``kind: open-clip`` serves, from a variant folder; each tower's forward is
    single-threaded ONNX Runtime runs over slices of the batch, side by side
    (``_onnx_lanes.py``)."""

    def __init__(
        self, folder: Path, *, threads: int = 0, max_image_pixels: int = 40_000_000
    ) -> None:
        # the architecture's name is in variant.json, read at load
        super().__init__("", weights=folder, device="cpu", max_image_pixels=max_image_pixels)
        self.folder = folder
        self.threads = threads
        self._variant: dict[str, Any] = {}
        self._sessions: dict[str, Any] = {}
        self._lanes: BatchLanes | None = None
        self._one_image: Any = None

    @classmethod
    def from_spec(cls, spec: OnnxClipSpec, base_dir: Path, device: str) -> OnnxClipModel:  # type: ignore[override]
        if spec.device == "cuda":
            raise ValueError("kind onnx-clip runs on CPU (device: cpu or auto)")
        return cls(
            base_dir / spec.path, threads=spec.threads, max_image_pixels=spec.max_image_pixels
        )

    def load(self) -> None:
        import onnxruntime as ort

        variant = self._variant = self._read_variant()
        self.arch = str(variant["arch"])
        tokenizer = variant["tokenizer"]
        if not str(tokenizer["model"]).startswith(("local-dir:", "hf-hub:")):
            # a config the variant carries (an architecture open_clip does not ship)
            ensure_arch(tokenizer["model"], self.folder / IMAGE_FILE)
        self._tokenizer = open_clip.get_tokenizer(
            tokenizer["model"], context_length=int(tokenizer["context_length"])
        )
        config = open_clip.transform.PreprocessCfg(**variant["preprocess"])
        self._preprocess = open_clip.transform.image_transform_v2(config, is_train=False)
        options = session_options(ort)
        self._sessions = {
            name: ort.InferenceSession(
                str(self.folder / file), options, providers=["CPUExecutionProvider"]
            )
            for name, file in (("image", IMAGE_FILE), ("text", TEXT_FILE))
        }
        self._lanes = BatchLanes(self.threads)
        # one image: the convolutions gain from intra-op threads (``_onnx_lanes.py``); with
        # one lane the image session is that already
        if self._lanes.lanes > 1:
            self._one_image = ort.InferenceSession(
                str(self.folder / IMAGE_FILE),
                session_options(ort, self._lanes.lanes),
                providers=["CPUExecutionProvider"],
            )
        self._model = self._sessions  # "loaded" for OpenClipModel's checks
        self._dim = int(variant["dim"])

    def close(self) -> None:
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None
        self._sessions = {}
        self._one_image = None
        super().close()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._run("image", {"pixels": images.float().contiguous().numpy()}, self._one_image)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        # the tokens keep their full context length: the text tower's graph is traced at it
        return self._run("text", {"tokens": tokens.to(torch.int64).numpy()})

    def _run(self, tower: str, feed: dict[str, np.ndarray], one_row: Any = None) -> torch.Tensor:
        if self._lanes is None:
            raise RuntimeError("the ONNX CLIP model is not loaded")
        out = self._lanes.run(self._sessions[tower], "embedding", feed, one_row=one_row)
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def logit_scale(self) -> float:
        return float(self._variant["logit_scale"])

    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch, "onnx": str(self.folder), "variant": self._variant["variant"]}

    def _read_variant(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.folder / VARIANT_FILE).read_text("utf-8"))
        return data

    def _embed_dim(self) -> int | None:
        if self._dim is not None:
            return self._dim
        try:
            return int(self._read_variant()["dim"])
        except (OSError, ValueError, KeyError):
            return None  # unknown until load() says why
