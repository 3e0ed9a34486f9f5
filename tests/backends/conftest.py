"""Real models for the backend tests: a tiny random open_clip, and the trained demo artefacts.

The demo artefacts are built once per session into ``models/`` (or ``$PRISM_MODELS_DIR``) if
they are missing or stale; ``make test`` builds them first with ``prism demo build``, so usually
this finds them current in a second.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from prism.backends._open_clip import OpenClipModel
from prism.backends._recommender import RecommenderModel
from prism.backends.demo import DemoArtefacts, build_demo, sample

REPO = Path(__file__).resolve().parents[2]

#: a deliberately odd, tiny architecture (ViT image tower) that open_clip does not ship
TINY_ARCH = "prism-tiny-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def png_bytes(image: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def shape_png(color: str, shape: str, seed: int = 0, size: int = 64) -> bytes:
    """PNG bytes of a fresh demo image of one class."""
    from prism.backends.demo import CLASSES

    index = CLASSES.index((color, shape))
    return png_bytes(sample(random.Random(seed), index, size).image)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ``prism-tiny-test`` state_dict, with its config JSON beside it."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return weights


@pytest.fixture(scope="session")
def tiny_clip(tiny_weights: Path) -> Iterator[OpenClipModel]:
    model = OpenClipModel(TINY_ARCH, weights=tiny_weights)
    model.load()
    yield model
    model.close()


@pytest.fixture(scope="session")
def demo() -> DemoArtefacts:
    """The trained demo artefacts (built now if missing: a few minutes)."""
    out = Path(os.environ.get("PRISM_MODELS_DIR", REPO / "models"))
    return build_demo(out, seed=0)


@pytest.fixture(scope="session")
def demo_clip(demo: DemoArtefacts) -> Iterator[OpenClipModel]:
    model = OpenClipModel(demo.arch, weights=demo.weights)
    model.load()
    yield model
    model.close()


@pytest.fixture(scope="session")
def demo_recommender(demo: DemoArtefacts) -> Iterator[RecommenderModel]:
    model = RecommenderModel(demo.catalog_dir)
    model.load()
    yield model
    model.close()
