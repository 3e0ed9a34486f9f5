"""Order-preserving int64 keys for (score, item index) pairs.

``score_topk`` must order by score descending and break ties by the lower item index, on every
backend. ``torch.topk`` gives no tie order, so both implementations rank int64 keys instead:

    key = (orderable_int32(score) << 32) | (0xFFFFFFFF - index)

A larger key means a higher score, or the same score and a lower index. Keys are unique per
item, so any top-k over keys is deterministic. ``PAD_KEY`` (int64 min) marks "no item": it
sorts below every real key and decodes to score ``-inf``, index ``-1``. Scores of ``-inf`` and
NaN are encoded as ``PAD_KEY`` too (such items are treated as absent). The Triton twins in
``_triton_keys.py`` build the same keys; keep the two in step.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD_KEY = -(2**63)
_LOW_MASK = 0xFFFFFFFF
_FLIP = 0x7FFFFFFF


def encode(scores: Tensor, index: Tensor) -> Tensor:
    """Keys for float32 ``scores`` and int64 ``index`` (broadcastable, same device)."""
    # -0.0 and +0.0 compare equal, so they must share a key for the index tie-break to apply.
    s = torch.where(scores == 0, torch.zeros_like(scores), scores).contiguous()
    bits = s.view(torch.int32)
    # Flipping the 31 value bits of negative floats makes signed-int order match float order.
    ordered = torch.where(bits >= 0, bits, bits ^ _FLIP).to(torch.int64)
    keys = (ordered << 32) | (_LOW_MASK - index)
    absent = torch.isnan(s) | (s == float("-inf"))
    return keys.masked_fill(absent, PAD_KEY)


def decode(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`encode`: (float32 scores, int64 indices); ``PAD_KEY`` -> (-inf, -1)."""
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ _FLIP).contiguous()
    scores = bits.view(torch.float32)
    index = _LOW_MASK - (keys & _LOW_MASK)
    pad = keys == PAD_KEY
    return scores.masked_fill(pad, float("-inf")), index.masked_fill(pad, -1)


def top_keys(keys: Tensor, k: int) -> Tensor:
    """The ``k`` largest keys of each row, descending; rows shorter than ``k`` are padded."""
    width = keys.shape[-1]
    if width < k:
        pad = keys.new_full((*keys.shape[:-1], k - width), PAD_KEY)
        keys = torch.cat([keys, pad], dim=-1)
    return torch.topk(keys, k, dim=-1, sorted=True).values
