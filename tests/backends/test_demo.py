"""The demo: procedural data set, deterministic training, and the built artefacts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import open_clip
import torch

from prism.backends.demo import (
    CLASSES,
    DemoArtefacts,
    TrainConfig,
    build_demo,
    class_names,
    sample,
    train_demo_clip,
)
from prism.backends.demo._items import write_demo_items


def test_data_set_has_24_classes_and_is_deterministic() -> None:
    assert len(CLASSES) >= 24 and len(set(class_names())) == len(CLASSES)
    a = [np.asarray(sample(random.Random(5), i).image) for i in range(len(CLASSES))]
    b = [np.asarray(sample(random.Random(5), i).image) for i in range(len(CLASSES))]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    rng = random.Random(5)
    again = [np.asarray(sample(rng, 0).image) for _ in range(3)]
    assert not np.array_equal(again[0], again[1])  # size/position/rotation/background vary
    assert a[0].shape == (64, 64, 3)


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, groups=1, eval_images=24)
    runs = []
    for name in ("a.pt", "b.pt"):
        result = train_demo_clip(tmp_path / name, seed=3, config=config, progress=False)
        state = torch.load(tmp_path / name, weights_only=True)["state_dict"]
        runs.append((result, state))
    (ra, sa), (rb, sb) = runs
    assert ra.final_loss == rb.final_loss and ra.images_seen == 2 * 24
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_demo_items_have_images_titles_and_tags(tmp_path: Path) -> None:
    jsonl = write_demo_items(tmp_path, count=60, seed=0, progress=False)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    assert sum("image" in r for r in rows) == 59  # one in 50 is title-only
    assert len({r["title"].split("#")[0].split(" no.")[0] for r in rows}) > 10  # varied titles
    for r in rows:
        color, shape = r["tags"]
        assert (color, shape) in CLASSES and shape in r["title"].lower()
        if "image" in r:
            assert (tmp_path / r["image"]).stat().st_size > 0


def test_built_demo_meets_its_targets(demo: DemoArtefacts) -> None:
    assert demo.zero_shot_accuracy >= 0.90 and demo.eval_images == 500
    assert demo.catalog_items >= 10_000
    assert demo.weights.is_file() and demo.config.is_file()
    assert json.loads(demo.config.read_text())["vision_cfg"]["layers"] == [1, 1, 1, 1]
    # a second build with the same seed finds everything current and does nothing
    again = build_demo(demo.out_dir, seed=demo.seed)
    assert again.built == () and again.zero_shot_accuracy == demo.zero_shot_accuracy


def test_demo_tokenizer_is_open_clips_standard_one() -> None:
    import prism.backends._open_clip  # noqa: F401  (registers demo-clip)

    tokenizer = open_clip.get_tokenizer("demo-clip")
    assert isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
    tokens = tokenizer(["a red circle"])
    assert tokens.shape == (1, 16) and int(tokens[0, 0]) == 49406  # <start_of_text>


def test_varied_drawings_are_deterministic_and_vary_in_size_and_background() -> None:
    from prism.backends.demo._shapes import sample_varied

    a = [sample_varied(random.Random(9), i).image for i in range(len(CLASSES))]
    b = [sample_varied(random.Random(9), i).image for i in range(len(CLASSES))]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    rng = random.Random(9)
    many = [sample_varied(rng, i % len(CLASSES)).image for i in range(200)]
    assert len({im.size for im in many}) > 4 and all(im.mode == "RGB" for im in many)
    corners = {tuple(np.asarray(im)[0, 0] // 64) for im in many}
    assert len(corners) > 4  # white, black, greys and tints


def test_training_can_mix_in_varied_drawings(tmp_path: Path) -> None:
    plain = TrainConfig(steps=2, groups=1, eval_images=24)
    mixed = TrainConfig(steps=2, groups=1, eval_images=24, varied_first=1.0, varied_last=1.0)
    losses = [
        train_demo_clip(tmp_path / f"{i}.pt", seed=3, config=c, progress=False).final_loss
        for i, c in enumerate((plain, mixed))
    ]
    assert losses[0] != losses[1]
