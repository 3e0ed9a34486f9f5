"""``prism optimize``: faster variants of a local model, measured against their source.

``optimize_text_encoder`` builds one variant (ONNX fp32, ONNX Runtime dynamic int8, torch
dynamic int8, bf16, fp16) of a ``kind: text-encoder`` version, ``optimize_open_clip`` the same
variants of both towers of a ``kind: open-clip`` version (adding zero-shot accuracy to the
agreement), ``optimize_version`` picks by kind; each measures agreement and speed side by side
on this machine, and ``write_report`` writes ``report.json`` (with the ``version_spec`` that
serves it), ``report.md`` and ``report.png``.
"""

from ._clip import CLIP_VARIANTS, clip_variant_spec, optimize_open_clip
from ._measure import (
    DEFAULT_ROUNDS,
    DEFAULT_SECONDS,
    Agreement,
    Speed,
    agreement,
    embed_inputs,
    embed_texts,
    spearman,
    throughput,
)
from ._run import (
    DEFAULT_FLOOR,
    TEXT_VARIANTS,
    OptimizeError,
    optimize_text_encoder,
    variant_spec,
    write_report,
)
from ._sample import caption_sample, clip_prompts, image_sample, text_sample
from ._version import optimize_version

__all__ = [
    "CLIP_VARIANTS",
    "DEFAULT_FLOOR",
    "DEFAULT_ROUNDS",
    "DEFAULT_SECONDS",
    "TEXT_VARIANTS",
    "Agreement",
    "OptimizeError",
    "Speed",
    "agreement",
    "caption_sample",
    "clip_prompts",
    "clip_variant_spec",
    "embed_inputs",
    "embed_texts",
    "image_sample",
    "optimize_open_clip",
    "optimize_text_encoder",
    "optimize_version",
    "spearman",
    "text_sample",
    "throughput",
    "variant_spec",
    "write_report",
]
