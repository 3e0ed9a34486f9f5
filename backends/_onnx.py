"""A text encoder exported to ONNX by ``prism optimize``, served by ONNX Runtime (CPU).

The variant folder holds ``model.onnx`` (token ids in, pooled and L2-normalised sentence
embedding out: pooling is part of the graph), the source's ``tokenizer.json`` and
``variant.json`` (what the graph takes, how to pad). Tokenising uses the ``tokenizers`` library
on the same ``tokenizer.json`` the source's fast tokenizer reads, so ids match the source's.
Neither transformers nor torch is imported here: ONNX Runtime is the only framework.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Capabilities, InputItem, LocalModel, Modality, Output, Task
from ._errors import InvalidInput
from ._onnx_lanes import BatchLanes, session_options
from ._specs import OnnxSpec

#: files of a variant folder
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
VARIANT_FILE = "variant.json"


class OnnxTextEncoderModel(LocalModel):
    """Serves ``embed`` for text from a variant folder; ``forward`` is one ONNX Runtime run."""

    def __init__(self, folder: Path, *, max_length: int = 256, threads: int = 0) -> None:
        self.folder = folder
        self.max_length = max_length
        self.threads = threads
        self._dim: int | None = None
        self._session: Any = None
        self._lanes: BatchLanes | None = None
        self._tokenizer: Any = None
        self._inputs: list[str] = []

    @classmethod
    def from_spec(cls, spec: OnnxSpec, base_dir: Path, device: str) -> OnnxTextEncoderModel:
        if device != "cpu":
            raise ValueError("kind onnx runs on CPU (device: cpu or auto)")
        return cls(base_dir / spec.path, max_length=spec.max_length, threads=spec.threads)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            modalities=frozenset({Modality.TEXT}), tasks=frozenset({Task.EMBED}), dim=self._dim
        )

    def load(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        variant = json.loads((self.folder / VARIANT_FILE).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER_FILE))
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=int(variant["pad_id"]), pad_token=variant["pad_token"])
        self._session = ort.InferenceSession(
            str(self.folder / MODEL_FILE), session_options(ort), providers=["CPUExecutionProvider"]
        )
        self._lanes = BatchLanes(self.threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._dim = int(variant["dim"])
        self._tokenizer = tokenizer

    def prepare(self, task: Task, item: InputItem, parameters: Mapping[str, Any]) -> str:
        if item.text is None:
            raise InvalidInput("this text encoder only accepts text inputs")
        return item.text

    def forward(
        self, task: Task, prepared: Sequence[Any], parameters: Mapping[str, Any]
    ) -> list[Output]:
        encodings = self._tokenizer.encode_batch(list(prepared))
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.asarray(columns[name], dtype=np.int64) for name in self._inputs}
        if self._lanes is None:
            raise RuntimeError("the ONNX text encoder is not loaded")
        # right-padded: each slice drops the columns that are padding in all its rows
        mask = "attention_mask" if "attention_mask" in feed else None
        vectors = self._lanes.run(self._session, "embedding", feed, mask=mask)
        return [{"embedding": np.ascontiguousarray(v, dtype=np.float32)} for v in vectors]

    def close(self) -> None:
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None
        self._session = None
