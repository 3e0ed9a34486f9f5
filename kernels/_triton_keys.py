"""Triton twins of ``_keys`` (order-preserving int64 keys) and of the top-k floor relaxation.

Shared by the scoring kernel (``_scoring``) and the finishing kernel (``_merging``). Constants
are literals, not module-level ``tl.constexpr`` globals: Triton compares every global a kernel
reads with its compile-time value on each launch (~1 us apiece). -9223372036854775808 is
``_keys.PAD_KEY``; 3.4028234663852886e38 the largest float32; 0.000244140625 is
``FLOOR_SLACK``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from prism.kernels import _keys

#: The floor pre-pass bound is relaxed by this fraction of its magnitude before use.
FLOOR_SLACK = 2.0**-12

assert _keys.PAD_KEY == -9223372036854775808


@triton.jit
def make_key(score, index):
    """int64 key of float32 ``score`` and ``index``; -inf and NaN give ``PAD_KEY``."""
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | (0xFFFFFFFF - index.to(tl.int64))
    return tl.where(score > float("-inf"), key, -9223372036854775808)


@triton.jit
def key_score(key):
    """float32 score of an int64 key; ``PAD_KEY`` gives -inf."""
    ordered = (key >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return tl.where(key == -9223372036854775808, float("-inf"), bits.to(tl.float32, bitcast=True))


@triton.jit
def relaxed_floor_jit(f):
    """The floor the main pass uses for a pre-pass bound ``f``: ``f`` less ``FLOOR_SLACK`` of its
    magnitude; +inf becomes the largest float (so +inf scores still pass), -inf stays."""
    return tl.where(f == float("inf"), 3.4028234663852886e38, f - tl.abs(f) * 0.000244140625)


def relaxed_floor(bound: Tensor) -> Tensor:
    """Torch twin of :func:`relaxed_floor_jit` (the repair path recomputes violations)."""
    inf = torch.full_like(bound, float("inf"))
    return torch.where(
        bound == inf, torch.finfo(torch.float32).max, bound - bound.abs() * FLOOR_SLACK
    )
