"""``prism optimize``: faster variants of a local model, measured against their source.

``optimize_text_encoder`` builds one variant (ONNX fp32, ONNX Runtime dynamic int8, torch
dynamic int8, bf16, fp16) of a ``kind: text-encoder`` version, measures agreement and speed
side by side on this machine, and ``write_report`` writes ``report.json`` (with the
``version_spec`` that serves it), ``report.md`` and ``report.png``.
"""

from ._measure import Agreement, agreement, embed_texts, spearman, throughput
from ._run import (
    DEFAULT_FLOOR,
    TEXT_VARIANTS,
    OptimizeError,
    optimize_text_encoder,
    variant_spec,
    write_report,
)
from ._sample import text_sample

__all__ = [
    "DEFAULT_FLOOR",
    "TEXT_VARIANTS",
    "Agreement",
    "OptimizeError",
    "agreement",
    "embed_texts",
    "optimize_text_encoder",
    "spearman",
    "text_sample",
    "throughput",
    "variant_spec",
    "write_report",
]
