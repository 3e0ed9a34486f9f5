"""Pass 2 of the Triton ``score_topk`` when a chunk kept too few candidates (pure torch).

A (query, chunk) pair is *saturated* when the chunk's worst kept candidate still ranks above
the merged ``k``-th key: items the kernel did not keep might belong in the top ``k``. Two exact
repairs, chosen by ``_merging.repair`` by cost: score only those chunks in full
(:func:`rescore_chunks`), or, when that would read more rows than the catalogue holds, run the
reference over the whole catalogue for the affected queries (:func:`rescan_queries`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prism.kernels import _keys, _reference

#: Bytes of float32 catalogue rows gathered at once when rescoring saturated chunks.
_RESCORE_BYTES = 1 << 28


def rescore_chunks(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    cand: Tensor,
    saturated: Tensor,
    chunk_rows: int,
) -> Tensor:
    """Merged top-``k`` keys with each saturated (query, chunk) scored in full, in torch."""
    count, chunks, _ = cand.shape
    items_total, dim = catalogue.shape
    device = catalogue.device
    b_idx, c_idx = saturated.nonzero(as_tuple=True)  # sorted by query, then chunk
    pairs_n = b_idx.numel()
    cand = cand.clone()
    cand[b_idx, c_idx] = _keys.PAD_KEY
    lookup = torch.full((count, chunks), -1, dtype=torch.int64, device=device)
    lookup[b_idx, c_idx] = torch.arange(pairs_n, device=device)
    keep = min(k, chunk_rows)
    found = torch.empty(pairs_n, keep, dtype=torch.int64, device=device)
    q32 = queries.float()
    step = max(1, _RESCORE_BYTES // (4 * chunk_rows * dim))
    for lo in range(0, pairs_n, step):
        hi = min(lo + step, pairs_n)
        items = c_idx[lo:hi, None] * chunk_rows + torch.arange(chunk_rows, device=device)
        live = items < items_total
        safe = items.clamp(max=items_total - 1)
        s = torch.bmm(catalogue[safe].float(), q32[b_idx[lo:hi], :, None]).squeeze(-1) * scale
        if bias is not None:
            s = s + bias.float()[safe]
        s = s.masked_fill(~live, float("-inf"))
        if pairs is not None:
            ex_rows, ex_items = pairs
            # Ids outside [0, N) stay in the pairs (see _inputs.exclusion_pairs): no owner.
            valid = (ex_items >= 0) & (ex_items < items_total)
            ex_chunk = torch.where(valid, ex_items // chunk_rows, 0)
            owner = torch.where(valid, lookup[ex_rows, ex_chunk], -1)
            sel = (owner >= lo) & (owner < hi)
            s[owner[sel] - lo, ex_items[sel] - ex_chunk[sel] * chunk_rows] = float("-inf")
        found[lo:hi] = torch.topk(_keys.encode(s, items), keep, dim=1).values
    per_query = torch.bincount(b_idx, minlength=count)
    rank = torch.arange(pairs_n, device=device) - (torch.cumsum(per_query, 0) - per_query)[b_idx]
    extra = torch.full((count, int(per_query.max()) * keep), _keys.PAD_KEY, device=device)
    extra[b_idx[:, None], rank[:, None] * keep + torch.arange(keep, device=device)] = found
    return _keys.top_keys(torch.cat([cand.view(count, -1), extra], dim=1), k)


def rescan_queries(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    keys: Tensor,
    affected: Tensor,
) -> Tensor:
    """``keys`` with the rows of ``affected`` queries recomputed exactly by the reference."""
    redo = affected.nonzero().squeeze(1)
    sub_pairs = None
    if pairs is not None:
        position = torch.full_like(affected, -1, dtype=torch.int64)
        position[redo] = torch.arange(redo.numel(), device=redo.device)
        moved = position[pairs[0]]
        inside = moved >= 0
        sub_pairs = (moved[inside], pairs[1][inside])
    scores, index = _reference.score_topk(queries[redo], catalogue, k, sub_pairs, scale, bias)
    keys = keys.clone()
    keys[redo] = _keys.encode(scores, index)
    return keys
