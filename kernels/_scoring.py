"""Triton catalogue scoring with top-k: the catalogue is read once, scores never hit memory.

Pass 1 (``_score_kernel``): the catalogue is cut into chunks of ``chunk_rows`` rows, queries into
blocks of ``BLOCK_Q``. A program scores its query block against its chunk, ``BLOCK_N`` rows at a
time with ``tl.dot`` (float32 accumulation), and keeps each query's best ``KP`` (<= 8) items of
the chunk as int64 keys (see ``_keys``) in registers. Programs of one chunk are adjacent in the
grid, so with several query blocks the chunk is served from L2, not read again from memory.
Only scores above a threshold enter the selection loop, which extracts one item per query per
round and raises the threshold after each; a round costs two row reductions over the tile, so
the number of rounds per tile is what the kernel's speed depends on beyond memory.

The threshold is the larger of the chunk's current ``KP``-th best and an optional per-query
*floor*. Early in a chunk the first is low and most items would enter; the floor fixes that. A
short pre-pass (the same kernel with ``BOUND_SLOTS > 0``) scores the first ``bound_rows`` rows
of every chunk and writes each tile's best score per query; the ``k``-th largest of those tile
maxima is a score that ``k`` distinct items reach, so no item below it can be in the top ``k``.
The main pass drops items at or below a slightly relaxed floor (the two passes round alike, but
nothing here relies on it): after the merge, a query whose ``k``-th score is not above its
floor is rescanned exactly, so the floor can cost time but never correctness.

Pass 2 (``_merging``, after one ``torch.topk`` over the ``[B, chunks * KP]`` candidate keys):
one launch decodes the top ``k`` and counts saturated (query, chunk) pairs and floor
violations, read back with the call's one host sync. A chunk is saturated when its worst kept
candidate still ranks above the merged ``k``-th key: its unkept items might too. Only such
pairs are repaired, in torch (``_rescoring``). There are at least ``2k`` chunks where the
catalogue allows, so on real-valued data that is rare; on adversarial data (the whole top k in
one chunk) it costs time, never correctness.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from prism.kernels import _keys, _merging, _reference
from prism.kernels._triton_keys import key_score, make_key, relaxed_floor_jit
from prism.kernels._tuning import INTERPRET, Launcher, pow2, size_class, sm_count

# The kernels spell their constants as literals, not module-level tl.constexpr globals: Triton
# compares every global a kernel reads with its compile-time value on each launch (~1 us
# apiece). -9223372036854775808 is _keys.PAD_KEY; 2147483647 is the largest int32.
#: Candidates kept per (query, chunk). More costs selection work; fewer costs rescoring.
_MAX_KEEP = 8
#: Rows per chunk scored by the floor pre-pass, and the least chunk length that gets one
#: (shorter chunks reach a high KP-th best soon enough on their own).
_BOUND_ROWS = 32 if INTERPRET else 256
_BOUND_MIN_CHUNK = 4 * _BOUND_ROWS if INTERPRET else 16 * _BOUND_ROWS
#: Tile-maximum slots per chunk in the pre-pass output: bound_rows / the smallest BLOCK_N.
_BOUND_SLOTS = _BOUND_ROWS // (32 if INTERPRET else 64)
#: Off: no floor pre-pass (the benchmark's A/B switch; the floor never changes results).
USE_FLOOR = True


@triton.jit
def _tile_scores(
    acc,
    rows,
    items,
    live,
    scale,
    bias_ptr,
    ex_rows_ptr,
    ex_items_ptr,
    ex_lo,
    ex_hi,
    HAS_BIAS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
):
    """Scores of a tile (``acc``, ``[BLOCK_Q, BLOCK_N]``); dead and excluded entries -inf."""
    s = acc * scale
    if HAS_BIAS:
        s += tl.load(bias_ptr + items, mask=items >= 0, other=0.0).to(tl.float32)[None, :]
    if HAS_EXCLUDE:
        for e in range(ex_lo, ex_hi):
            ex_row = tl.load(ex_rows_ptr + e)
            ex_item = tl.load(ex_items_ptr + e)
            live = live & ((rows[:, None] != ex_row) | (items[None, :] != ex_item))
    return tl.where(live, s, float("-inf"))


@triton.jit
def _absorb_tile(s, best, items, floor, KP: tl.constexpr):
    """Merge a tile's scores ``s`` (``[BLOCK_Q, BLOCK_N]``, NaN allowed) into the best ``KP``
    keys of each query, taking only items above ``floor`` (``[BLOCK_Q]``)."""
    slots = tl.arange(0, KP)
    worst = tl.min(best, axis=1)
    # Tiles go up in item index, so an item scoring exactly the current KP-th best ranks below
    # it (higher index): only strictly better scores can enter. NaN never does.
    theta = tl.maximum(key_score(worst), floor)
    s = tl.where(s > theta[:, None], s, float("-inf"))
    top = tl.max(s, axis=1)
    # One item per query per round, best first (ties: lower index first); after each, the
    # threshold rises to the new KP-th best, so the rest of the tile often drops out at once.
    while tl.max(top, axis=0) > float("-inf"):
        pick = tl.min(tl.where(s == top[:, None], items[None, :], 2147483647), axis=1)
        # -0.0 == 0.0 but their bits differ; one key per score value keeps ties index-ordered.
        key = make_key(tl.where(top == 0.0, 0.0, top), pick)
        slot = tl.argmin(best, axis=1)
        better = (slots[None, :] == slot[:, None]) & (key > worst)[:, None]
        best = tl.where(better, key[:, None], best)
        worst = tl.min(best, axis=1)
        theta = tl.maximum(key_score(worst), floor)
        s = tl.where((items[None, :] != pick[:, None]) & (s > theta[:, None]), s, float("-inf"))
        top = tl.max(s, axis=1)
    return best


# Sizes are not specialised: no recompile the first time B == 1 or one query block is seen.
@triton.jit(do_not_specialize=["B", "N", "C", "QB"])
def _score_kernel(
    q_ptr,
    q_stride,
    c_ptr,
    c_stride,
    bias_ptr,
    out_ptr,
    floor_ptr,
    floor_stride,
    ex_rows_ptr,
    ex_items_ptr,
    ex_off_ptr,
    B,
    N,
    D,
    C,
    QB,
    chunk_rows,
    bound_rows,
    scale,
    HAS_BIAS: tl.constexpr,
    HAS_EXCLUDE: tl.constexpr,
    HAS_FLOOR: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    KP: tl.constexpr,
    BOUND_SLOTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Main pass (``BOUND_SLOTS == 0``): int64 ``out[B, C, KP]``, each (query, chunk)'s best
    keys. Pre-pass (``BOUND_SLOTS > 0``): float32 ``out[B, C, BOUND_SLOTS]``, the best score
    of each of the chunk's first tiles (its first ``bound_rows`` rows), -inf past them."""
    pid = tl.program_id(0)
    chunk = pid // QB
    rows = (pid % QB) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    live_q = rows < B
    rows64 = rows.to(tl.int64)
    best = tl.full([BLOCK_Q, KP], -9223372036854775808, tl.int64)
    lo = chunk * chunk_rows
    hi = tl.minimum(lo + chunk_rows, N)
    if BOUND_SLOTS > 0:
        hi = tl.minimum(hi, lo + bound_rows)
    floor = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    if HAS_FLOOR:
        f = tl.load(floor_ptr + rows64 * floor_stride, mask=live_q, other=float("-inf"))
        floor = relaxed_floor_jit(f)
    ex_lo = 0
    ex_hi = 0
    if HAS_EXCLUDE:
        ex_lo = tl.load(ex_off_ptr + pid)
        ex_hi = tl.load(ex_off_ptr + pid + 1)
    # One flat loop over (tile, k-step) rather than two nested loops: the software pipeliner
    # then keeps catalogue loads for the next tile in flight while this tile's top-k
    # selection runs, instead of draining the pipeline at every tile.
    k_steps = tl.cdiv(D, BLOCK_K)
    tiles = tl.cdiv(hi - lo, BLOCK_N)
    acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    for step in range(0, tiles * k_steps):
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
            items = tl.where(live_n, items, -1)
            s = _tile_scores(
                acc,
                rows,
                items,
                live_q[:, None] & live_n[None, :],
                scale,
                bias_ptr,
                ex_rows_ptr,
                ex_items_ptr,
                ex_lo,
                ex_hi,
                HAS_BIAS,
                HAS_EXCLUDE,
            )
            if BOUND_SLOTS > 0:
                tile_max = tl.max(
                    tl.where(s > float("-inf"), s, float("-inf")), axis=1
                )  # NaN -> -inf
                slot = (rows64 * C + chunk) * BOUND_SLOTS + step // k_steps
                tl.store(out_ptr + slot, tile_max, mask=live_q)
            else:
                best = _absorb_tile(s, best, items, floor, KP)
            acc = tl.zeros([BLOCK_Q, BLOCK_N], tl.float32)
    if BOUND_SLOTS > 0:
        slots = tl.arange(0, BOUND_SLOTS)
        unused = tl.full([BLOCK_Q, BOUND_SLOTS], float("-inf"), tl.float32)
        out_ptrs = out_ptr + (rows64[:, None] * C + chunk) * BOUND_SLOTS + slots[None, :]
        tl.store(out_ptrs, unused, mask=live_q[:, None] & (slots[None, :] >= tiles))
    else:
        slots = tl.arange(0, KP)
        out_ptrs = out_ptr + (rows64[:, None] * C + chunk) * KP + slots[None, :]
        tl.store(out_ptrs, best, mask=live_q[:, None])


def _score_prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    # Shared memory per pipeline stage holds a query tile and a catalogue tile; keep the
    # estimate under the 227 KB a Hopper block may use (float32 catalogues need half the depth).
    # The pre-pass reads a few tiles per chunk: a BLOCK_N the slots cannot hold is out.
    size = args["c_ptr"].element_size()
    block_q = int(args["BLOCK_Q"])
    slots = int(args["BOUND_SLOTS"])

    def smem(c: triton.Config) -> int:
        return c.num_stages * (block_q + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * size

    kept = [
        c
        for c in configs
        if smem(c) <= 200 * 1024 and (slots == 0 or c.kwargs["BLOCK_N"] * slots >= _BOUND_ROWS)
    ]
    return kept or [min(configs, key=smem)]


_SCORE = Launcher(
    _score_kernel,
    [
        # (128, 64, 4 warps, 4 stages) was the H200's pick at the top-k target.
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in ((128, 64, 4, 4), (128, 64, 8, 4), (256, 64, 8, 3), (64, 128, 4, 4))
    ],
    interpret=triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1),
    prune=_score_prune,
)
#: The floor pre-pass reads ~1/16 of the catalogue; one fixed configuration, no tuning.
_PREPASS = Launcher(
    _score_kernel,
    [triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3)],
    interpret=triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_warps=1),
    prune=_score_prune,
)


def _chunk_rows(items: int, query_blocks: int, k: int, device: torch.device) -> int:
    """Rows per program, a multiple of every BLOCK_N.

    Enough programs to fill the device, and at least ``2 * k`` chunks where the catalogue
    allows: a query's top ``k`` then averages at most half an item per chunk, so a chunk
    rarely holds more than its ``KP`` kept candidates and rescoring stays rare.
    """
    if INTERPRET:
        programs, align = 4, 32
    else:
        programs, align = 8 * sm_count(device.index or 0), 256
    chunks = max(_cdiv(programs, query_blocks), min(2 * k, _cdiv(items, align)), 1)
    return max(align, _cdiv(_cdiv(items, chunks), align) * align)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _exclusion_segments(
    pairs: tuple[Tensor, Tensor],
    items_total: int,
    chunk_rows: int,
    block_q: int,
    query_blocks: int,
    segments: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, items, offsets): exclusions grouped by program (chunk x query block), CSR.

    Ids outside ``[0, N)`` become -1 (matches no live item) in segment 0: no host sync."""
    rows, items = pairs
    valid = (items >= 0) & (items < items_total)
    seg = torch.where(valid, items // chunk_rows, 0) * query_blocks + rows // block_q
    order = torch.argsort(seg)
    offsets = torch.zeros(segments + 1, dtype=torch.int32, device=rows.device)
    offsets[1:] = torch.cumsum(torch.bincount(seg, minlength=segments), 0)
    items = torch.where(valid, items, -1)
    return rows[order].to(torch.int32), items[order].to(torch.int32), offsets


def _launch(
    out: Tensor,
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    ex: tuple[Tensor, Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    floor: Tensor | None,
    chunk_rows: int,
    block_q: int,
    bound_slots: int = 0,
) -> None:
    count, dim = queries.shape
    items_total = catalogue.shape[0]
    chunks, query_blocks = out.shape[1], _cdiv(count, block_q)
    key = (
        block_q, pow2(dim), size_class(items_total), catalogue.dtype, bound_slots,
        bias is not None, ex is not None, floor is not None,
    )  # fmt: skip
    launcher = _PREPASS if bound_slots else _SCORE
    launcher(
        key,
        lambda meta: (chunks * query_blocks,),
        queries,
        queries.stride(0),
        catalogue,
        catalogue.stride(0),
        bias if bias is not None else out,
        out,
        floor if floor is not None else out,
        floor.stride(0) if floor is not None else 0,
        *(ex if ex is not None else (out, out, out)),
        count,
        items_total,
        dim,
        chunks,
        query_blocks,
        chunk_rows,
        _BOUND_ROWS,
        float(scale),
        HAS_BIAS=bias is not None,
        HAS_EXCLUDE=ex is not None,
        HAS_FLOOR=floor is not None,
        UPCAST=INTERPRET,
        PRECISION="ieee" if catalogue.dtype == torch.float32 else None,
        KP=out.shape[2] if bound_slots == 0 else 1,
        BOUND_SLOTS=bound_slots,
        BLOCK_Q=block_q,
    )


def _layout(count: int, items_total: int, k: int, device: torch.device) -> tuple[int, int, int]:
    """(block_q, chunk_rows, chunks) of a call."""
    block_q = 16 if count <= 16 else 32 if count <= 32 else 64
    chunk_rows = _chunk_rows(items_total, _cdiv(count, block_q), k, device)
    return block_q, chunk_rows, _cdiv(items_total, chunk_rows)


def candidates(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    pairs: tuple[Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    floor: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Pass 1: int64 ``[B, chunks, KP]`` best keys of each (query, chunk), unordered within the
    last dimension (``PAD_KEY`` where a chunk has fewer items above ``floor``), and
    ``chunk_rows``.

    ``queries`` must already be in the catalogue's dtype, both with unit stride along D;
    ``B, N, D, k >= 1``. ``floor``: float32 ``[B]`` (any stride) pre-pass bounds, or None.
    """
    count = queries.shape[0]
    items_total = catalogue.shape[0]
    block_q, chunk_rows, chunks = _layout(count, items_total, k, catalogue.device)
    keep = min(pow2(k), _MAX_KEEP)
    cand = torch.empty(count, chunks, keep, dtype=torch.int64, device=catalogue.device)
    ex = None
    if pairs is not None:
        query_blocks = _cdiv(count, block_q)
        segments = chunks * query_blocks
        ex = _exclusion_segments(pairs, items_total, chunk_rows, block_q, query_blocks, segments)
    _launch(cand, queries, catalogue, k, ex, scale, bias, floor, chunk_rows, block_q)
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
    device = catalogue.device
    # A GEMM in the catalogue's dtype: round the (small) queries once, here.
    q = queries if queries.dtype == catalogue.dtype else queries.to(catalogue.dtype)
    q = q if q.stride(1) == 1 else q.contiguous()
    cat = catalogue if catalogue.stride(1) == 1 else catalogue.contiguous()
    block_q, chunk_rows, chunks = _layout(count, items_total, k, device)
    query_blocks = _cdiv(count, block_q)
    keep = min(pow2(k), _MAX_KEEP)
    ex = None
    if pairs is not None:
        ex = _exclusion_segments(
            pairs, items_total, chunk_rows, block_q, query_blocks, chunks * query_blocks
        )
    floor = None
    if USE_FLOOR and chunk_rows >= _BOUND_MIN_CHUNK and chunks >= 2 * k:
        # Long chunks, and at least 2k tile maxima: the pre-pass costs ~1/16 of a read.
        floor = _floor(q, cat, k, ex, scale, bias, chunk_rows, block_q, chunks)
    cand = torch.empty(count, chunks, keep, dtype=torch.int64, device=device)
    _launch(cand, q, cat, k, ex, scale, bias, floor, chunk_rows, block_q)
    keys = _keys.top_keys(cand.view(count, -1), k)
    scores, index, saturated_pairs, violations = _merging.finish(keys, cand, floor)
    if not saturated_pairs and not violations:
        return scores, index
    return _merging.repair(
        q, cat, k, pairs, scale, bias, cand, keys, floor, chunk_rows, saturated_pairs
    )


def _floor(
    q: Tensor,
    cat: Tensor,
    k: int,
    ex: tuple[Tensor, Tensor, Tensor] | None,
    scale: float,
    bias: Tensor | None,
    chunk_rows: int,
    block_q: int,
    chunks: int,
) -> Tensor:
    """Pre-pass: float32 ``[B]`` (a strided view) ``k``-th largest tile maximum per query."""
    count = q.shape[0]
    tile_max = torch.empty(count, chunks, _BOUND_SLOTS, dtype=torch.float32, device=cat.device)
    _launch(tile_max, q, cat, k, ex, scale, bias, None, chunk_rows, block_q, _BOUND_SLOTS)
    return torch.topk(tile_max.view(count, -1), k, dim=1).values[:, k - 1]
