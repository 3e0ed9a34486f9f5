"""``optimize_open_clip``: build one variant of an open_clip model, measure it, report.

Variants of ``kind: open-clip`` (both towers, always together):

- ``onnx``: both towers exported to ONNX, fp32, served by ``kind: onnx-clip`` (ONNX Runtime);
- ``onnx-int8``: the same graphs after ONNX Runtime's dynamic int8 quantisation (MatMul, Gemm
  and the token embedding; convolutions stay fp32, see ``_clip_export``);
- ``int8``: torch's dynamic int8 of the linear layers at load (CPU; a convolutional image
  tower keeps its convolutions, so its speed barely moves);
- ``bf16``: both towers cast to bfloat16 at load (CPU or GPU);
- ``fp16``: cast to float16 at load (GPU only).

Measured on this machine against the source: images per second at batch 1 and 32 (decoding
and open_clip's preprocessing included, as served: the image tower is where serving pays),
texts per second at batch 32, size, agreement of image embeddings (cosine mean and min,
Spearman of pairwise similarities) and of text embeddings, and zero-shot accuracy of both on a
fixed labelled sample: the demo's 24 classes of coloured shapes, drawn from a fixed seed,
classified against the demo's prompts, exactly as ``classify`` ranks labels. A checkpoint not
trained on those shapes scores near chance there; the change, and how often the variant's top
class is the source's, still measure what the variant alters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from .._base import InputItem, LocalModel
from .._registry import build_local_model, resolve_device
from .._specs import LocalSpec, OpenClipSpec
from . import _measure
from ._measure import DEFAULT_ROUNDS, DEFAULT_SECONDS
from ._run import DEFAULT_FLOOR, TEXT_VARIANTS, OptimizeError, _cpu_name, _state_bytes, _versions
from ._sample import caption_sample, clip_prompts, image_sample

#: the variants of ``kind: open-clip`` (the text encoder's set)
CLIP_VARIANTS = TEXT_VARIANTS
#: files a refused ONNX variant leaves behind: none servable
_GRAPHS = ("image.onnx", "text.onnx")


def clip_variant_spec(
    source: OpenClipSpec, variant: str, out_dir: Path, device: str
) -> dict[str, Any]:
    """The ``versions:`` entry that serves ``variant`` of the open_clip model ``source``."""
    if variant in ("onnx", "onnx-int8"):
        spec: dict[str, Any] = {"backend": "local", "kind": "onnx-clip", "path": str(out_dir)}
        kept = source.model_dump(mode="json", exclude_defaults=True)
        for name in ("max_image_pixels", "allow_url_hosts"):
            if name in kept:
                spec[name] = kept[name]
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


def _zero_shot(images: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """Each image's best-scoring class (the argmax ``classify`` puts first)."""
    predicted: np.ndarray = (images @ prompts.T).argmax(axis=1)
    return predicted


def _source_bytes(spec: OpenClipSpec, base_dir: Path, model: LocalModel) -> int:
    if spec.weights is not None:
        path = base_dir / spec.weights
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return _state_bytes(model)


def optimize_open_clip(
    source_spec: OpenClipSpec,
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
    """Build ``variant`` of the open_clip model ``source_spec`` (named ``source``, e.g.
    ``clip@1``) into ``out_dir``, measure it against the source on ``device`` and return the
    report. ``report["accepted"]`` is False when the image or the text tower's cosine mean is
    below the floor (the ONNX graphs are then removed) unless ``force``."""
    from .._open_clip import OpenClipModel

    if variant not in CLIP_VARIANTS:
        raise OptimizeError(f"unknown variant {variant!r}; one of {', '.join(CLIP_VARIANTS)}")
    device = resolve_device(device)
    if variant in ("onnx", "onnx-int8", "int8"):
        device = "cpu"  # ONNX Runtime and torch's dynamic int8 run here on CPU
    spec = clip_variant_spec(source_spec, variant, out_dir, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    say(f"[1/4] loading {source} and building {variant}")
    source_model = build_local_model(source_spec.model_copy(update={"device": device}), base_dir)
    assert isinstance(source_model, OpenClipModel)
    source_model.load()
    if variant in ("onnx", "onnx-int8"):
        from ._clip_export import export_clip_onnx, quantize_clip_onnx_int8

        image_file, text_file = export_clip_onnx(source_model, out_dir, variant=variant)
        if variant == "onnx-int8":
            quantize_clip_onnx_int8(image_file, text_file)
            notes.append(
                "onnx-int8: int8 weights on MatMul/Gemm (both towers) and the token embedding; "
                "convolutions stay fp32 (ONNX Runtime's ConvInteger is slower than fp32 Conv)"
            )
    else:
        notes.append(f"{variant}: the source's weights, converted when the version loads")
        if variant == "int8":
            notes.append(
                "int8: torch quantises linear layers only; convolutions and a ResNet tower's "
                "attention pool stay fp32"
            )
    variant_model = build_local_model(TypeAdapter(LocalSpec).validate_python(spec), base_dir)
    try:
        variant_model.load()
    except Exception as exc:  # e.g. a dtype this CPU's torch cannot run
        raise OptimizeError(f"the {variant} variant does not load here: {exc}") from exc

    pictures, labels = image_sample()
    images = [InputItem(image=data) for data in pictures]
    texts = caption_sample()
    prompts = clip_prompts()
    say(f"[2/4] agreement on {len(images)} fixed images and {len(texts)} captions")
    embedded = {
        name: (
            _measure.embed_inputs(model, images),
            _measure.embed_inputs(model, texts),
            _measure.embed_inputs(model, prompts),
        )
        for name, model in (("source", source_model), ("variant", variant_model))
    }
    image_agreement = _measure.agreement(embedded["source"][0], embedded["variant"][0])
    text_agreement = _measure.agreement(embedded["source"][1], embedded["variant"][1])

    say(f"[3/4] zero-shot accuracy over {len(prompts)} classes")
    truth = np.asarray(labels)
    predicted = {name: _zero_shot(e[0], e[2]) for name, e in embedded.items()}
    accuracy = {name: float((p == truth).mean()) for name, p in predicted.items()}
    zero_shot = {
        "source": round(accuracy["source"], 4),
        "variant": round(accuracy["variant"], 4),
        "change": round(accuracy["variant"] - accuracy["source"], 4),
        "top1_agreement": round(float((predicted["source"] == predicted["variant"]).mean()), 4),
        "images": len(images),
        "classes": len(prompts),
        "sample": "the demo's coloured shapes (house style and plain drawings, fixed seed), "
        "its prompts 'a {colour} {shape}'",
    }
    if source_spec.arch != "demo-clip":
        notes.append(
            "zero-shot sample: the demo's shapes, which this checkpoint was not trained on; its "
            "accuracy there says little, the change and the top-1 agreement still measure "
            "what the variant alters"
        )

    say(f"[4/4] speed side by side: images at batch 1 and 32, texts at 32 ({rounds} rounds)")
    load_before = os.getloadavg()
    speed, speedup = _measure.side_by_side(
        source_model,
        variant_model,
        [
            ("batch1", images, 1, seconds * 0.5),
            ("batch32", images, 32, seconds * 0.5),
            ("text_batch32", texts, 32, seconds * 0.25),
        ],
        rounds=rounds,
        progress=progress,
    )
    load_after = os.getloadavg()

    source_size = _source_bytes(source_spec, base_dir, source_model)
    if variant in ("onnx", "onnx-int8"):
        variant_size = sum((out_dir / name).stat().st_size for name in _GRAPHS)
    else:
        variant_size = _state_bytes(variant_model)
    source_model.close()
    variant_model.close()

    lowest = min(image_agreement.cosine_mean, text_agreement.cosine_mean)
    accepted = lowest >= floor or force
    versions = _versions()
    with contextlib.suppress(PackageNotFoundError):
        versions["open_clip_torch"] = version("open_clip_torch")
    report: dict[str, Any] = {
        "source": source,
        "variant": variant,
        "kind": "open-clip",
        "accepted": accepted,
        "forced": bool(force and lowest < floor),
        "floor": {"cosine_mean": floor, "applies_to": "image and text embeddings"},
        "speedup_batch1": speedup["batch1"],
        "speedup_batch32": speedup["batch32"],
        "speedup_text_batch32": speedup["text_batch32"],
        "cosine_mean": round(image_agreement.cosine_mean, 6),
        "cosine_min": round(image_agreement.cosine_min, 6),
        "spearman": round(image_agreement.spearman, 6),
        "text_agreement": {
            "cosine_mean": round(text_agreement.cosine_mean, 6),
            "cosine_min": round(text_agreement.cosine_min, 6),
            "spearman": round(text_agreement.spearman, 6),
        },
        "zero_shot": zero_shot,
        "version_spec": spec,
        "source_spec": source_spec.model_dump(mode="json", exclude_defaults=True),
        "items_per_s": speed,
        "size_bytes": {"source": source_size, "variant": variant_size},
        "sample": {"kind": "image", "items": len(images), "texts": len(texts)},
        "device": device,
        "rounds": rounds,
        "seconds": seconds,
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_avg": f"{load_before[0]:.1f} -> {load_after[0]:.1f}",
        },
        "versions": versions,
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "notes": notes,
    }
    if not accepted:
        # refused: nothing servable stays behind, only the report that says why
        for name in _GRAPHS:
            (out_dir / name).unlink(missing_ok=True)
    return report
