"""A remote model's tensor contract, resolved against what the model says about itself.

:func:`resolve_contract` turns a policy's :class:`TensorContract` plus the model's signature
(its metadata, whatever the protocol: v2 ``GET /v2/models/{m}``, gRPC ``ModelMetadata``, TF
Serving's ``/metadata``) into a :class:`ResolvedContract`: every tensor's name, datatype and
shape fixed, or a :class:`ContractMismatch` that says which policy key the model contradicts
(a missing tensor, another datatype or rank), so a bad contract is refused at load, never
found as a 502 per request. The resolved contract then encodes a request's inputs into the
model's tensors and decodes its answer into Prism's outputs, with the declared processing
(:mod:`backends._processing`) in between. Both run on a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._base import Capabilities, InputItem, Modality, Output, Task
from ._errors import InvalidInput
from ._processing import ImageProcessor, TextTokenizer, pool, read_lines, softmax
from ._tensor_specs import (
    ImagePixels,
    Labelled,
    PooledEmbedding,
    TensorContract,
    TensorSpec,
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


# --- resolving against the model's signature ------------------------------------------------


def _check(
    where: Where,
    name: str,
    kind: str,
    declared: TensorSpec | None,
    meta: Mapping[str, TensorMeta] | None,
    *,
    datatypes: Sequence[str],
    rank: int | None,
    default_shape: tuple[int, ...],
) -> Bound:
    """One tensor: the declared settings, checked against the model's (when it has metadata)."""
    given = meta.get(name) if meta is not None else None
    if meta is not None and given is None:
        have = ", ".join(sorted(meta)) or "none"
        raise ContractMismatch(where, f"the model has no {kind} {name!r} (it has: {have})")
    datatype = (declared.datatype if declared else None) or (given.datatype if given else None)
    shape = tuple(declared.shape) if declared and declared.shape is not None else None
    if given is not None:
        if datatype != given.datatype:
            raise ContractMismatch(
                where, f"{kind} {name!r} is {given.datatype} on the model, not {datatype}"
            )
        if shape is not None and given.shape is not None and not _compatible(shape, given.shape):
            raise ContractMismatch(
                where,
                f"{kind} {name!r} has shape {list(given.shape)} on the model, not {list(shape)}",
            )
        shape = shape or given.shape
    datatype = datatype or datatypes[0]
    shape = shape or default_shape
    if datatype not in datatypes:
        raise ContractMismatch(
            where, f"{kind} {name!r} is {datatype}; this binding needs {' or '.join(datatypes)}"
        )
    if rank is not None and len(shape) != rank:
        raise ContractMismatch(
            where, f"{kind} {name!r} has rank {len(shape)} ({list(shape)}); expected {rank}"
        )
    return Bound(name, datatype, shape)


def _compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or x < 0 or y < 0 for x, y in zip(a, b, strict=True))


def _split(binding: Any) -> tuple[str, TensorSpec | None]:
    return (binding, None) if isinstance(binding, str) else (binding.name, binding)


def resolve_contract(
    spec: TensorContract, signature: Signature | None, base_dir: Path
) -> ResolvedContract:
    """Fix every tensor of ``spec`` against ``signature`` (None: the server offers none),
    loading tokenizers, labels and id lists; raises :class:`ContractMismatch`."""
    meta_in = signature.inputs if signature is not None else None
    meta_out = signature.outputs if signature is not None else None
    inputs: dict[str, list[Bound]] = {}
    notes: list[str] = []
    tokenizer: TextTokenizer | None = None
    images: ImageProcessor | None = None
    for key, binding in spec.inputs:
        if binding is None:
            continue
        where: Where = ("tensors", "inputs", key)
        if isinstance(binding, TokenizedText):
            tok = binding.tokenize
            try:
                tokenizer = TextTokenizer.load(tok, base_dir)
            except (OSError, ValueError) as exc:
                raise ContractMismatch((*where, "tokenize", "tokenizer"), str(exc)) from exc
            inputs[key] = [
                _check(
                    (*where, "tokenize", role),
                    name,
                    "input",
                    None,
                    meta_in,
                    datatypes=(tok.datatype,),
                    rank=2,
                    default_shape=(-1, -1),
                )
                for role, name in tokenizer.bindings
            ]
            notes.append(
                f"{key}: tokenized by {tok.tokenizer} (max_length {tok.max_length}) into "
                + ", ".join(f"{name} {tok.datatype}" for _, name in tokenizer.bindings)
            )
        elif isinstance(binding, ImagePixels):
            px = binding.pixels
            try:
                images = ImageProcessor.load(px, base_dir)
            except (OSError, ValueError) as exc:
                raise ContractMismatch((*where, "pixels"), str(exc)) from exc
            bound = _check(
                (*where, "pixels"),
                px.name,
                "input",
                None,
                meta_in,
                datatypes=(px.datatype,),
                rank=4,
                default_shape=(-1, 3, *images.size),
            )
            want = (3, *images.size)
            if not _compatible(bound.shape[1:], want):
                raise ContractMismatch(
                    (*where, "pixels"),
                    f"input {px.name!r} takes {list(bound.shape)}; these pixels are "
                    f"[n, {', '.join(map(str, want))}]",
                )
            inputs[key] = [bound]
            notes.append(
                f"{key}: resized to {images.size[0]}x{images.size[1]}, normalised, "
                f"{px.datatype} NCHW into {px.name}"
            )
        else:
            name, declared = _split(binding)
            inputs[key] = [
                _check(
                    where,
                    name,
                    "input",
                    declared,
                    meta_in,
                    datatypes=("BYTES",),
                    rank=None,
                    default_shape=(-1,),
                )
            ]
            b = inputs[key][0]
            if any(d > 1 for d in b.shape[1:]):
                raise ContractMismatch(
                    where, f"input {name!r} has shape {list(b.shape)}; one element per row needed"
                )
    if meta_in is not None:
        filled = {b.name for bs in inputs.values() for b in bs}
        unfilled = sorted(set(meta_in) - filled)
        if unfilled:
            raise ContractMismatch(
                ("tensors", "inputs"),
                f"the model also takes {', '.join(map(repr, unfilled))}, which the contract "
                "does not fill",
            )

    outputs: dict[str, Bound] = {}
    labels: list[str] | None = None
    item_ids: list[str] | None = None
    for key, binding in spec.outputs:
        if binding is None:
            continue
        where = ("tensors", "outputs", key)
        if isinstance(binding, PooledEmbedding):
            outputs[key] = _check(
                where,
                binding.name,
                "output",
                None,
                meta_out,
                datatypes=FLOATS,
                rank=3,
                default_shape=(-1, -1, -1),
            )
            notes.append(
                f"embedding: {binding.pooling} pooling of {binding.name}"
                + (" with the attention mask" if binding.pooling == "mean" else "")
                + (", L2-normalised" if binding.normalize else "")
            )
        elif isinstance(binding, Labelled | TopItems):
            file = binding.labels_file if isinstance(binding, Labelled) else binding.ids_file
            fkey = "labels_file" if isinstance(binding, Labelled) else "ids_file"
            try:
                lines = read_lines(base_dir / file)
            except (OSError, ValueError) as exc:
                raise ContractMismatch((*where, fkey), f"cannot read {file}: {exc}") from exc
            outputs[key] = _check(
                where,
                binding.name,
                "output",
                None,
                meta_out,
                datatypes=FLOATS,
                rank=2,
                default_shape=(-1, len(lines)),
            )
            width = outputs[key].shape[1]
            if width > 0 and width != len(lines):
                raise ContractMismatch(
                    (*where, fkey), f"{file} has {len(lines)} lines; {binding.name!r} has {width}"
                )
            if isinstance(binding, Labelled):
                labels = lines
                how = "softmax" if binding.softmax else "scores"
                notes.append(f"label: {how} of {binding.name} named by {file}")
            else:
                item_ids = lines
                notes.append(f"item: top-k of {binding.name} named by {file}")
        else:
            name, declared = _split(binding)
            floats = key in ("embedding", "score")
            outputs[key] = _check(
                where,
                name,
                "output",
                declared,
                meta_out,
                datatypes=FLOATS if floats else ("BYTES",),
                rank=None,
                default_shape=(-1, -1),
            )
    return ResolvedContract(inputs, outputs, spec, tokenizer, images, labels, item_ids, notes)


def contract_plan(spec: Any, base_dir: Path) -> dict[str, Any] | None:
    """What a remote version's requests will carry, offline (``prism policy explain``): the
    protocol, the model's tensors each Prism input fills and each output reads, and the
    processing between; datatypes and shapes not given are checked against the model's
    metadata at load (-1 = any). None for a version without a contract."""
    contract = getattr(spec, "tensors", None)
    if not isinstance(contract, TensorContract):
        return None
    backend = getattr(spec, "backend", "")
    if backend == "tfserving":
        protocol = f"tfserving rest ({getattr(spec, 'format', 'instances')})"
    elif getattr(spec, "protocol", "v2") == "v1":
        protocol = "kserve v1 rest"
    elif getattr(spec, "uses_grpc", False):
        protocol = "kserve v2 grpc"
    else:
        protocol = "kserve v2 http"
    plan: dict[str, Any] = {
        "protocol": protocol,
        "remote_model": getattr(spec, "remote_model", None),
        "remote_version": getattr(spec, "remote_version", None),
    }
    if getattr(spec, "signature_name", None):
        plan["signature_name"] = spec.signature_name
    try:
        plan.update(resolve_contract(contract, None, base_dir).describe())
    except ContractMismatch as exc:
        plan["error"] = f"{'.'.join(map(str, exc.where))}: {exc}"
    plan["checked"] = (
        "against the model's metadata when the version loads; datatypes and shapes not "
        "given are shown as their defaults until then"
    )
    return plan


__all__ = [
    "Bound",
    "ContractMismatch",
    "ResolvedContract",
    "Signature",
    "TensorMeta",
    "contract_plan",
    "resolve_contract",
]
