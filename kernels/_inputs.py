"""Argument checking and normalisation shared by the torch references and the Triton paths.

Every public kernel accepts a few convenient input forms (a stacked tensor or a list, weights per
modality or per row, several spellings of a jagged index list). This module turns them into one
canonical form, once, so the two implementations never disagree on what the caller meant.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TypeAlias

import torch
from torch import Tensor

#: A jagged list of item indices per query (see ``score_topk``'s ``exclude``).
Exclusions: TypeAlias = Sequence[Sequence[int] | Tensor] | tuple[Tensor, Tensor] | Tensor | None

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_float(name: str, t: Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def modality_list(embs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Return the modalities as a list of ``[B, D]`` tensors with unit stride along D.

    ``embs`` is ``[M, B, D]`` or a sequence of ``M`` tensors ``[B, D]`` (same shape and
    device; dtypes may differ). No data is copied unless a tensor's last dimension is strided.
    """
    if isinstance(embs, Tensor):
        if embs.dim() != 3:
            raise ValueError(f"embs must be [M, B, D], got shape {tuple(embs.shape)}")
        parts = list(embs.unbind(0))
    else:
        parts = list(embs)
    if not parts:
        raise ValueError("embs must hold at least one modality")
    first = parts[0]
    if not isinstance(first, Tensor):
        raise ValueError("embs[0] must be a [B, D] tensor")
    shape, device = first.shape, first.device
    for m, t in enumerate(parts):
        # One combined test on the hot path; the messages are built only on failure.
        if not (
            isinstance(t, Tensor)
            and t.shape == shape
            and t.dtype in FLOAT_DTYPES
            and (m == 0 or t.device == device)
        ):
            _modality_error(m, t, shape, device)
    if len(shape) != 2:
        raise ValueError("embs[0] must be a [B, D] tensor")
    return [t if t.stride(-1) == 1 else t.contiguous() for t in parts]


def _modality_error(m: int, t: object, shape: torch.Size, device: torch.device) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        raise ValueError(f"embs[{m}] must be a [B, D] tensor")
    if t.shape != shape:
        raise ValueError(f"embs[{m}] has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.device != device:
        raise ValueError(f"embs[{m}] is on {t.device}, expected {device}")
    check_float(f"embs[{m}]", t)


#: Weights as the kernels take them: a float32 tensor ``[M]`` or ``[B, M]`` on the device, or
#: ``M`` Python floats (shared by all rows) that travel as kernel arguments, not as a copy.
Weights: TypeAlias = Tensor | tuple[float, ...]


def modality_weights(
    weights: Tensor | Sequence[float], rows: int, modalities: int, device: torch.device
) -> Weights:
    """Return the weights as ``M`` floats when they are host values shared by all rows (a
    sequence of numbers or a CPU ``[M]`` tensor: no host-to-device copy per call), else as a
    float32 ``[M]`` or ``[B, M]`` tensor on ``device`` (never expanded)."""
    if isinstance(weights, (list, tuple)) and all(isinstance(x, (int, float)) for x in weights):
        if len(weights) != modalities:
            raise ValueError(
                f"weights must be [{modalities}] or [{rows}, {modalities}], got ({len(weights)},)"
            )
        # Rounded to float32 here, as torch.as_tensor would: the kernels compute in float32.
        return tuple(array("f", weights))
    if (
        isinstance(weights, Tensor)
        and weights.device.type == "cpu"
        and device.type != "cpu"
        and weights.shape == (modalities,)
    ):
        return tuple(weights.to(torch.float32).tolist())
    w = torch.as_tensor(weights, dtype=torch.float32, device=device)
    if w.shape not in ((modalities,), (rows, modalities)):
        raise ValueError(
            f"weights must be [{modalities}] or [{rows}, {modalities}], got {tuple(w.shape)}"
        )
    return w


def weights_tensor(weights: Weights, device: torch.device) -> Tensor:
    """``weights`` as a float32 tensor on ``device`` (the references take tensors)."""
    if isinstance(weights, Tensor):
        return weights
    return torch.tensor(weights, dtype=torch.float32, device=device)


def modality_mask(
    mask: Tensor | None, rows: int, modalities: int, device: torch.device
) -> Tensor | None:
    """Return ``mask`` as a bool ``[B, M]`` tensor on ``device`` (True = modality present)."""
    if mask is None:
        return None
    if mask.shape != (rows, modalities):
        raise ValueError(f"mask must be [{rows}, {modalities}], got {tuple(mask.shape)}")
    if mask.dtype == torch.bool and mask.device == device:
        return mask
    return mask.to(device=device, dtype=torch.bool)


@dataclass(frozen=True)
class Bags:
    """Jagged bags in the layout of ``torch.nn.functional.embedding_bag``.

    ``indices`` is ``[L]`` (int32 or int64). With ``length`` set, bag ``b`` is
    ``indices[b * length:(b + 1) * length]`` and ``offsets`` is None (2-D input: no offsets
    tensor is built, the kernel computes them). Otherwise bag ``b`` holds
    ``indices[offsets[b]:end_b]`` with ``end_b = offsets[b + 1]``, or ``L`` for the last bag
    unless ``include_last_offset``.
    """

    indices: Tensor
    offsets: Tensor | None
    weights: Tensor | None
    include_last_offset: bool
    count: int
    length: int | None = None

    def starts(self) -> Tensor:
        """``[B]`` int64 start of each bag."""
        if self.offsets is None:
            step = max(self.length or 0, 1)
            return torch.arange(0, self.count * step, step, device=self.indices.device)
        return self.offsets[: self.count].long()

    def ends(self) -> Tensor:
        """``[B]`` int64 exclusive end of each bag."""
        if self.offsets is None:
            return self.starts() + (self.length or 0)
        if self.include_last_offset:
            return self.offsets[1:].long()
        tail = torch.tensor([self.indices.numel()], device=self.offsets.device)
        return torch.cat([self.offsets[1:].long(), tail])

    def lengths(self) -> Tensor:
        """``[B]`` int64 number of indices in each bag."""
        return self.ends() - self.starts()


def bags(
    indices: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    include_last_offset: bool,
    device: torch.device,
) -> Bags:
    """Validate and normalise embedding-bag inputs (1-D with offsets, or 2-D fixed-length)."""
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"indices must be int32 or int64, got {indices.dtype}")
    if indices.device != device:
        raise ValueError(f"indices are on {indices.device}, the table on {device}")
    if per_sample_weights is not None:
        check_float("per_sample_weights", per_sample_weights)
        if per_sample_weights.shape != indices.shape:
            raise ValueError("per_sample_weights must have the shape of indices")
        per_sample_weights = per_sample_weights.reshape(-1).contiguous()
    if indices.dim() == 2:
        if offsets is not None:
            raise ValueError("offsets must be None when indices is 2-D [B, L]")
        count, length = indices.shape
        return Bags(
            indices.reshape(-1).contiguous(), None, per_sample_weights, False, count, length
        )
    if indices.dim() != 1 or offsets is None or offsets.dim() != 1:
        raise ValueError("indices must be 1-D with 1-D offsets, or 2-D [B, L] without offsets")
    if offsets.dtype not in INDEX_DTYPES:
        raise TypeError(f"offsets must be int32 or int64, got {offsets.dtype}")
    count = offsets.numel() - (1 if include_last_offset else 0)
    if count < 0:
        raise ValueError("offsets is empty but include_last_offset=True")
    if offsets.device != device or not offsets.is_contiguous():
        offsets = offsets.to(device).contiguous()
    if not indices.is_contiguous():
        indices = indices.contiguous()
    return Bags(indices, offsets, per_sample_weights, include_last_offset, count)


def exclusion_pairs(
    exclude: Exclusions, queries: int, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """Flatten ``exclude`` into ``(query_ids, item_ids)``, two int64 ``[E]`` tensors.

    Accepted forms, one entry per query ``b`` in ``range(queries)``:

    * a ``list`` of per-query sequences or 1-D tensors of item indices;
    * a ``tuple`` ``(indices, offsets)``: ``indices`` ``[E]``, ``offsets`` ``[B]`` (start of each
      query's run, the last run ends at ``E``) or ``[B + 1]`` (CSR, ``offsets[B] == E``);
    * a 2-D int tensor ``[B, H]`` padded with negative values.

    Negative item ids may remain in the result and mean "nothing" (filtering them on the
    device would cost a host sync); every consumer ignores them, and ids ``>= N`` too.
    """
    if exclude is None:
        return None
    if isinstance(exclude, Tensor):
        if exclude.dim() != 2 or exclude.shape[0] != queries:
            raise ValueError(f"an exclude tensor must be [{queries}, H]")
        rows = torch.arange(queries, device=device).repeat_interleave(exclude.shape[1])
        return rows, exclude.reshape(-1).to(device=device, dtype=torch.int64)
    if isinstance(exclude, tuple):
        if len(exclude) != 2:
            raise ValueError("the tuple form of exclude is (indices, offsets)")
        items = exclude[0].to(device=device, dtype=torch.int64).reshape(-1)
        offsets = exclude[1].to(device=device, dtype=torch.int64).reshape(-1)
        if offsets.numel() == queries:
            offsets = torch.cat([offsets, offsets.new_tensor([items.numel()])])
        if offsets.numel() != queries + 1:
            raise ValueError(f"exclude offsets must have {queries} or {queries + 1} entries")
        rows = torch.arange(queries, device=device).repeat_interleave(offsets.diff())
        return rows, items
    if len(exclude) != queries:
        raise ValueError(f"exclude must have one entry per query ({queries}), got {len(exclude)}")
    if not any(isinstance(e, Tensor) for e in exclude):
        # Host data (the usual case: a user's history from a store): flatten and drop the
        # negative ids in Python, then one host-to-device copy.
        counts = [len(e) for e in exclude]
        flat = torch.tensor(list(chain.from_iterable(exclude)), dtype=torch.int64)
        rows = torch.arange(queries).repeat_interleave(torch.tensor(counts, dtype=torch.int64))
        keep = flat >= 0
        pairs = torch.stack([rows[keep], flat[keep]]).to(device)
        return pairs[0], pairs[1]
    per_query = [torch.as_tensor(e, dtype=torch.int64).reshape(-1).cpu() for e in exclude]
    counts_t = torch.tensor([e.numel() for e in per_query], dtype=torch.int64)
    rows = torch.arange(queries).repeat_interleave(counts_t).to(device)
    items = (torch.cat(per_query) if per_query else torch.empty(0, dtype=torch.int64)).to(device)
    return rows, items


def promote(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype that holds all of ``dtypes`` (``torch.promote_types`` folded)."""
    out = dtypes[0]
    for d in dtypes[1:]:
        if d is not out:
            out = torch.promote_types(out, d)
    return out
