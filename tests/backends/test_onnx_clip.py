"""``kind: onnx-clip`` on a ViT architecture (the demo CLIP, a ResNet, is covered end to end in
``tests/test_optimize_clip.py``): both towers exported and quantised, then served with the
source's own preprocessing, tokens and zero-shot classify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prism.backends._base import InputItem, Task
from prism.backends._onnx_clip import OnnxClipModel
from prism.backends._open_clip import OpenClipModel
from prism.backends.optimize._clip_export import export_clip_onnx, quantize_clip_onnx_int8
from tests.backends.conftest import TINY_ARCH, shape_png


@pytest.mark.parametrize("int8", [False, True])
def test_vit_towers_export_and_serve_like_the_source(
    tiny_clip: OpenClipModel, tmp_path: Path, int8: bool
) -> None:
    files = export_clip_onnx(tiny_clip, tmp_path, variant="onnx-int8" if int8 else "onnx")
    if int8:
        quantize_clip_onnx_int8(*files)
    # the architecture's config travels with the variant (it is not one open_clip ships)
    assert (tmp_path / f"{TINY_ARCH}.json").is_file()
    variant = OnnxClipModel(tmp_path)
    assert variant.capabilities.dim == 32  # known before load, from variant.json
    variant.load()
    pictures = [shape_png("red", "circle", seed=i) for i in range(3)]
    items = [InputItem(image=p) for p in pictures] + [InputItem(text=t) for t in ("a", "b c")]
    prepared = [variant.prepare(Task.EMBED, item, {}) for item in items]
    source = [tiny_clip.prepare(Task.EMBED, item, {}) for item in items]
    # the same pixels and tokens as the source: open_clip's own transform and tokenizer
    for mine, theirs in zip(prepared, source, strict=True):
        for field in ("image", "tokens"):
            a, b = getattr(mine, field), getattr(theirs, field)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
    got = np.stack([o["embedding"] for o in variant.forward(Task.EMBED, prepared, {})])
    want = np.stack([o["embedding"] for o in tiny_clip.forward(Task.EMBED, source, {})])
    assert (got * want).sum(1).min() > (0.99 if int8 else 0.99999)
    labels = {"labels": ["a red circle", "a blue star", "a green square"]}
    image = [variant.prepare(Task.CLASSIFY, items[0], labels)]
    (answer,) = variant.forward(Task.CLASSIFY, image, labels)
    assert {x["label"] for x in answer["labels"]} == set(labels["labels"])
    assert variant.logit_scale() == pytest.approx(tiny_clip.logit_scale())
