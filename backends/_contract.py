"""A remote model's tensor contract, resolved against what the model says about itself.

:func:`~backends._contract_resolve.resolve_contract` turns a policy's contract plus the
model's signature (its metadata, whatever the protocol: v2 ``GET /v2/models/{m}``, gRPC
``ModelMetadata``, TF Serving's ``/metadata``) into a :class:`ResolvedContract`: every tensor's name, datatype and
shape fixed, or a :class:`ContractMismatch` that says which policy key the model contradicts
(a missing tensor, another datatype or rank), so a bad contract is refused at load, never
found as a 502 per request. The resolved contract then encodes a request's inputs into the
model's tensors and decodes its answer into Prism's outputs, with the declared processing
(:mod:`backends._processing`) in between. Both run on a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._base import Capabilities, InputItem, Modality, Output, Task
from ._errors import InvalidInput
from ._processing import ImageProcessor, TextTokenizer, pool, softmax
from ._tensor_specs import (
    ImagePixels,
    Labelled,
    PooledEmbedding,
    TensorContract,
    TokenizedText,
    TopItems,
)
from ._tensors import Tensor, TensorFormatError

FLOATS = ("FP32", "FP16", "FP64", "BF16")
_MODALITY = {
    "text": Modality.TEXT,
    "image": Modality.IMAGE,
    "user": Modality.USER,
    "history": Modality.USER,
}
_TASK = {"embedding": Task.EMBED, "label": Task.CLASSIFY, "item": Task.RECOMMEND}
#: the output bindings each task reads
_READS = {Task.EMBED: ("embedding",), Task.CLASSIFY: ("label", "score")}
_READS[Task.RECOMMEND] = ("item", "score")

Where = tuple[str | int, ...]


@dataclass(frozen=True)
class TensorMeta:
    """One tensor as the model describes it (shape with the batch dimension, -1 = any)."""

    datatype: str
    #: None: the model does not say (TF Serving's ``unknown_rank``)
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, protocol-neutral."""

    inputs: Mapping[str, TensorMeta]
    outputs: Mapping[str, TensorMeta]


class ContractMismatch(ValueError):
    """The contract and the model disagree; ``where`` is the policy key (under the version)."""

    def __init__(self, where: Where, message: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class Bound:
    """One model tensor the contract fills or reads."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class ResolvedContract:
    #: Prism input ("text", ...) -> the model tensors it fills, in order
    inputs: dict[str, list[Bound]]
    #: Prism output ("embedding", "label", "score", "item") -> the model tensor it reads
    outputs: dict[str, Bound]
    spec: TensorContract
    tokenizer: TextTokenizer | None = None
    images: ImageProcessor | None = None
    labels: list[str] | None = None
    item_ids: list[str] | None = None
    #: how each input of a request is filled, for ``prism policy explain``
    notes: list[str] = field(default_factory=list)

    # --- what the model can do -------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        modalities = frozenset(_MODALITY[k] for k in self.inputs)
        tasks = frozenset(_TASK[k] for k in self.outputs if k in _TASK)
        dim = None
        if (emb := self.outputs.get("embedding")) is not None and emb.shape[-1] > 0:
            dim = emb.shape[-1]
        return Capabilities(modalities, tasks, dim)

    def output_names(self, task: Task) -> list[str]:
        """The model tensors a request for ``task`` asks for."""
        return [self.outputs[k].name for k in _READS[task] if k in self.outputs]

    # --- requests --------------------------------------------------------------------------

    def encode(self, items: Sequence[InputItem]) -> tuple[list[Tensor], dict[str, Any]]:
        """The request's inputs as the model's tensors (one batch), and what decoding needs."""
        n = len(items)
        tensors: list[Tensor] = []
        state: dict[str, Any] = {}
        for key, bound in self.inputs.items():
            values = [_value(item, key) for item in items]
            if any(v is None for v in values):
                raise InvalidInput(
                    f"this model needs {key!r} in every input (its tensor {bound[0].name!r})"
                )
            binding = getattr(self.spec.inputs, key)
            if isinstance(binding, TokenizedText):
                assert self.tokenizer is not None
                arrays = self.tokenizer.encode([str(v) for v in values])
                state["attention_mask"] = arrays["attention_mask"]
                for b, role in zip(bound, self.tokenizer.roles, strict=True):
                    tensors.append(_numeric(b, arrays[role]))
            elif isinstance(binding, ImagePixels):
                assert self.images is not None
                pixels = self.images.encode([v for v in values if isinstance(v, bytes)])
                tensors.append(_numeric(bound[0], pixels))
            else:
                data = [v if isinstance(v, bytes) else str(v).encode() for v in values]
                tensors.append(Tensor(bound[0].name, "BYTES", _rows_shape(bound[0], n), data))
        return tensors, state

    # --- answers ---------------------------------------------------------------------------

    def decode(
        self,
        task: Task,
        tensors: Sequence[Tensor],
        n: int,
        state: Mapping[str, Any],
        parameters: Mapping[str, Any],
    ) -> list[Output]:
        """The model's answer as one Prism output per input; raises TensorFormatError."""
        by_name = {t.name: t for t in tensors}

        def read(key: str) -> Tensor:
            bound = self.outputs[key]
            t = by_name.get(bound.name)
            if t is None:
                raise TensorFormatError(f"the response lacks output {bound.name!r}")
            if not t.shape or t.shape[0] != n:
                raise TensorFormatError(
                    f"{bound.name!r} has shape {list(t.shape)}; expected {n} rows"
                )
            if len(t.shape) == len(bound.shape) and not _compatible(t.shape, bound.shape):
                raise TensorFormatError(
                    f"{bound.name!r} has shape {list(t.shape)}; the model promised "
                    f"{list(bound.shape)}"
                )
            return t

        o = self.spec.outputs
        if task is Task.EMBED:
            t = read("embedding")
            matrix = _floats(t)
            if isinstance(o.embedding, PooledEmbedding):
                if matrix.ndim != 3:
                    raise TensorFormatError(f"{t.name!r} is not [n, tokens, dim]")
                matrix = pool(
                    matrix, state.get("attention_mask"), o.embedding.pooling, o.embedding.normalize
                )
            else:
                matrix = matrix.reshape(n, -1)
            if not np.isfinite(matrix).all():
                raise TensorFormatError(f"{t.name!r} has non-finite values")
            return [{"embedding": np.ascontiguousarray(row, dtype=np.float32)} for row in matrix]
        top_k = _top_k(parameters)
        if task is Task.CLASSIFY and isinstance(o.label, Labelled):
            assert self.labels is not None
            scores = _floats(read("label")).reshape(n, -1)
            if scores.shape[1] != len(self.labels):
                raise TensorFormatError(
                    f"{scores.shape[1]} class scores for {len(self.labels)} labels"
                )
            if o.label.softmax:
                scores = softmax(scores)
            return [
                {"labels": [{"label": i, "score": s} for i, s in _best(self.labels, row, top_k)]}
                for row in scores
            ]
        if task is Task.RECOMMEND and isinstance(o.item, TopItems):
            assert self.item_ids is not None
            scores = _floats(read("item")).reshape(n, -1)
            if scores.shape[1] != len(self.item_ids):
                raise TensorFormatError(f"{scores.shape[1]} scores for {len(self.item_ids)} ids")
            return [
                {
                    "items": [{"id": i, "score": s} for i, s in _best(self.item_ids, row, top_k)],
                    "ignored_history": [],
                }
                for row in scores
            ]
        key = "label" if task is Task.CLASSIFY else "item"
        ids, scores_t = read(key), read("score")
        if not isinstance(ids.data, list):
            raise TensorFormatError(f"{ids.name!r} is not BYTES")
        values = _floats(scores_t).reshape(n, -1)
        names = np.array([b.decode("utf-8", "replace") for b in ids.data], dtype=object)
        names = names.reshape(n, -1)
        if names.shape != values.shape:
            raise TensorFormatError(f"{ids.name!r} and {scores_t.name!r} differ in shape")
        out: list[Output] = []
        for row_ids, row_scores in zip(names, values, strict=True):
            pairs = [(str(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i]
            pairs.sort(key=lambda p: -p[1])
            pairs = pairs[:top_k] if top_k else pairs
            if task is Task.CLASSIFY:
                out.append({"labels": [{"label": i, "score": s} for i, s in pairs]})
            else:
                out.append({"items": [{"id": i, "score": s} for i, s in pairs]})
                out[-1]["ignored_history"] = []
        return out

    def describe(self) -> dict[str, Any]:
        """The contract a request will use (``prism policy explain``, logs)."""
        return {
            "inputs": {
                k: [{"name": b.name, "datatype": b.datatype, "shape": list(b.shape)} for b in v]
                for k, v in self.inputs.items()
            },
            "outputs": {
                k: {"name": b.name, "datatype": b.datatype, "shape": list(b.shape)}
                for k, b in self.outputs.items()
            },
            "processing": self.notes,
        }


def _value(item: InputItem, key: str) -> Any:
    if key == "history":
        return None if item.history is None else "\n".join(item.history)
    return getattr(item, key)


def _rows_shape(bound: Bound, n: int) -> tuple[int, ...]:
    """[n] or [n, 1, ...]: one element per row, in the rank the model declares."""
    return (n, *(1 for _ in bound.shape[1:]))


def _numeric(bound: Bound, array: np.ndarray) -> Tensor:
    from ._tensors import NUMPY_DTYPES

    dtype = NUMPY_DTYPES[bound.datatype]
    arr = np.ascontiguousarray(array, dtype=dtype)
    return Tensor(bound.name, bound.datatype, tuple(arr.shape), arr.ravel())


def _floats(t: Tensor) -> np.ndarray:
    if not isinstance(t.data, np.ndarray) or t.datatype not in FLOATS:
        raise TensorFormatError(f"{t.name!r} is {t.datatype}, not a float tensor")
    return t.data.astype(np.float32).reshape(t.shape)


def _top_k(parameters: Mapping[str, Any]) -> int | None:
    k = parameters.get("top_k")
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput("parameters.top_k must be a positive integer")
    return k


def _best(names: Sequence[str], row: np.ndarray, k: int | None) -> list[tuple[str, float]]:
    order = np.argsort(-row, kind="stable")[: k or len(names)]
    return [(names[i], float(row[i])) for i in order]


def _compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x < 0 or y < 0 for x, y in zip(a, b, strict=True))


__all__ = [
    "Bound",
    "ContractMismatch",
    "ResolvedContract",
    "Signature",
    "TensorMeta",
]
