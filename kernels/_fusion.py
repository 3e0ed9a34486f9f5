"""Triton kernels: weighted multimodal fusion, and embedding bags (alone or fused into it).

Both kernels read each input element once, accumulate in float32 and write each output once.
Loads are cast to float32 at once: the arithmetic is float32 anyway, and Triton's interpreter
computes bfloat16 arithmetic wrongly, so the same source runs on CPU in tests.

* ``_fuse_kernel``: a program owns ``BLOCK_B`` rows x the whole embedding (``BLOCK_D``, the next
  power of two of ``D``), because the per-modality and final L2 norms need whole rows.
  Absent modalities are masked out of the loads, so they cost no memory traffic. Configs with
  ``PER_SM > 0`` launch that many programs per SM, each looping over row blocks (grid-stride),
  so the pipeliner can prefetch the next block's rows while this block is reduced.
* ``_bag_kernel``: a program owns one bag. It gathers ``BLOCK_L`` table rows per step (many
  independent loads in flight, which is what a random gather needs to approach copy bandwidth)
  and loads the next step's indices before summing this step's rows, so a step costs one
  memory round trip, not two. Rows are summed in a ``[BLOCK_L, BLOCK_D]`` float32 tile and
  reduced once at the end. With ``FUSE`` it then loads the row's dense modalities and fuses,
  so the pooled history never touches device memory. Fixed-length bags (2-D indices) need no
  offsets tensor: ``FIXED_LEN`` computes them.

Weights shared by all rows may come as ``M`` floats (``W_SCALARS``): they travel in the kernel
arguments instead of a host-to-device copy per call.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from prism.kernels._inputs import Bags, Weights
from prism.kernels._tuning import INTERPRET, Launcher, pow2, size_class, sm_count

# Kernels use literals, not module-level tl.constexpr globals: Triton compares every global a
# kernel reads with its value at compile time on each launch, which costs ~1 us apiece.
# 1e-12 below is EPS of ``normalize(x) = x / max(||x||, EPS)`` (``_reference.EPS``).


@triton.jit
def _weight(
    w_ptr,
    w_vals,
    w_sb,
    w_sm,
    mask_ptr,
    mask_sb,
    mask_sm,
    rows,
    m,
    live,
    HAS_MASK: tl.constexpr,
    W_SCALARS: tl.constexpr,
):
    """Weight of modality ``m`` for ``rows`` (0 where absent) and whether it is present."""
    present = live
    if HAS_MASK:
        present = present & (
            tl.load(mask_ptr + rows * mask_sb + m * mask_sm, mask=live, other=0) != 0
        )
    if W_SCALARS:
        w = w_vals[m]
    else:
        w = tl.load(w_ptr + rows * w_sb + m * w_sm, mask=live, other=0.0).to(tl.float32)
    return tl.where(present, w, 0.0), present


# Sizes are not specialised (Triton would compile a variant for B == 1, a latency spike the
# first time a server sees a single-row batch); D is, its divisibility keeps loads wide.
@triton.jit(do_not_specialize=["B"])
def _fuse_kernel(
    embs,
    emb_strides,
    w_ptr,
    w_vals,
    w_sb,
    w_sm,
    mask_ptr,
    mask_sb,
    mask_sm,
    out_ptr,
    out_stride,
    B,
    D,
    M: tl.constexpr,
    HAS_MASK: tl.constexpr,
    W_SCALARS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    PER_SM: tl.constexpr,  # read by the grid, not the kernel
):
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    # Grid-stride over row blocks: one iteration per program unless the grid is capped.
    for blk in range(tl.program_id(0), tl.cdiv(B, BLOCK_B), tl.num_programs(0)):
        rows = blk * BLOCK_B + tl.arange(0, BLOCK_B)
        live = rows < B
        rows64 = rows.to(tl.int64)
        # The weights are tiny: read them twice rather than keep M vectors alive.
        total = tl.zeros([BLOCK_B], tl.float32)
        for m in tl.static_range(M):
            w, _ = _weight(
                w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, rows, m, live, HAS_MASK,
                W_SCALARS,
            )  # fmt: skip
            total += w
        inv_total = tl.where(total != 0, 1.0 / tl.where(total != 0, total, 1.0), 0.0)
        acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
        for m in tl.static_range(M):
            w, present = _weight(
                w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, rows, m, live, HAS_MASK,
                W_SCALARS,
            )  # fmt: skip
            ptrs = embs[m] + rows64[:, None] * emb_strides[m] + cols[None, :]
            x = tl.load(ptrs, mask=present[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            norm = tl.sqrt(tl.sum(x * x, axis=1))
            acc += x * (w * inv_total / tl.maximum(norm, 1e-12))[:, None]
        norm = tl.sqrt(tl.sum(acc * acc, axis=1))
        out = acc / tl.maximum(norm, 1e-12)[:, None]
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
    pos = start + tl.arange(0, BLOCK_L)
    idx = tl.load(idx_ptr + pos, mask=pos < end, other=0)
    for _ in range(start, end, BLOCK_L):
        live = pos < end
        ptrs = table_ptr + idx.to(tl.int64)[:, None] * table_stride + cols[None, :]
        rows = tl.load(ptrs, mask=live[:, None] & cmask[None, :], other=0.0)
        if HAS_PSW:
            scale = tl.load(psw_ptr + pos, mask=live, other=0.0).to(tl.float32)
        # The next step's indices, issued before this step's rows are used: their load
        # overlaps this gather instead of adding a round trip to the next step.
        pos += BLOCK_L
        idx = tl.load(idx_ptr + pos, mask=pos < end, other=0)
        rows = rows.to(tl.float32)
        if HAS_PSW:
            rows = rows * scale[:, None]
        acc += rows
    return tl.sum(acc, axis=0)


@triton.jit(do_not_specialize=["n_indices", "fixed_len", "B"])
def _bag_kernel(
    table_ptr,
    table_stride,
    idx_ptr,
    off_ptr,
    psw_ptr,
    n_indices,
    fixed_len,
    embs,
    emb_strides,
    w_ptr,
    w_vals,
    w_sb,
    w_sm,
    mask_ptr,
    mask_sb,
    mask_sm,
    out_ptr,
    out_stride,
    B,
    D,
    M: tl.constexpr,
    FUSE: tl.constexpr,
    MEAN: tl.constexpr,
    NORMALIZE: tl.constexpr,
    HAS_PSW: tl.constexpr,
    HAS_MASK: tl.constexpr,
    W_SCALARS: tl.constexpr,
    FIXED_LEN: tl.constexpr,
    INCLUDE_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    if FIXED_LEN:
        start = b * fixed_len
        end = start + fixed_len
    else:
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
                w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, m, live, HAS_MASK,
                W_SCALARS,
            )  # fmt: skip
            if m == M:
                w = tl.where(end > start, w, 0.0)
            total += w
        inv_total = tl.where(total != 0, 1.0 / tl.where(total != 0, total, 1.0), 0.0)
        acc = tl.zeros([BLOCK_D], tl.float32)
        for m in tl.static_range(M):
            w, present = _weight(
                w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, m, live, HAS_MASK,
                W_SCALARS,
            )  # fmt: skip
            x = tl.load(embs[m] + b * emb_strides[m] + cols, mask=cmask & present, other=0.0)
            x = x.to(tl.float32)
            acc += x * (w * inv_total / tl.maximum(tl.sqrt(tl.sum(x * x, axis=0)), 1e-12))
        w, present = _weight(
            w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm, b, M, live, HAS_MASK,
            W_SCALARS,
        )  # fmt: skip
        w = tl.where(end > start, w, 0.0)
        norm = tl.sqrt(tl.sum(pooled * pooled, axis=0))
        acc += pooled * (w * inv_total / tl.maximum(norm, 1e-12))
        out = acc / tl.maximum(tl.sqrt(tl.sum(acc * acc, axis=0)), 1e-12)
    else:
        out = pooled
        if MEAN:
            out = out / tl.maximum(end - start, 1).to(tl.float32)
        if NORMALIZE:
            out = out / tl.maximum(tl.sqrt(tl.sum(out * out, axis=0)), 1e-12)
    tl.store(out_ptr + b * out_stride + cols, out.to(out_ptr.dtype.element_ty), mask=cmask)


def _fuse_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    # 2-8 K elements per program keep enough bytes in flight without spilling registers, and
    # at least 8 elements per thread keeps loads 16 bytes wide for 16-bit inputs. Grid-stride
    # configs stage M row blocks per pipeline stage in shared memory: keep that under ~200 KB
    # per SM, and use them only when there are several blocks per program to overlap.
    block_d, count, rows = int(args["BLOCK_D"]), int(args["M"]), int(args["B"])

    def fits(c: triton.Config) -> bool:
        elements = c.kwargs["BLOCK_B"] * block_d
        if not (2048 <= elements <= 8192 and elements >= 8 * 32 * c.num_warps):
            return False
        per_sm = c.kwargs["PER_SM"]
        if per_sm == 0:
            return True
        staged = per_sm * c.num_stages * count * elements * 4
        return staged <= 200 * 1024 and rows >= 4 * per_sm * 132 * c.kwargs["BLOCK_B"]

    return [c for c in configs if fits(c)] or configs[:1]


def _bag_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    block_d = int(args["BLOCK_D"])
    kept = [
        c
        for c in configs
        if 1024 <= c.kwargs["BLOCK_L"] * block_d <= 16384
        and c.kwargs["BLOCK_L"] * block_d >= 8 * 32 * c.num_warps
    ]
    return kept or configs[:1]


_FUSE = Launcher(
    _fuse_kernel,
    [
        *(
            triton.Config({"BLOCK_B": bb, "PER_SM": 0}, num_warps=w, num_stages=1)
            for bb, w in ((4, 8), (4, 4), (8, 4), (8, 8), (16, 8), (2, 4))
        ),
        # Grid-stride: a few resident programs per SM, each prefetching its next block.
        *(
            triton.Config({"BLOCK_B": bb, "PER_SM": p}, num_warps=w, num_stages=st)
            for bb, w, p, st in ((4, 4, 4, 2), (8, 8, 2, 2), (4, 8, 4, 3))
        ),
    ],
    interpret=triton.Config({"BLOCK_B": 4, "PER_SM": 0}, num_warps=1),
    prune=_fuse_prune,
)

_BAG = Launcher(
    _bag_kernel,
    [
        # num_stages=1 only: the one 2-stage pick on the H200 (pooled bag, target shape) took
        # 2.6x the time of the 1-stage fused-history kernel, which does strictly more work
        # (bench/results/kernels-h200.csv); pipelining does not help a data-dependent gather.
        triton.Config({"BLOCK_L": bl}, num_warps=w, num_stages=1)
        for bl, w in ((8, 2), (16, 2), (16, 4), (32, 4), (64, 8))
    ],
    interpret=triton.Config({"BLOCK_L": 4}, num_warps=1),
    prune=_bag_prune,
)

#: Placeholder for ``w_vals`` when the weights are a tensor (never read: W_SCALARS is False).
_NO_SCALARS = (0.0,)


def _weight_args(weights: Weights, mask: Tensor | None, out: Tensor) -> tuple[Any, ...]:
    """``w_ptr, w_vals, w_sb, w_sm, mask_ptr, mask_sb, mask_sm`` for weights given as floats
    or as a ``[M]`` / ``[B, M]`` tensor (stride 0 broadcasts), and for the mask."""
    if isinstance(weights, tuple):
        w: tuple[Any, ...] = (out, weights, 0, 0)
    else:
        w_sb, w_sm = (0, weights.stride(0)) if weights.dim() == 1 else weights.stride()
        w = (weights, _NO_SCALARS, w_sb, w_sm)
    if mask is None:
        return (*w, out, 0, 0)
    mask_u8 = mask.view(torch.uint8)
    return (*w, mask_u8, *mask_u8.stride())


def _grid_fuse(rows: int, device: torch.device) -> Any:
    def grid(meta: dict[str, Any]) -> tuple[int]:
        blocks = -(-rows // meta["BLOCK_B"])
        per_sm = meta["PER_SM"]
        if per_sm == 0 or INTERPRET:
            return (blocks,)
        return (min(blocks, per_sm * sm_count(device.index or 0)),)

    return grid


def fuse(
    parts: list[Tensor], weights: Weights, mask: Tensor | None, out_dtype: torch.dtype
) -> Tensor:
    """Triton ``kernels.fuse_modalities`` on canonical inputs (see ``_reference.fuse``)."""
    first = parts[0]
    rows, dim = first.shape
    out = torch.empty(rows, dim, dtype=out_dtype, device=first.device)
    if rows == 0 or dim == 0:
        return out
    count, block_d, scalars = len(parts), pow2(dim), isinstance(weights, tuple)
    key = (count, block_d, size_class(rows), first.dtype, mask is not None, scalars)
    _FUSE(
        key,
        _grid_fuse(rows, first.device),
        tuple(parts),
        tuple(p.stride(0) for p in parts),
        *_weight_args(weights, mask, out),
        out,
        out.stride(0),
        rows,
        dim,
        M=count,
        HAS_MASK=mask is not None,
        W_SCALARS=scalars,
        BLOCK_D=block_d,
    )
    return out


def pool(
    table: Tensor,
    bags: Bags,
    mode: str,
    normalize: bool,
    out_dtype: torch.dtype,
    fuse_with: tuple[list[Tensor], Weights, Tensor | None] | None = None,
) -> Tensor:
    """Triton embedding bag; with ``fuse_with=(parts, weights, mask)`` the bags are fused as
    the last modality instead of being written out (see ``_reference.fuse_history``)."""
    dim = table.shape[1]
    count = bags.count
    out = torch.empty(count, dim, dtype=out_dtype, device=table.device)
    if count == 0 or dim == 0:
        return out
    if table.stride(1) != 1:
        table = table.contiguous()
    if fuse_with is not None:
        parts, weights, mask = fuse_with
        weight_args = _weight_args(weights, mask, out)
    else:
        parts, weights, mask = [], _NO_SCALARS, None
        weight_args = (out, _NO_SCALARS, 0, 0, out, 0, 0)
    # Triton cannot pass an empty tuple; M=0 means the placeholder is never read.
    dense = tuple(parts) or (out,)
    indices = bags.indices
    fixed = bags.length is not None
    block_d = pow2(dim)
    mean_length = indices.numel() // count
    key = (
        len(parts), block_d, size_class(count), size_class(mean_length), table.dtype,
        fuse_with is not None, isinstance(weights, tuple),
    )  # fmt: skip
    _BAG(
        key,
        lambda meta: (count,),
        table,
        table.stride(0),
        indices,
        out if bags.offsets is None else bags.offsets,
        bags.weights if bags.weights is not None else out,
        indices.numel(),
        bags.length or 0,
        dense,
        tuple(p.stride(0) for p in dense),
        *weight_args,
        out,
        out.stride(0),
        count,
        dim,
        M=len(parts),
        FUSE=fuse_with is not None,
        MEAN=mode == "mean",
        NORMALIZE=normalize,
        HAS_PSW=bags.weights is not None,
        HAS_MASK=mask is not None,
        W_SCALARS=isinstance(weights, tuple) and fuse_with is not None,
        FIXED_LEN=fixed,
        INCLUDE_LAST=bags.include_last_offset,
        BLOCK_D=block_d,
    )
    return out
