"""Resolving a policy's tensor contract against the model's signature (its metadata), and
the offline plan ``prism policy explain`` shows.

Every tensor's name, datatype and shape is fixed here, or a :class:`ContractMismatch` names
the policy key the model contradicts; local files (tokenizer, labels, ids, image config) are
loaded on the way, so a missing file fails the load too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._contract import (
    FLOATS,
    Bound,
    ContractMismatch,
    ResolvedContract,
    Signature,
    TensorMeta,
    Where,
    _compatible,
)
from ._processing import ImageProcessor, TextTokenizer, read_lines
from ._tensor_specs import (
    ImagePixels,
    Labelled,
    PooledEmbedding,
    TensorContract,
    TensorSpec,
    TokenizedText,
    TopItems,
)


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


__all__ = ["contract_plan", "resolve_contract"]
