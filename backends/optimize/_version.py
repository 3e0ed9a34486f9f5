"""``optimize_version``: the variant builder for a version's kind (text encoder or open_clip).

Its own module so that neither builder imports the other (the CLIP builder reuses the text
builder's helpers from ``_run``).
"""

from __future__ import annotations

from typing import Any

from .._specs import OpenClipSpec, TextEncoderSpec
from ._clip import optimize_open_clip
from ._run import OptimizeError, optimize_text_encoder


def optimize_version(spec: Any, **kwargs: Any) -> dict[str, Any]:
    """``optimize_text_encoder`` or ``optimize_open_clip``, whichever ``spec``'s kind takes."""
    if isinstance(spec, TextEncoderSpec):
        return optimize_text_encoder(spec, **kwargs)
    if isinstance(spec, OpenClipSpec):
        return optimize_open_clip(spec, **kwargs)
    kind = getattr(spec, "kind", getattr(spec, "backend", "?"))
    raise OptimizeError(
        f"{kwargs.get('source', 'the source')} is {kind!r}: prism optimize builds variants of "
        "local text-encoder and open-clip versions"
    )
