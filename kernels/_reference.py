"""Plain-torch references: the specification of every kernel, and the CPU path.

Each function takes the canonical inputs built by ``_inputs`` and computes in float32 (the
Triton kernels accumulate in float32 too). They favour clarity over speed, but stay
memory-bounded: ``score_topk`` walks the catalogue in chunks and never holds ``[B, N]`` scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prism.kernels import _keys
from prism.kernels._inputs import Bags

#: ``normalize(x) = x / max(||x||_2, EPS)``, as ``torch.nn.functional.normalize``.
EPS = 1e-12
#: Rows of the catalogue scored at once by :func:`score_topk` (bounds memory to B x this).
_SCORE_CHUNK_ELEMENTS = 1 << 22


def fuse(
    parts: list[Tensor],
    weights: Tensor,
    mask: Tensor | None,
    out_dtype: torch.dtype,
) -> Tensor:
    """``out[b] = normalize(sum_m w'[b, m] * normalize(parts[m][b]))``.

    ``parts``: M float tensors ``[B, D]``; ``weights``: float32 ``[M]`` or ``[B, M]``; ``mask``:
    bool ``[B, M]`` or None (all present). ``w'`` is ``weights`` zeroed where absent and divided
    by its row sum; a row whose sum is 0 (e.g. nothing present) is all zeros. Returns
    ``[B, D]`` in ``out_dtype``.
    """
    x = torch.stack([p.float() for p in parts])  # [M, B, D]
    rows = x.shape[1]
    w = weights.float().expand(rows, len(parts))
    present = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
    w = torch.where(present, w, 0.0)
    total = w.sum(dim=1, keepdim=True)
    coef = torch.where(total != 0, w / torch.where(total != 0, total, 1.0), 0.0)
    unit = F.normalize(x, dim=-1, eps=EPS)
    # where(), not a product: an absent modality may hold NaN or garbage and must not leak.
    unit = torch.where(present.T.unsqueeze(-1), unit, 0.0)
    acc = torch.einsum("bm,mbd->bd", coef, unit)
    return F.normalize(acc, dim=-1, eps=EPS).to(out_dtype)


def pool(table: Tensor, bags: Bags, mode: str, normalize: bool) -> Tensor:
    """Float32 ``[B, D]`` sum or mean of each bag's (weighted) table rows; empty bags are 0."""
    rows = table[bags.indices.long()].float()  # [L, D]
    if bags.weights is not None:
        rows = rows * bags.weights.float().unsqueeze(1)
    lengths = bags.lengths()
    owner = torch.arange(bags.count, device=table.device).repeat_interleave(lengths)
    # Indices past the last bag's end (include_last_offset=True) belong to no bag.
    out = torch.zeros(bags.count, table.shape[1], device=table.device, dtype=torch.float32)
    start = int(bags.starts()[0]) if bags.count else 0
    out.index_add_(0, owner, rows[start : start + owner.numel()])
    if mode == "mean":
        out = out / lengths.clamp(min=1).unsqueeze(1).float()
    if normalize:
        out = F.normalize(out, dim=-1, eps=EPS)
    return out


def fuse_history(
    parts: list[Tensor],
    weights: Tensor,
    mask: Tensor | None,
    table: Tensor,
    bags: Bags,
    out_dtype: torch.dtype,
) -> Tensor:
    """:func:`fuse` with the pooled bags as modality ``M`` (last); empty bags count as absent."""
    history = pool(table, bags, "sum", normalize=False)
    present = bags.lengths() > 0
    full_mask = torch.ones(bags.count, len(parts) + 1, dtype=torch.bool, device=table.device)
    if mask is not None:
        full_mask = mask.clone()
    full_mask[:, -1] &= present
    return fuse([*parts, history], weights, full_mask, out_dtype)


def score_rows(queries: Tensor, rows: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """Float32 scores ``scale * queries @ rows.T + bias``: queries ``[B, D]`` float32 (already
    rounded to the catalogue's dtype), rows ``[R, D]``, bias float ``[R]`` or None."""
    s = (queries @ rows.float().T) * scale
    return s if bias is None else s + bias.float()


def score_topk(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` items per query: (float32 ``[B, k]`` scores, int64 ``[B, k]`` indices).

    Sorted by score descending, ties by lower index; ``pairs`` (query ids, item ids) are
    excluded; missing places are padded with (-inf, -1). See ``kernels.score_topk``.
    """
    count, items = queries.shape[0], catalogue.shape[0]
    # Round queries as a GEMM in the catalogue's dtype would, then score in float32.
    q = queries.to(catalogue.dtype).float()
    best = torch.full((count, 0), _keys.PAD_KEY, dtype=torch.int64, device=queries.device)
    step = max(1, _SCORE_CHUNK_ELEMENTS // max(count, 1))
    for lo in range(0, items, step):
        hi = min(lo + step, items)
        s = score_rows(q, catalogue[lo:hi], scale, None if bias is None else bias[lo:hi])
        if pairs is not None:
            rows, cols = pairs
            inside = (cols >= lo) & (cols < hi)
            s[rows[inside], cols[inside] - lo] = float("-inf")
        index = torch.arange(lo, hi, device=queries.device)
        keys = torch.cat([best, _keys.encode(s, index)], dim=1)
        best = torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=True).values
    return _keys.decode(_keys.top_keys(best, k))
