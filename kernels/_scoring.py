"""Triton catalogue scoring with top-k: the catalogue is read once, scores never hit memory.

Pass 1 (``_score_kernel``): the catalogue is cut into chunks of ``chunk_rows`` rows, queries into
blocks of ``BLOCK_Q``. A program scores its query block against its chunk, ``BLOCK_N`` rows at a
time with ``tl.dot`` (float32 accumulation), and keeps each query's best ``KP`` (<= 8) items of
the chunk as int64 keys (see ``_keys``) in registers. Programs of one chunk are adjacent in the
grid, so with several query blocks the chunk is served from L2, not read again from memory.
Only scores better than the current ``KP``-th best enter the selection loop, so after the first
tiles most rows are rejected with one compare. The loop over (tile, k-step) is flat, so Triton's
pipeliner keeps the next tiles' loads in flight during a tile's selection.

Pass 2 (host, torch): ``topk`` over the ``[B, chunks * KP]`` candidate keys. A chunk may hold
more than ``KP`` of a query's true top ``k``; that is detected exactly, without rescoring: if
the chunk's worst kept candidate still ranks above the merged ``k``-th key, its unkept items
might too. Only such pairs are repaired, in torch (``_rescoring``). There are at least ``2k``
chunks where the catalogue allows, so on real-valued data that is rare; on adversarial data
(the whole top k in one chunk) it costs time, never correctness.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import _keys, _reference, _rescoring
from kernels._dispatch import interpreting
from kernels._tuning import Launcher, size_class

_PAD = tl.constexpr(_keys.PAD_KEY)
_NEG_INF = tl.constexpr(float("-inf"))
_INT32_MAX = tl.constexpr(2**31 - 1)
#: Candidates kept per (query, chunk). More costs selection work; fewer costs rescoring.
_MAX_KEEP = 8


@triton.jit
def _make_key(score, index):
    """int64 key of float32 ``score`` and ``index``; -inf and NaN give ``_PAD``."""
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - index.to(tl.int64))
    return tl.where(score > _NEG_INF, key, _PAD)


@triton.jit
def _key_score(key):
    """float32 score of an int64 key; ``_PAD`` gives -inf."""
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return tl.where(key == _PAD, _NEG_INF, bits.to(tl.float32, bitcast=True))


@triton.jit
def _absorb_tile(
    acc,
    best,
    rows,
    items,
    keep,
    scale,
    bias_ptr,
    ex_rows_ptr,
    ex_items_ptr,
    ex_lo,
    ex_hi,
    HAS_BIAS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    KP: tl.constexpr,
):
    """Merge a tile's scores (``acc``, ``[BLOCK_Q, BLOCK_N]``) into the best ``KP`` keys."""
    s = acc * scale
    if HAS_BIAS:
        s += tl.load(bias_ptr + items, mask=items >= 0, other=0.0).to(tl.float32)[None, :]
    if HAS_EXCLUDE:
        for e in range(ex_lo, ex_hi):
            ex_row = tl.load(ex_rows_ptr + e)
            ex_item = tl.load(ex_items_ptr + e)
            keep = keep & ((rows[:, None] != ex_row) | (items[None, :] != ex_item))
    # -0.0 == 0.0 but their bits differ; one key per score value keeps ties index-ordered.
    s = tl.where(s == 0.0, 0.0, s)
    # Tiles go up in item index, so an item scoring exactly the current KP-th best ranks
    # below it (higher index): only strictly better scores can enter.
    theta = _key_score(tl.min(best, axis=1))
    s = tl.where(keep & (s > theta[:, None]), s, _NEG_INF)
    entering = tl.max(tl.sum((s > _NEG_INF).to(tl.int32), axis=1), axis=0)
    slots = tl.arange(0, KP)
    for _ in range(tl.minimum(entering, KP)):
        top = tl.max(s, axis=1)
        pick = tl.min(tl.where(s == top[:, None], items[None, :], _INT32_MAX), axis=1)
        s = tl.where(items[None, :] == pick[:, None], _NEG_INF, s)
        key = _make_key(top, pick)
        worst = tl.min(best, axis=1)
        slot = tl.argmin(best, axis=1)
        better = (slots[None, :] == slot[:, None]) & (key > worst)[:, None]
        best = tl.where(better, key[:, None], best)
    return best


@triton.jit
def _score_kernel(
    q_ptr,
    q_stride,
    c_ptr,
    c_stride,
    bias_ptr,
    cand_ptr,
    ex_rows_ptr,
    ex_items_ptr,
    ex_off_ptr,
    B,
    N,
    D,
    C,
    QB,
    chunk_rows,
    scale,
    SIZE_CLASS,
    HAS_BIAS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    chunk = pid // QB
    rows = (pid % QB) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    live_q = rows < B
    best = tl.full([BLOCK_Q, KP], _PAD, tl.int64)
    lo = chunk * chunk_rows
    hi = tl.minimum(lo + chunk_rows, N)
    ex_lo = 0
    ex_hi = 0
    if HAS_EXCLUDE:
        ex_lo = tl.load(ex_off_ptr + pid)
        ex_hi = tl.load(ex_off_ptr + pid + 1)
    # One flat loop over (tile, k-step) rather than two nested loops: the software pipeliner
    # then keeps catalogue loads for the next tile in flight while this tile's top-k
    # selection runs, instead of draining the pipeline at every tile.
    k_steps = tl.cdiv(D, BLOCK_K)
    steps = tl.cdiv(hi - lo, BLOCK_N) * k_steps
    acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    for step in range(0, steps):
        kk = step % k_steps
        items = lo + (step // k_steps) * BLOCK_N + tl.arange(0, BLOCK_N)
        live_n = items < hi
        ks = kk * BLOCK_K + tl.arange(0, BLOCK_K)
        live_k = ks < D
        q_ptrs = q_ptr + rows[:, None] * q_stride + ks[None, :]
        q = tl.load(q_ptrs, mask=live_q[:, None] & live_k[None, :], other=0.0)
        c_ptrs = c_ptr + items.to(tl.int64)[:, None] * c_stride + ks[None, :]
        c = tl.load(c_ptrs, mask=live_n[:, None] & live_k[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            c = c.to(tl.float32)
        acc = tl.dot(q, tl.trans(c), acc, input_precision=PRECISION)
        if kk == k_steps - 1:
            keep = live_q[:, None] & live_n[None, :]
            best = _absorb_tile(
                acc,
                best,
                rows,
                tl.where(live_n, items, -1),
                keep,
                scale,
                bias_ptr,
                ex_rows_ptr,
                ex_items_ptr,
                ex_lo,
                ex_hi,
                HAS_BIAS,
                HAS_EXCLUDE,
                KP,
            )
            acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    slots = tl.arange(0, KP)
    out_ptrs = cand_ptr + (rows.to(tl.int64)[:, None] * C + chunk) * KP + slots[None, :]
    tl.store(out_ptrs, best, mask=live_q[:, None])


def _score_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    # Shared memory per pipeline stage holds a query tile and a catalogue tile; keep the
    # estimate under the 227 KB a Hopper block may use (float32 catalogues need half the depth).
    size = args["c_ptr"].element_size()
    block_q = int(args["BLOCK_Q"])

    def smem(c: triton.Config) -> int:
        return c.num_stages * (block_q + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * size

    kept = [c for c in configs if smem(c) <= 200 * 1024]
    return kept or [min(configs, key=smem)]


_SCORE = Launcher(
    _score_kernel,
    [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in (
            (128, 64, 8, 4),
            (256, 64, 8, 4),
            (128, 128, 8, 3),
            (256, 64, 8, 3),
            (128, 64, 4, 4),
            (64, 128, 4, 4),
        )
    ],
    key=["D", "BLOCK_Q", "SIZE_CLASS"],
    interpret=triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1),
    prune=_score_prune,
)


def _chunk_rows(items: int, query_blocks: int, k: int, device: torch.device) -> int:
    """Rows per program, a multiple of every BLOCK_N.

    Enough programs to fill the device, and at least ``2 * k`` chunks where the catalogue
    allows: a query's top ``k`` then averages at most half an item per chunk, so a chunk
    rarely holds more than its ``KP`` kept candidates and rescoring stays rare.
    """
    if interpreting():
        programs, align = 4, 32
    else:
        programs, align = 8 * torch.cuda.get_device_properties(device).multi_processor_count, 256
    chunks = max(triton.cdiv(programs, query_blocks), min(2 * k, triton.cdiv(items, align)), 1)
    return max(align, triton.cdiv(triton.cdiv(items, chunks), align) * align)


def _exclusion_segments(
    pairs: tuple[Tensor, Tensor], chunk_rows: int, block_q: int, query_blocks: int, segments: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, items, offsets): exclusions grouped by program (chunk x query block), CSR."""
    rows, items = pairs
    seg = (items // chunk_rows) * query_blocks + rows // block_q
    order = torch.argsort(seg)
    offsets = torch.zeros(segments + 1, dtype=torch.int32, device=rows.device)
    offsets[1:] = torch.cumsum(torch.bincount(seg, minlength=segments), 0)
    return rows[order].to(torch.int32), items[order].to(torch.int32), offsets


def candidates(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
) -> tuple[Tensor, int]:
    """Pass 1: int64 ``[B, chunks, KP]`` best keys of each (query, chunk), unordered within the
    last dimension (``PAD_KEY`` where a chunk has fewer items), and ``chunk_rows``.

    ``queries`` must already be in the catalogue's dtype, both with unit stride along D, and
    ``pairs`` restricted to items ``< N``; ``B, N, D, k >= 1``.
    """
    count, dim = queries.shape
    items_total = catalogue.shape[0]
    block_q = 16 if count <= 16 else 32 if count <= 32 else 64
    query_blocks = triton.cdiv(count, block_q)
    keep = min(triton.next_power_of_2(k), _MAX_KEEP)
    chunk_rows = _chunk_rows(items_total, query_blocks, k, catalogue.device)
    chunks = triton.cdiv(items_total, chunk_rows)
    cand = torch.empty(count, chunks, keep, dtype=torch.int64, device=catalogue.device)
    if pairs is not None:
        ex = _exclusion_segments(pairs, chunk_rows, block_q, query_blocks, chunks * query_blocks)
    else:
        ex = (cand, cand, cand)
    _SCORE(
        lambda meta: (chunks * query_blocks,),
        queries,
        queries.stride(0),
        catalogue,
        catalogue.stride(0),
        bias if bias is not None else cand,
        cand,
        *ex,
        count,
        items_total,
        dim,
        chunks,
        query_blocks,
        chunk_rows,
        float(scale),
        size_class(count, items_total),
        HAS_BIAS=bias is not None,
        HAS_EXCLUDE=pairs is not None,
        UPCAST=interpreting(),
        PRECISION="ieee" if catalogue.dtype == torch.float32 else None,
        KP=keep,
        BLOCK_Q=block_q,
    )
    return cand, chunk_rows


def score_topk(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Triton ``kernels.score_topk`` on canonical inputs (see ``_reference.score_topk``)."""
    count, dim = queries.shape
    items_total = catalogue.shape[0]
    if items_total == 0 or dim == 0 or count == 0:
        return _reference.score_topk(queries, catalogue, k, pairs, scale, bias)
    # A GEMM in the catalogue's dtype: round the (small) queries once, here.
    q = queries.to(catalogue.dtype)
    q = q if q.stride(1) == 1 else q.contiguous()
    cat = catalogue if catalogue.stride(1) == 1 else catalogue.contiguous()
    if pairs is not None:
        inside = pairs[1] < items_total
        pairs = (pairs[0][inside], pairs[1][inside])
    cand, chunk_rows = candidates(q, cat, k, pairs, scale, bias)
    keys = _keys.top_keys(cand.view(count, -1), k)
    saturated = cand.min(dim=2).values > keys[:, -1:]
    rescored = int(saturated.sum())  # the one host sync of the call
    if rescored and rescored * chunk_rows > items_total:
        # Cheaper to score the whole catalogue again for the affected queries only.
        keys = _rescoring.rescan_queries(q, cat, k, pairs, scale, bias, keys, saturated.any(dim=1))
    elif rescored:
        keys = _rescoring.rescore_chunks(q, cat, k, pairs, scale, bias, cand, saturated, chunk_rows)
    return _keys.decode(keys)
