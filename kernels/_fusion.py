"""Triton kernels: weighted multimodal fusion, and embedding bags (alone or fused into it).

Both kernels read each input element once, accumulate in float32 and write each output once.
Loads are cast to float32 at once: the arithmetic is float32 anyway, and Triton's interpreter
computes bfloat16 arithmetic wrongly, so the same source runs on CPU in tests.

* ``_fuse_kernel``: a program owns ``BLOCK_B`` rows x the whole embedding (``BLOCK_D``, the next
  power of two of ``D``), because the per-modality and final L2 norms need whole rows.
  Absent modalities are masked out of the loads, so they cost no memory traffic.
* ``_bag_kernel``: a program owns one bag. It gathers ``BLOCK_L`` table rows per step (many
  independent loads in flight, which is what a random gather needs to approach copy bandwidth),
  sums them in a ``[BLOCK_L, BLOCK_D]`` float32 tile and reduces once at the end. With
  ``FUSE`` it then loads the row's dense modalities and fuses, so the pooled history never
  touches device memory.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels._inputs import Bags
from kernels._tuning import Launcher, size_class

_EPS = tl.constexpr(1e-12)


@triton.jit
def _weight(w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, rows, m, live, HAS_MASK: tl.constexpr):
    """Weight of modality ``m`` for ``rows`` (0 where absent) and whether it is present."""
    present = live
    if HAS_MASK:
        present = present & (
            tl.load(mask_ptr + rows * mask_sb + m * mask_sm, mask=live, other=0) != 0
        )
    w = tl.load(w_ptr + rows * w_sb + m * w_sm, mask=live, other=0.0).to(tl.float32)
    return tl.where(present, w, 0.0), present


@triton.jit
def _fuse_kernel(
    embs,
    emb_strides,
    w_ptr,
    w_sb,
    w_sm,
    mask_ptr,
    mask_sb,
    mask_sm,
    out_ptr,
    out_stride,
    B,
    D,
    SIZE_CLASS,
    M: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    live = rows < B
    cmask = cols < D
    rows64 = rows.to(tl.int64)
    # The weights are tiny: read them twice rather than keep M vectors alive.
    total = tl.zeros([BLOCK_B], tl.float32)
    for m in tl.static_range(M):
        w, _ = _weight(w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, rows, m, live, HAS_MASK)
        total += w
    inv_total = tl.where(total != 0, 1.0 / tl.where(total != 0, total, 1.0), 0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    for m in tl.static_range(M):
        w, present = _weight(w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, rows, m, live, HAS_MASK)
        ptrs = embs[m] + rows64[:, None] * emb_strides[m] + cols[None, :]
        x = tl.load(ptrs, mask=present[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        acc += x * (w * inv_total / tl.maximum(norm, _EPS))[:, None]
    norm = tl.sqrt(tl.sum(acc * acc, axis=1))
    out = acc / tl.maximum(norm, _EPS)[:, None]
    out_ptrs = out_ptr + rows64[:, None] * out_stride + cols[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=live[:, None] & cmask[None, :])


@triton.jit
def _pool_bag(
    table_ptr,
    table_stride,
    idx_ptr,
    psw_ptr,
    start,
    end,
    cols,
    cmask,
    HAS_PSW: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Float32 ``[BLOCK_D]`` (weighted) sum of table rows ``indices[start:end]``."""
    acc = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    for j in range(start, end, BLOCK_L):
        pos = j + tl.arange(0, BLOCK_L)
        live = pos < end
        idx = tl.load(idx_ptr + pos, mask=live, other=0).to(tl.int64)
        ptrs = table_ptr + idx[:, None] * table_stride + cols[None, :]
        rows = tl.load(ptrs, mask=live[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        if HAS_PSW:
            rows = rows * tl.load(psw_ptr + pos, mask=live, other=0.0).to(tl.float32)[:, None]
        acc += rows
    return tl.sum(acc, axis=0)


@triton.jit
def _bag_kernel(
    table_ptr,
    table_stride,
    idx_ptr,
    off_ptr,
    psw_ptr,
    n_indices,
    embs,
    emb_strides,
    w_ptr,
    w_sb,
    w_sm,
    mask_ptr,
    mask_sb,
    mask_sm,
    out_ptr,
    out_stride,
    B,
    D,
    SIZE_CLASS,
    M: tl.constexpr,
    FUSE: tl.constexpr,
    MEAN: tl.constexpr,
    NORMALIZE: tl.constexpr,
    HAS_PSW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    INCLUDE_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    start = tl.load(off_ptr + b).to(tl.int64)
    if INCLUDE_LAST:
        end = tl.load(off_ptr + b + 1).to(tl.int64)
    else:
        end = tl.load(off_ptr + b + 1, mask=b + 1 < B, other=n_indices).to(tl.int64)
    live = b < B  # always true; a tensor so that masked scalar loads type-check
    pooled = _pool_bag(
        table_ptr,
        table_stride,
        idx_ptr,
        psw_ptr,
        start,
        end,
        cols,
        cmask,
        HAS_PSW,
        BLOCK_L,
        BLOCK_D,
    )
    if FUSE:
        # The history is modality M (the last); an empty bag counts as absent.
        total = tl.full([], 0.0, tl.float32)
        for m in tl.static_range(M + 1):
            w, present = _weight(
                w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, m, live, HAS_MASK
            )
            if m == M:
                w = tl.where(end > start, w, 0.0)
            total += w
        inv_total = tl.where(total != 0, 1.0 / tl.where(total != 0, total, 1.0), 0.0)
        acc = tl.zeros([BLOCK_D], tl.float32)
        for m in tl.static_range(M):
            w, present = _weight(
                w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, m, live, HAS_MASK
            )
            x = tl.load(embs[m] + b * emb_strides[m] + cols, mask=cmask & present, other=0.0)
            x = x.to(tl.float32)
            acc += x * (w * inv_total / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), _EPS))
        w, present = _weight(w_ptr, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, M, live, HAS_MASK)
        w = tl.where(end > start, w, 0.0)
        norm = tl.sqrt(tl.sum(pooled * pooled, axis=0))
        acc += pooled * (w * inv_total / tl.maximum(norm, _EPS))
        out = acc / tl.maximum(tl.sqrt(tl.sum(acc * acc, axis=0)), _EPS)
    else:
        out = pooled
        if MEAN:
            out = out / tl.maximum(end - start, 1).to(tl.float32)
        if NORMALIZE:
            out = out / tl.maximum(tl.sqrt(tl.sum(out * out, axis=0)), _EPS)
    tl.store(out_ptr + b * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=cmask)


def _fuse_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    # 2-8 K elements per program keep enough bytes in flight without spilling registers, and
    # at least 8 elements per thread keeps loads 16 bytes wide for 16-bit inputs.
    block_d = int(args["BLOCK_D"])
    kept = [
        c
        for c in configs
        if 2048 <= c.kwargs["BLOCK_B"] * block_d <= 8192
        and c.kwargs["BLOCK_B"] * block_d >= 8 * 32 * c.num_warps
    ]
    return kept or configs[:1]


def _bag_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    block_d = int(args["BLOCK_D"])
    kept = [c for c in configs if 1024 <= c.kwargs["BLOCK_L"] * block_d <= 16384]
    return kept or configs[:1]


_FUSE = Launcher(
    _fuse_kernel,
    [
        triton.Config({"BLOCK_B": bb}, num_warps=w, num_stages=1)
        for bb in (4, 8, 16, 32)
        for w in (4, 8)
    ],
    key=["D", "M", "SIZE_CLASS"],
    interpret=triton.Config({"BLOCK_B": 4}, num_warps=1),
    prune=_fuse_prune,
)

_BAG = Launcher(
    _bag_kernel,
    [
        # num_stages=1 only: the one 2-stage pick on the H200 (pooled bag, target shape) took
        # 2.6x the time of the 1-stage fused-history kernel, which does strictly more work
        # (bench/results/kernels-h200.csv); pipelining does not help a data-dependent gather.
        triton.Config({"BLOCK_L": bl}, num_warps=w, num_stages=1)
        for bl in (8, 16, 32)
        for w in (2, 4)
    ],
    key=["D", "M", "SIZE_CLASS"],
    interpret=triton.Config({"BLOCK_L": 4}, num_warps=1),
    prune=_bag_prune,
)


def _weight_args(weights: Tensor, mask: Tensor | None, out: Tensor) -> tuple[Any, ...]:
    """Pointer and strides for weights ``[M]`` or ``[B, M]`` (stride 0 broadcasts) and the mask."""
    w_sb, w_sm = (0, weights.stride(0)) if weights.dim() == 1 else weights.stride()
    if mask is None:
        return weights, w_sb, w_sm, out, 0, 0
    mask_u8 = mask.view(torch.uint8)
    return weights, w_sb, w_sm, mask_u8, *mask_u8.stride()


def fuse(
    parts: list[Tensor], weights: Tensor, mask: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """Triton ``kernels.fuse_modalities`` on canonical inputs (see ``_reference.fuse``)."""
    rows, dim = parts[0].shape
    out = torch.empty(rows, dim, dtype=out_dtype, device=parts[0].device)
    if rows == 0 or dim == 0:
        return out
    _FUSE(
        lambda meta: (triton.cdiv(rows, meta["BLOCK_B"]),),
        tuple(parts),
        tuple(p.stride(0) for p in parts),
        *_weight_args(weights, mask, out),
        out,
        out.stride(0),
        rows,
        dim,
        size_class(rows),
        M=len(parts),
        HAS_MASK=mask is not None,
        BLOCK_D=triton.next_power_of_2(dim),
    )
    return out


def pool(
    table: Tensor,
    bags: Bags,
    mode: str,
    normalize: bool,
    out_dtype: torch.dtype,
    fuse_with: tuple[list[Tensor], Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Triton embedding bag; with ``fuse_with=(parts, weights, mask)`` the bags are fused as
    the last modality instead of being written out (see ``_reference.fuse_history``)."""
    dim = table.shape[1]
    out = torch.empty(bags.count, dim, dtype=out_dtype, device=table.device)
    if bags.count == 0 or dim == 0:
        return out
    if table.stride(1) != 1:
        table = table.contiguous()
    parts, weights, mask = fuse_with if fuse_with is not None else ([], out, None)
    weight_args = (
        _weight_args(weights, mask, out) if fuse_with is not None else (out, 0, 0, out, 0, 0)
    )
    # Triton cannot pass an empty tuple; M=0 means the placeholder is never read.
    dense = tuple(parts) or (out,)
    _BAG(
        lambda meta: (bags.count,),
        table,
        table.stride(0),
        bags.indices,
        bags.offsets,
        bags.weights if bags.weights is not None else out,
        bags.indices.numel(),
        dense,
        tuple(p.stride(0) for p in dense),
        *weight_args,
        out,
        out.stride(0),
        bags.count,
        dim,
        size_class(bags.count, bags.indices.numel() // max(bags.count, 1)),
        M=len(parts),
        FUSE=fuse_with is not None,
        MEAN=mode == "mean",
        NORMALIZE=normalize,
        HAS_PSW=bags.weights is not None,
        HAS_MASK=mask is not None,
        INCLUDE_LAST=bags.include_last_offset,
        BLOCK_D=triton.next_power_of_2(dim),
    )
    return out
