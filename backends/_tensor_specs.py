"""Policy settings of a remote model's tensor contract: which of its tensors Prism fills and
reads, and the gateway-side processing between Prism's inputs/outputs and those tensors.

The minimal contract maps Prism's names to the model's (``inputs: {text: TEXT}``,
``outputs: {embedding: EMBEDDING}``); datatype and shape come from the model's metadata
unless given. A binding may instead declare processing:

- ``text: {tokenize: {...}}``: a local Hugging Face tokenizer turns text into
  ``input_ids`` / ``attention_mask`` / ``token_type_ids`` (INT64 or INT32, [n, seq]);
- ``image: {pixels: {...}}``: resize + centre crop + normalise into FP32/FP16 NCHW;
- ``embedding: {name: last_hidden_state, pooling: mean|cls}``: token embeddings pooled with
  the attention mask, optionally L2-normalised;
- ``label: {name: logits, labels_file: ...}``: softmax (or not) + a labels file (classify);
- ``item: {name: scores, ids_file: ...}``: top-k item ids from an id list (recommend).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: KServe v2 datatypes (TF Serving's are mapped onto these)
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BF16",
    "BYTES",
]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Spec):
    """One of the model's tensors; what is not given comes from the model's metadata."""

    name: str = Field(min_length=1)
    datatype: Datatype | None = None
    #: full shape as the model's metadata writes it, batch dimension included (-1 = any)
    shape: list[int] | None = None


class Tokenize(_Spec):
    """Text -> token ids with a local Hugging Face tokenizer folder (nothing downloaded)."""

    #: a tokenizer folder (relative to the data directory), or ``minilm`` for the packaged one
    tokenizer: str
    max_length: int = Field(256, ge=1, le=65_536)
    datatype: Literal["INT64", "INT32"] = "INT64"
    #: the model's tensor for each tokenizer output; null = not sent
    input_ids: str = "input_ids"
    attention_mask: str | None = "attention_mask"
    token_type_ids: str | None = None


class TokenizedText(_Spec):
    tokenize: Tokenize


class Pixels(_Spec):
    """Image -> normalised NCHW pixels (resize the short side, centre crop, (x - mean) / std)."""

    name: str = "pixel_values"
    #: square side, or [height, width]; with ``open_clip_config`` taken from there
    size: int | list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    datatype: Literal["FP32", "FP16"] = "FP32"
    #: an open_clip model config JSON (its ``preprocess_cfg`` / ``vision_cfg.image_size``)
    open_clip_config: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Pixels:
        if self.open_clip_config is None and None in (self.size, self.mean, self.std):
            raise ValueError("give size, mean and std, or open_clip_config")
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None and len(value) != 3:
                raise ValueError(f"{field} needs 3 values (R, G, B)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if isinstance(self.size, list) and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError("size is one side or [height, width]")
        return self


class ImagePixels(_Spec):
    pixels: Pixels


class PooledEmbedding(_Spec):
    """Token embeddings [n, seq, dim] -> one vector per input."""

    name: str = "last_hidden_state"
    pooling: Literal["mean", "cls"]
    normalize: bool = False


class Labelled(_Spec):
    """Class scores [n, classes] -> labels sorted by score (classify)."""

    name: str = "logits"
    #: one label per line, in the model's class order
    labels_file: str
    softmax: bool = True


class TopItems(_Spec):
    """Item scores [n, items] -> the top-k item ids (recommend)."""

    name: str = "scores"
    #: one item id per line, in the model's column order
    ids_file: str


class ContractInputs(_Spec):
    text: str | TensorSpec | TokenizedText | None = None
    image: str | TensorSpec | ImagePixels | None = None
    user: str | TensorSpec | None = None
    history: str | TensorSpec | None = None


class ContractOutputs(_Spec):
    embedding: str | TensorSpec | PooledEmbedding | None = None
    label: str | TensorSpec | Labelled | None = None
    score: str | TensorSpec | None = None
    item: str | TensorSpec | TopItems | None = None


class TensorContract(_Spec):
    """What the upstream model takes and gives, in its own tensor names."""

    inputs: ContractInputs
    outputs: ContractOutputs

    @model_validator(mode="after")
    def _coherent(self) -> TensorContract:
        given_in = [k for k, v in self.inputs if v is not None]
        given_out = [k for k, v in self.outputs if v is not None]
        if not given_in:
            raise ValueError("name at least one input (text, image, user or history)")
        if not given_out:
            raise ValueError("name at least one output (embedding, label or item)")
        o = self.outputs
        plain_label = isinstance(o.label, str | TensorSpec)
        plain_item = isinstance(o.item, str | TensorSpec)
        if (plain_label or plain_item) and o.score is None:
            raise ValueError("label and item tensors need a score tensor beside them")
        if o.score is not None and not (plain_label or plain_item):
            raise ValueError("score goes with a plain label or item tensor")
        if isinstance(o.embedding, PooledEmbedding) and o.embedding.pooling == "mean":
            if not isinstance(self.inputs.text, TokenizedText):
                raise ValueError("mean pooling needs the attention mask of a tokenized text input")
            if self.inputs.text.tokenize.attention_mask is None:
                raise ValueError("mean pooling needs tokenize.attention_mask")
        return self


def binding_name(binding: str | BaseModel) -> str:
    """The model's tensor name a binding reads or fills (tokenize: its ``input_ids``)."""
    if isinstance(binding, str):
        return binding
    if isinstance(binding, TokenizedText):
        return binding.tokenize.input_ids
    if isinstance(binding, ImagePixels):
        return binding.pixels.name
    name = getattr(binding, "name", None)
    assert isinstance(name, str)
    return name


__all__ = [
    "ContractInputs",
    "ContractOutputs",
    "Datatype",
    "ImagePixels",
    "Labelled",
    "Pixels",
    "PooledEmbedding",
    "TensorContract",
    "TensorSpec",
    "Tokenize",
    "TokenizedText",
    "TopItems",
    "binding_name",
]
