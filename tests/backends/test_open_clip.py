"""The open_clip backend with real models: a tiny random arch, and the trained demo CLIP."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from prism.backends._base import InputItem, Task
from prism.backends._batching import LocalBackend
from prism.backends._errors import InvalidImage, InvalidInput
from prism.backends._open_clip import OpenClipModel
from prism.backends._specs import Batching, OpenClipSpec
from prism.backends.demo import CLASSES, DemoArtefacts, class_names, sample
from tests.backends.conftest import REPO, TINY_ARCH, png_bytes, shape_png

# --- loading any architecture -------------------------------------------------------------


def test_any_arch_loads_from_a_state_dict_with_its_config_beside(tiny_clip: OpenClipModel) -> None:
    caps = tiny_clip.capabilities
    assert caps.dim == 32 == tiny_clip.dim
    assert {t.value for t in caps.tasks} == {"embed", "classify"}
    assert {m.value for m in caps.modalities} == {"text", "image"}


def test_open_clip_training_checkpoints_load_the_same_weights(
    tiny_clip: OpenClipModel, tiny_weights: Path, tmp_path: Path
) -> None:
    # open_clip's training script saves {"epoch", "name", "state_dict": {"module.<key>": ...}}
    state = torch.load(tiny_weights, weights_only=True)
    checkpoint = tmp_path / "epoch_3.pt"
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}},
        checkpoint,
    )
    (tmp_path / f"{TINY_ARCH}.json").write_bytes(
        (tiny_weights.parent / f"{TINY_ARCH}.json").read_bytes()
    )
    other = OpenClipModel(TINY_ARCH, weights=checkpoint)
    other.load()
    texts = ["a red circle", "something else"]
    assert torch.equal(other.encode_texts(texts), tiny_clip.encode_texts(texts))


def test_from_spec_resolves_weights_against_the_policy_folder(tiny_weights: Path) -> None:
    spec = OpenClipSpec(kind="open-clip", arch=TINY_ARCH, weights=tiny_weights.name)
    model = OpenClipModel.from_spec(spec, tiny_weights.parent, "cpu")
    assert model.weights == tiny_weights.resolve()
    assert model.max_image_pixels == spec.max_image_pixels


def test_unknown_arch_or_missing_weights_fail_at_load(tmp_path: Path, tiny_weights: Path) -> None:
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        OpenClipModel("no-such-arch", weights=tiny_weights).load()
    with pytest.raises(FileNotFoundError):
        OpenClipModel(TINY_ARCH, weights=tmp_path / "missing.pt").load()
    with pytest.raises(ValueError, match="cannot load"):  # weights of another architecture
        OpenClipModel("RN50", weights=tiny_weights).load()


def test_demo_arch_loads_in_a_fresh_process(demo: DemoArtefacts) -> None:
    code = (
        "import open_clip, backends._open_clip as oc;"
        "from pathlib import Path;"
        "from prism.backends._specs import OpenClipSpec;"
        f"spec = OpenClipSpec(kind='open-clip', arch='demo-clip', weights={demo.weights.name!r});"
        f"m = oc.OpenClipModel.from_spec(spec, Path({str(demo.out_dir.resolve())!r}), 'cpu');"
        "m.load();"
        "assert open_clip.get_tokenizer('demo-clip').context_length == 16;"
        "print(m.encode_texts(['a red circle']).shape[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "128"


# --- embed and classify --------------------------------------------------------------------


def _run(
    model: OpenClipModel, task: Task, items: list[InputItem], params: dict[str, Any]
) -> list[Any]:
    prepared = [model.prepare(task, item, params) for item in items]
    return model.forward(task, prepared, params)


def test_embed_mixed_batch_keeps_order_and_unit_length(tiny_clip: OpenClipModel) -> None:
    image = png_bytes(Image.new("RGB", (50, 40), (0, 120, 255)))
    items = [InputItem(text="a"), InputItem(image=image), InputItem(text="b")]
    out = _run(tiny_clip, Task.EMBED, items, {})
    assert len(out) == 3
    for o in out:
        vec = o["embedding"]
        assert vec.dtype == np.float32 and vec.shape == (32,)
        assert abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    alone = _run(tiny_clip, Task.EMBED, [InputItem(image=image)], {})[0]["embedding"]
    np.testing.assert_allclose(alone, out[1]["embedding"], atol=1e-5)


@pytest.mark.parametrize(
    ("task", "item", "params", "match"),
    [
        (Task.CLASSIFY, "image", {}, "needs parameters.labels"),
        (Task.CLASSIFY, "image", {"labels": []}, "1 to 1000"),
        (Task.CLASSIFY, "image", {"labels": "red"}, "list of strings"),
        (Task.CLASSIFY, "image", {"labels": ["a", "a"]}, "repeat"),
        (Task.CLASSIFY, "image", {"labels": ["a", " "]}, "empty"),
        (Task.CLASSIFY, "image", {"labels": ["a", "b"], "top_k": 3}, "top_k"),
        (Task.CLASSIFY, "image", {"labels": ["a", "b"], "top_k": True}, "top_k"),
        (Task.CLASSIFY, "text", {"labels": ["a", "b"]}, "takes an image"),
        (Task.EMBED, "both", {}, "not both"),
        (Task.EMBED, "history", {}, "not a user"),
        (Task.RECOMMEND, "text", {}, "does not serve"),
    ],
)
def test_bad_requests_are_invalid_input(
    tiny_clip: OpenClipModel,
    task: Task,
    item: str,
    params: dict[str, Any],
    match: str,
) -> None:
    image = png_bytes(Image.new("RGB", (8, 8)))
    items = {
        "image": InputItem(image=image),
        "text": InputItem(text="hi"),
        "both": InputItem(text="hi", image=image),
        "history": InputItem(history=("x",)),
    }
    with pytest.raises(InvalidInput, match=match) as info:
        tiny_clip.prepare(task, items[item], params)
    assert info.value.status_code == 422
    if "parameters" in match or match in {"1 to 1000", "top_k", "repeat", "empty"}:
        assert info.value.errors[0].path.startswith("parameters.")


def test_bad_images_are_invalid_image(tiny_clip: OpenClipModel) -> None:
    for data in [b"garbage", png_bytes(Image.new("RGB", (8, 8)), "BMP")]:
        with pytest.raises(InvalidImage):
            tiny_clip.prepare(Task.EMBED, InputItem(image=data), {})
    small = OpenClipModel(TINY_ARCH, weights=tiny_clip.weights, max_image_pixels=100)
    small._preprocess = tiny_clip._preprocess  # no load needed to check the pixel limit
    with pytest.raises(InvalidImage, match="over the limit"):
        small.prepare(Task.EMBED, InputItem(image=png_bytes(Image.new("RGB", (11, 10)))), {})


# --- the demo model -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_preprocessing_is_exactly_open_clips_transform(
    demo_clip: OpenClipModel, demo: DemoArtefacts, fmt: str
) -> None:
    _, _, reference = open_clip.create_model_and_transforms(demo.arch, pretrained=str(demo.weights))
    # a larger, non-square picture, so resize and centre crop both do real work
    picture = sample(random.Random(3), 5, size=97).image.crop((0, 0, 97, 80))
    data = png_bytes(picture, fmt)
    prepared = demo_clip.prepare(Task.EMBED, InputItem(image=data), {})
    expected = reference(Image.open(io.BytesIO(data)))
    assert prepared.image is not None
    assert torch.equal(prepared.image, expected)


def test_zero_shot_classifies_a_green_triangle(demo_clip: OpenClipModel) -> None:
    labels = class_names()
    right = 0
    for seed in range(5):
        out = _run(
            demo_clip,
            Task.CLASSIFY,
            [InputItem(image=shape_png("green", "triangle", seed=seed))],
            {"labels": labels, "top_k": 3},
        )[0]["labels"]
        right += out[0]["label"] == "green triangle"
        assert len(out) == 3 and out[0]["score"] >= out[1]["score"] >= out[2]["score"]
    assert right >= 4  # a ~96% model: one miss in five is allowed
    full = _run(demo_clip, Task.CLASSIFY, [InputItem(image=shape_png("red", "star"))],
                {"labels": labels})[0]["labels"]  # fmt: skip
    assert abs(sum(x["score"] for x in full) - 1) < 1e-4 and len(full) == len(labels)


def test_text_and_image_of_a_class_embed_closer_than_other_classes(
    demo_clip: OpenClipModel,
) -> None:
    rng = random.Random(11)
    images = torch.stack(
        [demo_clip.preprocess_image(png_bytes(sample(rng, i).image)) for i in range(len(CLASSES))]
    )
    sims = demo_clip.encode_images(images) @ demo_clip.encode_texts(class_names()).T
    diagonal = sims.diag()
    off = sims.masked_fill(torch.eye(len(CLASSES), dtype=torch.bool), -2).max(dim=1).values
    assert int((diagonal > off).sum()) >= len(CLASSES) - 2  # held-out images: allow two misses
    assert float(diagonal.mean()) > float(sims.mean()) + 0.1


async def test_served_through_the_batcher(demo: DemoArtefacts) -> None:
    model = OpenClipModel(demo.arch, weights=demo.weights)
    backend = LocalBackend(model, Batching(max_batch_size=8), name="clip@test")
    await backend.start()  # loads the model on the batcher's thread
    try:
        items = [InputItem(image=shape_png("blue", "square")), InputItem(text="blue square")]
        out = await backend.infer(Task.EMBED, items, {})
        assert float(out[0]["embedding"] @ out[1]["embedding"]) > 0.2
        with pytest.raises(InvalidInput):  # a per-input error comes back as itself
            await backend.infer(Task.CLASSIFY, [InputItem(image=shape_png("red", "star"))], {})
    finally:
        await backend.aclose()
