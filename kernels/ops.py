"""Prism's embedding kernels: multimodal fusion, pooled history bags, catalogue top-k.

Plain functions on torch tensors. On CUDA tensors they run custom Triton kernels; elsewhere the
torch references in ``prism.kernels._reference`` (which also define the semantics). Set
``PRISM_KERNELS=reference|triton`` to force one; ``triton`` on CPU tensors runs Triton's
interpreter and needs ``TRITON_INTERPRET=1`` set before triton is imported. Importing this
module never imports triton.

Each function checks its arguments once, then runs the Triton kernel or the torch reference.
``prism.kernels`` itself has no ``__init__``: the checkout's ``kernels/`` folder must never
stand in for Hugging Face's ``kernels`` distribution (see ARCHITECTURE.md, Packaging).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from prism.kernels import _dispatch, _inputs, _reference
from prism.kernels._dispatch import KernelBackendError
from prism.kernels._dispatch import choose as kernel_backend
from prism.kernels._inputs import Exclusions
from prism.kernels.choice import requested_backend

__all__ = [
    "KernelBackendError",
    "fuse_modalities",
    "fuse_with_history",
    "kernel_backend",
    "pooled_embedding_bag",
    "requested_backend",
    "score_topk",
]

BackendChoice = Literal["auto", "triton", "reference"] | None


def fuse_modalities(
    embs: Tensor | Sequence[Tensor],
    weights: Tensor | Sequence[float],
    mask: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    backend: BackendChoice = None,
) -> Tensor:
    """Fuse M modality embeddings per row into one unit vector.

    ``out[b] = normalize(sum_m w'[b, m] * normalize(embs[m][b]))`` where ``w'`` are the weights
    of the modalities present in row ``b``, divided by their sum. A row with no modality present
    (or whose present weights sum to 0) is all zeros. ``normalize(x) = x / max(||x||_2, 1e-12)``.

    Args:
        embs: ``[M, B, D]``, or a sequence of M ``[B, D]`` tensors (dtypes may differ, no
            stacking copy is made); float32, float16 or bfloat16.
        weights: ``[M]`` (shared by all rows) or ``[B, M]``; any float dtype.
        mask: bool ``[B, M]``, True where the modality is present; absent entries are never
            read, so they may hold anything. None means all present.
        out_dtype: output dtype; defaults to the promoted dtype of ``embs``.
        backend: ``auto`` / ``triton`` / ``reference``; overrides ``$PRISM_KERNELS``.

    Returns:
        ``[B, D]`` in ``out_dtype``. One read of the inputs, one write, float32 arithmetic.
    """
    parts = _inputs.modality_list(embs)
    rows, device = parts[0].shape[0], parts[0].device
    w = _inputs.modality_weights(weights, rows, len(parts), device)
    m = _inputs.modality_mask(mask, rows, len(parts), device)
    dtype = out_dtype or _inputs.promote(*(p.dtype for p in parts))
    if _dispatch.choose(device, backend) == "reference":
        return _reference.fuse(parts, _inputs.weights_tensor(w, device), m, dtype)
    from prism.kernels import _fusion

    return _fusion.fuse(parts, w, m, dtype)


def pooled_embedding_bag(
    table: Tensor,
    indices: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None = None,
    mode: Literal["mean", "sum"] = "mean",
    normalize: bool = False,
    *,
    include_last_offset: bool = False,
    out_dtype: torch.dtype | None = None,
    backend: BackendChoice = None,
) -> Tensor:
    """Sum or mean of table rows per bag, like ``torch.nn.functional.embedding_bag``.

    Args:
        table: ``[N, D]`` float32/float16/bfloat16.
        indices: ``[L]`` int32 or int64 rows of ``table`` (each in ``[0, N)``, not checked on
            the GPU), or ``[B, L]`` for B bags of L rows with ``offsets=None``.
        offsets: ``[B]`` start of each bag in ``indices`` (the last bag ends at ``L``), or
            ``[B + 1]`` with ``include_last_offset=True``; non-decreasing.
        per_sample_weights: float ``[L]`` (shape of ``indices``) multiplying each row. Unlike
            torch, allowed with ``mode="mean"`` too: the weighted sum divided by the bag size.
        mode: ``"sum"`` or ``"mean"``; an empty bag gives zeros either way.
        normalize: L2-normalise each output row (zeros stay zeros).
        out_dtype: defaults to ``table.dtype``.
        backend: ``auto`` / ``triton`` / ``reference``; overrides ``$PRISM_KERNELS``.

    Returns:
        ``[B, D]``, accumulated in float32. To use the pooled history as a fusion modality
        without writing it out and reading it back, call :func:`fuse_with_history`.
    """
    if mode not in ("mean", "sum"):
        raise ValueError(f"mode must be 'mean' or 'sum', got {mode!r}")
    _check_table(table)
    bags = _inputs.bags(indices, offsets, per_sample_weights, include_last_offset, table.device)
    dtype = out_dtype or table.dtype
    if _dispatch.choose(table.device, backend) == "reference":
        return _reference.pool(table, bags, mode, normalize).to(dtype)
    from prism.kernels import _fusion

    return _fusion.pool(table, bags, mode, normalize, dtype)


def fuse_with_history(
    embs: Tensor | Sequence[Tensor],
    weights: Tensor | Sequence[float],
    table: Tensor,
    indices: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None = None,
    mask: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    include_last_offset: bool = False,
    backend: BackendChoice = None,
) -> Tensor:
    """:func:`fuse_modalities` with a pooled history bag as one more modality, in one pass.

    The history of row ``b`` (the table rows of bag ``b``, see :func:`pooled_embedding_bag`)
    is modality ``M``, after the M dense ones. Only its direction matters (it is normalised
    like every modality), so there is no ``mode``; ``per_sample_weights`` still change it. The
    kernel pools each bag in registers and fuses it at once: the pooled ``[B, D]`` history is
    never written to or read from memory. An empty bag counts as an absent modality.

    Args:
        embs: M dense modalities, ``[M, B, D]`` or a sequence of ``[B, D]`` (M may be 0: an
            empty sequence).
        weights: ``[M + 1]`` or ``[B, M + 1]``, the history's weight last.
        table, indices, offsets, per_sample_weights, include_last_offset: the bags, as in
            :func:`pooled_embedding_bag`; there must be B bags.
        mask: bool ``[B, M + 1]`` (history last) or None.
        out_dtype: defaults to the promoted dtype of ``embs`` and ``table``.
        backend: ``auto`` / ``triton`` / ``reference``; overrides ``$PRISM_KERNELS``.

    Returns:
        ``[B, D]`` unit rows (zero rows where nothing is present).
    """
    _check_table(table)
    bags = _inputs.bags(indices, offsets, per_sample_weights, include_last_offset, table.device)
    is_empty = not isinstance(embs, Tensor) and len(embs) == 0
    parts = [] if is_empty else _inputs.modality_list(embs)
    if parts and parts[0].shape != (bags.count, table.shape[1]):
        raise ValueError(
            f"embs rows are {tuple(parts[0].shape)}, expected ({bags.count}, {table.shape[1]})"
        )
    if parts and parts[0].device != table.device:
        raise ValueError(f"embs are on {parts[0].device}, the table on {table.device}")
    w = _inputs.modality_weights(weights, bags.count, len(parts) + 1, table.device)
    m = _inputs.modality_mask(mask, bags.count, len(parts) + 1, table.device)
    dtype = out_dtype or _inputs.promote(table.dtype, *(p.dtype for p in parts))
    if _dispatch.choose(table.device, backend) == "reference":
        w_t = _inputs.weights_tensor(w, table.device)
        return _reference.fuse_history(parts, w_t, m, table, bags, dtype)
    from prism.kernels import _fusion

    return _fusion.pool(table, bags, "sum", False, dtype, fuse_with=(parts, w, m))


#: with backend "auto", catalogues smaller than this use the torch path even on CUDA
AUTO_TOPK_MIN_ITEMS = 1_000_000


def score_topk(
    queries: Tensor,
    catalogue: Tensor,
    k: int,
    exclude: Exclusions = None,
    scale: float = 1.0,
    bias: Tensor | None = None,
    *,
    backend: BackendChoice = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` best catalogue items per query by ``scale * <query, item> + bias[item]``.

    On the GPU the full ``[B, N]`` score matrix is never materialised: the catalogue is read
    once, each tile keeps its best candidates, and a small merge picks the top ``k``.

    Args:
        queries: ``[B, D]`` float; rounded to ``catalogue.dtype`` before the product (as a GEMM
            in that dtype would), which then accumulates in float32.
        catalogue: ``[N, D]`` bfloat16/float16 (the fast path) or float32.
        k: number of results per query, ``>= 0``.
        exclude: items to drop per query (e.g. the user's history), as a ``list`` of B
            sequences or 1-D int tensors; a ``tuple`` ``(indices, offsets)`` with offsets
            ``[B]`` (starts) or ``[B + 1]`` (CSR); or a ``[B, H]`` int tensor padded with -1.
            Out-of-range indices are ignored.
        scale: multiplies the dot product (e.g. an inverse temperature).
        bias: float ``[N]`` added to every query's score of each item, or None.
        backend: ``auto`` / ``triton`` / ``reference``; overrides ``$PRISM_KERNELS``.

    Returns:
        ``(scores, indices)``: float32 ``[B, k]`` and int64 ``[B, k]``, by score descending,
        equal scores by lower index. Items scoring -inf or NaN count as absent. When fewer than
        ``k`` items remain, the tail is padded with score ``-inf`` and index ``-1``.
    """
    if queries.dim() != 2 or catalogue.dim() != 2 or queries.shape[1] != catalogue.shape[1]:
        raise ValueError(
            f"queries [B, D] and catalogue [N, D] must agree on D, got "
            f"{tuple(queries.shape)} and {tuple(catalogue.shape)}"
        )
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _inputs.check_float("queries", queries)
    _inputs.check_float("catalogue", catalogue)
    device = catalogue.device
    if queries.device != device:
        raise ValueError(f"queries are on {queries.device}, the catalogue on {device}")
    if bias is not None and bias.shape != (catalogue.shape[0],):
        raise ValueError(f"bias must be [{catalogue.shape[0]}], got {tuple(bias.shape)}")
    pairs = _inputs.exclusion_pairs(exclude, queries.shape[0], device)
    if k == 0:
        empty = torch.empty(queries.shape[0], 0, device=device)
        return empty, empty.long()
    choice = _dispatch.choose(device, backend)
    # measured on an H200 (bench/results/kernels-h200.md): below ~1e6 items one cuBLAS GEMM
    # plus torch.topk wins (0.07-0.13 ms vs 0.35-0.41 ms at N=1e5); the tiled kernel pays
    # off once the catalogue, read once, dominates (2.07x at N=1e7). "auto" follows that.
    small = catalogue.shape[0] < AUTO_TOPK_MIN_ITEMS and _dispatch.is_auto(backend)
    if choice == "reference" or small:
        return _reference.score_topk(queries, catalogue, k, pairs, scale, bias)
    from prism.kernels import _scoring

    return _scoring.score_topk(queries, catalogue, k, pairs, scale, bias)


def _check_table(table: Tensor) -> None:
    if table.dim() != 2:
        raise ValueError(f"table must be [N, D], got shape {tuple(table.shape)}")
    _inputs.check_float("table", table)
