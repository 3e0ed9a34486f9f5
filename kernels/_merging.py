"""Pass 2 of the Triton ``score_topk``: decode the merged top ``k`` and find what needs repair.

``finish`` launches ``_finish_kernel`` once per call (one program per query): it decodes the
keys into scores and indices and counts, per call, the saturated (query, chunk) pairs and the
queries whose ``k``-th score is not above their floor (see ``_scoring``). The counts come back
with the call's one host sync; when both are 0, which is the rule on real-valued data, the
decoded tensors are the answer. Otherwise ``repair`` recomputes what may be missing, in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from prism.kernels import _keys, _rescoring
from prism.kernels._triton_keys import key_score, relaxed_floor, relaxed_floor_jit
from prism.kernels._tuning import INTERPRET, pow2


@triton.jit(do_not_specialize=["k", "C"])
def _finish_kernel(
    keys_ptr,
    cand_ptr,
    floor_ptr,
    floor_stride,
    scores_ptr,
    index_ptr,
    counts_ptr,
    k,
    C,
    HAS_FLOOR: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Per query: decode the top ``k`` keys; add its saturated chunks to ``counts[0]`` and 1
    to ``counts[1]`` if its ``k``-th score is not above its floor."""
    b = tl.program_id(0).to(tl.int64)
    for j in range(0, k, BLOCK_K):
        offs = j + tl.arange(0, BLOCK_K)
        live = offs < k
        key = tl.load(keys_ptr + b * k + offs, mask=live, other=-9223372036854775808)
        index = tl.where(key == -9223372036854775808, -1, 0xFFFFFFFF - (key & 0xFFFFFFFF))
        tl.store(scores_ptr + b * k + offs, key_score(key), mask=live)
        tl.store(index_ptr + b * k + offs, index, mask=live)
    kth = tl.load(keys_ptr + b * k + k - 1)
    saturated = tl.zeros([BLOCK_C], tl.int32)
    slots = tl.arange(0, KP)
    for c0 in range(0, C, BLOCK_C):
        chunks = c0 + tl.arange(0, BLOCK_C)
        ptrs = cand_ptr + (b * C + chunks[:, None]) * KP + slots[None, :]
        kept = tl.load(ptrs, mask=(chunks < C)[:, None], other=-9223372036854775808)
        saturated += (tl.min(kept, axis=1) > kth).to(tl.int32)
    tl.atomic_add(counts_ptr, tl.sum(saturated, axis=0))
    if HAS_FLOOR:
        floor = relaxed_floor_jit(tl.load(floor_ptr + b * floor_stride))
        violated = (floor > float("-inf")) & (key_score(kth) <= floor)
        tl.atomic_add(counts_ptr + 1, violated.to(tl.int32))


def finish(keys: Tensor, cand: Tensor, floor: Tensor | None) -> tuple[Tensor, Tensor, int, int]:
    """(scores, index, saturated pairs, floor violations) for merged ``keys`` ``[B, k]`` of
    candidates ``cand`` ``[B, chunks, KP]`` and floors ``[B]`` (any stride) or None."""
    count, k = keys.shape
    chunks, keep = cand.shape[1], cand.shape[2]
    device = keys.device
    scores = torch.empty(count, k, dtype=torch.float32, device=device)
    index = torch.empty(count, k, dtype=torch.int64, device=device)
    counts = torch.zeros(2, dtype=torch.int32, device=device)
    _finish_kernel[(count,)](
        keys,
        cand,
        floor if floor is not None else scores,
        floor.stride(0) if floor is not None else 0,
        scores,
        index,
        counts,
        k,
        chunks,
        HAS_FLOOR=floor is not None,
        KP=keep,
        BLOCK_K=min(pow2(k), 1024),
        BLOCK_C=min(pow2(chunks), 256),
        num_warps=1 if INTERPRET else 4,
    )
    saturated_pairs, violations = counts.tolist()  # the one host sync of score_topk
    return scores, index, saturated_pairs, violations


def repair(
    q: Tensor,
    cat: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    cand: Tensor,
    keys: Tensor,
    floor: Tensor | None,
    chunk_rows: int,
    saturated_pairs: int,
) -> tuple[Tensor, Tensor]:
    """Exact top ``k`` where the candidates may be short (rare; see the module docstring)."""
    items_total = cat.shape[0]
    saturated = cand.min(dim=2).values > keys[:, -1:]
    violated = torch.zeros(q.shape[0], dtype=torch.bool, device=cat.device)
    if floor is not None:
        relaxed = relaxed_floor(floor)
        kth = _keys.decode(keys[:, -1])[0]
        violated = (relaxed > float("-inf")) & (kth <= relaxed)
    if saturated_pairs * chunk_rows > items_total:
        # Cheaper to score the whole catalogue again for the affected queries only.
        affected = saturated.any(dim=1) | violated
        keys = _rescoring.rescan_queries(q, cat, k, pairs, scale, bias, keys, affected)
    else:
        if saturated_pairs:
            keys = _rescoring.rescore_chunks(
                q, cat, k, pairs, scale, bias, cand, saturated, chunk_rows
            )
        if bool(violated.any()):
            keys = _rescoring.rescan_queries(q, cat, k, pairs, scale, bias, keys, violated)
    return _keys.decode(keys)
