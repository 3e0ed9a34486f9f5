"""``optimize_text_encoder``: build one variant of a text encoder, measure it, report.

Variants of ``kind: text-encoder``:

- ``onnx``: exported to ONNX, fp32, served by ``kind: onnx`` (ONNX Runtime, CPU);
- ``onnx-int8``: the same graph after ONNX Runtime's dynamic int8 quantisation;
- ``int8``: torch's dynamic int8 quantisation of the linear layers, at load (CPU);
- ``bf16``: the weights cast to bfloat16 at load (CPU or GPU);
- ``fp16``: the weights cast to float16 at load (GPU only: refused on a CPU-only machine).

The torch variants are the source's own weights converted when the version loads
(``precision:`` in its spec): the folder gets the report only, there is nothing to ship.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from .._base import LocalModel
from .._registry import build_local_model, resolve_device
from .._specs import LocalSpec, TextEncoderSpec
from .._text_encoder import packaged_model_path
from . import _measure, _report
from ._export import export_text_onnx, quantize_onnx_int8
from ._measure import DEFAULT_ROUNDS, DEFAULT_SECONDS
from ._sample import text_sample

TEXT_VARIANTS = ("onnx", "onnx-int8", "int8", "bf16", "fp16")
#: default agreement floor: a variant whose mean cosine with the source is lower is refused
DEFAULT_FLOOR = 0.99


class OptimizeError(Exception):
    """The variant cannot be built or measured here (a clear reason, no traceback)."""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "onnxruntime", "onnx", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


def _state_bytes(model: LocalModel) -> int:
    """Bytes of the loaded (converted) torch model's state, as ``torch.save`` writes it."""
    import torch

    buf = io.BytesIO()
    torch.save(model._model.state_dict(), buf)  # type: ignore[attr-defined]
    return buf.tell()


def variant_spec(
    source: TextEncoderSpec, variant: str, out_dir: Path, device: str
) -> dict[str, Any]:
    """The ``versions:`` entry that serves ``variant`` of ``source``."""
    if variant in ("onnx", "onnx-int8"):
        spec: dict[str, Any] = {"backend": "local", "kind": "onnx", "path": str(out_dir)}
        if source.max_length != 256:
            spec["max_length"] = source.max_length
        return spec
    if variant == "fp16" and device != "cuda":
        raise OptimizeError(
            "fp16 runs on a GPU and this machine has none (torch sees no CUDA device); "
            "on CPU try --variant bf16, onnx-int8 or int8"
        )
    if variant == "int8" and device != "cpu":
        raise OptimizeError("int8 (torch dynamic quantisation) runs on CPU; use --device cpu")
    base = source.model_dump(mode="json", exclude_defaults=True, exclude={"precision", "device"})
    return {"backend": "local", **base, "device": device, "precision": variant}


def optimize_text_encoder(
    source_spec: TextEncoderSpec,
    *,
    source: str,
    variant: str,
    out_dir: Path,
    base_dir: Path,
    device: str = "cpu",
    seconds: float = DEFAULT_SECONDS,
    rounds: int = DEFAULT_ROUNDS,
    floor: float = DEFAULT_FLOOR,
    force: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build ``variant`` of the text encoder ``source_spec`` (named ``source``, e.g.
    ``text-embed@1``) into ``out_dir``, measure it against the source on ``device`` and write
    the report. Returns the report; ``report["accepted"]`` is False below the floor (the
    variant's model file is then removed) unless ``force``."""
    if variant not in TEXT_VARIANTS:
        raise OptimizeError(f"unknown variant {variant!r}; one of {', '.join(TEXT_VARIANTS)}")
    device = resolve_device(device)
    if variant in ("onnx", "onnx-int8", "int8"):
        device = "cpu"  # ONNX Runtime and torch's dynamic int8 run here on CPU
    spec = variant_spec(source_spec, variant, out_dir, device)
    folder = (
        packaged_model_path(source_spec.source)
        if source_spec.source
        else base_dir / str(source_spec.path)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    say(f"[1/4] building {variant} of {source}")
    if variant in ("onnx", "onnx-int8"):
        model_file = export_text_onnx(folder, out_dir, max_length=source_spec.max_length)
        if variant == "onnx-int8":
            quantize_onnx_int8(model_file)
    else:
        notes.append(f"{variant}: the source's weights, converted when the version loads")

    say(f"[2/4] loading {source} and the variant on {device}")
    adapter: TypeAdapter[Any] = TypeAdapter(LocalSpec)
    source_model = build_local_model(source_spec.model_copy(update={"device": device}), base_dir)
    variant_model = build_local_model(adapter.validate_python(spec), base_dir)
    source_model.load()
    try:
        variant_model.load()
    except Exception as exc:  # e.g. a dtype this CPU's torch cannot run
        raise OptimizeError(f"the {variant} variant does not load here: {exc}") from exc

    texts = text_sample()
    say(f"[3/4] agreement on {len(texts)} fixed sentences")
    agreement = _measure.agreement(
        _measure.embed_texts(source_model, texts), _measure.embed_texts(variant_model, texts)
    )

    say(f"[4/4] speed side by side, batch 1 and 32 ({rounds} alternating rounds each)")
    load_before = os.getloadavg()
    speed, speedup = _measure.side_by_side(
        source_model,
        variant_model,
        [(f"batch{batch}", texts, batch, seconds / 2) for batch in (1, 32)],
        rounds=rounds,
        progress=progress,
    )
    load_after = os.getloadavg()

    source_size = _weights_bytes(folder)
    if variant in ("onnx", "onnx-int8"):
        variant_size = (out_dir / "model.onnx").stat().st_size
    else:
        variant_size = _state_bytes(variant_model)
    source_model.close()
    variant_model.close()

    accepted = agreement.cosine_mean >= floor or force
    report: dict[str, Any] = {
        "source": source,
        "variant": variant,
        "accepted": accepted,
        "forced": bool(force and agreement.cosine_mean < floor),
        "floor": {"cosine_mean": floor},
        "speedup_batch1": speedup["batch1"],
        "speedup_batch32": speedup["batch32"],
        "cosine_mean": round(agreement.cosine_mean, 6),
        "cosine_min": round(agreement.cosine_min, 6),
        "spearman": round(agreement.spearman, 6),
        "version_spec": spec,
        "source_spec": source_spec.model_dump(mode="json", exclude_defaults=True),
        "items_per_s": speed,
        "size_bytes": {"source": source_size, "variant": variant_size},
        "sample": {"kind": "text", "items": len(texts)},
        "device": device,
        "rounds": rounds,
        "seconds": seconds,
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_avg": f"{load_before[0]:.1f} -> {load_after[0]:.1f}",
        },
        "versions": _versions(),
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "notes": notes,
    }
    if not accepted:
        # refused: nothing servable stays behind, only the report that says why
        for name in ("model.onnx",):
            (out_dir / name).unlink(missing_ok=True)
    return report


def write_report(out_dir: Path, report: dict[str, Any], snippet: str = "") -> None:
    """``report.json``, ``report.md`` and ``report.png`` in ``out_dir``."""
    if snippet:
        report["policy_snippet"] = snippet
    _report.write_json(out_dir, report)
    (out_dir / _report.REPORT_MD).write_text(_report.markdown(report, snippet), encoding="utf-8")
    _report.plot(out_dir, report)
