"""Building an open_clip model's ONNX variants: both towers exported (fp32), then ONNX
Runtime's dynamic int8 quantisation.

Each tower is exported on its own with ``torch.onnx`` (the TorchScript exporter, opset 17, like
the text encoder's), normalisation included, so a graph is model input in, unit embedding out:
``image.onnx`` takes preprocessed pixels, ``text.onnx`` open_clip's token ids. ``variant.json``
records what the serving side (``kind: onnx-clip``) needs to rebuild open_clip's own transform
and tokenizer, the embedding width and the logit scale.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ._export import OPSET, quantize_in_place


def _tower(model: Any, which: str) -> Any:
    import torch

    class Tower(torch.nn.Module):
        """One tower of the open_clip model, normalised: what ``kind: open-clip`` serves."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if which == "image":
                out: torch.Tensor = self.model.encode_image(x, normalize=True)
            else:
                out = self.model.encode_text(x, normalize=True)
            return out

    return Tower().eval()


def _preprocess_config(model: Any) -> dict[str, Any]:
    """The open_clip preprocessing config the model was built with (size, mean, std, ...)."""
    cfg = getattr(model.visual, "preprocess_cfg", None)
    if cfg is None:  # not set by this open_clip: its defaults for the model's image size
        import open_clip

        cfg = open_clip.transform.PreprocessCfg(size=model.visual.image_size)
    data: dict[str, Any] = asdict(cfg) if is_dataclass(cfg) else dict(cfg)  # type: ignore[arg-type]
    size = data["size"]
    data["size"] = list(size) if isinstance(size, tuple | list) else int(size)
    data["mean"], data["std"] = list(data["mean"]), list(data["std"])
    return data


def export_clip_onnx(source: Any, out_dir: Path, *, variant: str) -> list[Path]:
    """Export both towers of the loaded fp32 ``OpenClipModel`` ``source`` to ``out_dir``
    (``image.onnx``, ``text.onnx``, ``variant.json``). Returns the two graph files."""
    import open_clip
    import torch

    # the serving module imports open_clip at the top: only now, not when this one loads
    from .._onnx_clip import IMAGE_FILE, TEXT_FILE, VARIANT_FILE

    # exported as loaded (channels_last, which ONNX does not see): converting the source's
    # memory format in place would slow its convolutions for the measurement that follows
    model = source._model
    preprocess = _preprocess_config(model)
    tokenizer_name = source.arch
    if source.weights is not None and source.weights.is_dir():
        tokenizer_name = f"local-dir:{source.weights}"
    context_length = int(source._tokenizer.context_length)
    size = preprocess["size"]
    height, width = (size, size) if isinstance(size, int) else size
    examples = {
        "image": torch.randn(2, 3, height, width),
        "text": source.tokenize(["a red circle", "a photo of a small blue star on grey"]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"image": out_dir / IMAGE_FILE, "text": out_dir / TEXT_FILE}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # without grad, nn.MultiheadAttention (a ViT tower) takes a fused kernel that has no ONNX
    # export; the plain path traces to ordinary MatMuls, which the int8 step then quantises
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for which, path in files.items():
            _export(_tower(model, which), examples[which], path, which)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if tokenizer_name in open_clip.list_models() and not _builtin(tokenizer_name):
        # an architecture registered from a file (Prism's demo-clip, <arch>.json beside the
        # weights) travels with the variant, so the tokenizer can be rebuilt anywhere
        config = open_clip.get_model_config(tokenizer_name)
        (out_dir / f"{tokenizer_name}.json").write_text(json.dumps(config, indent=2) + "\n")
    spec = {
        "variant": variant,
        "arch": source.arch,
        "dim": int(source.dim),
        "logit_scale": source.logit_scale(),
        "preprocess": preprocess,
        "tokenizer": {"model": tokenizer_name, "context_length": context_length},
        "inputs": {"image": "pixels", "text": "tokens"},
        "opset": OPSET,
    }
    (out_dir / VARIANT_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return list(files.values())


def _export(tower: Any, example: Any, path: Path, which: str) -> None:
    import torch

    name = "pixels" if which == "image" else "tokens"
    with warnings.catch_warnings(), torch.inference_mode():
        # the tracer's notes on Python-side shape checks in open_clip are expected
        warnings.simplefilter("ignore")
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=[name],
            output_names=["embedding"],
            dynamic_axes={name: {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _builtin(arch: str) -> bool:
    """True when open_clip ships ``arch``'s config in its own package."""
    import open_clip

    folder = Path(open_clip.__file__).parent / "model_configs"
    return (folder / f"{arch}.json").is_file()


def quantize_clip_onnx_int8(image: Path, text: Path, *, conv: bool = False) -> None:
    """Replace both fp32 graphs by ONNX Runtime's dynamic int8 quantisation: int8 weights,
    one scale per output channel, on the weighted MatMuls and Gemms of both towers and the
    token embedding table (Gather) of the text tower. Convolutions stay fp32 unless ``conv``:
    measured on demo-clip (a ResNet image tower) over the fixed 192 images, quantising them too
    keeps agreement (cosine mean 0.9997, min 0.997, against 0.99998 / 0.9999 without) and
    halves image.onnx again, but runs the image tower about 7x slower than leaving them fp32:
    dynamic quantisation turns a Conv into ConvInteger, which ONNX Runtime's CPU provider runs
    without the fused kernels its fp32 Conv has."""
    for path, ops in (
        (image, ["MatMul", "Gemm", *(["Conv"] if conv else [])]),
        (text, ["MatMul", "Gemm", "Gather"]),
    ):
        quantize_in_place(path, ops)
