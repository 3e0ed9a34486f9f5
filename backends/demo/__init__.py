"""Prism's self-trained demo: a procedural shapes data set, ``demo-clip``, a demo catalogue.

``build_demo(Path("models"))`` trains a small open_clip model (``demo-clip``) on generated
images of coloured shapes, checks its zero-shot accuracy, and builds a 10,000-item catalogue,
so the default policy serves ``embed``, ``classify`` and ``recommend`` with no download.
"""

from ._build import CATALOG_ITEMS, DemoArtefacts, build_demo, demo_paths, load_manifest
from ._shapes import CLASSES, COLORS, SHAPES, class_names, prompts, render, sample
from ._train import ARCH, TrainConfig, TrainResult, train_demo_clip, zero_shot_accuracy

__all__ = [
    "ARCH",
    "CATALOG_ITEMS",
    "CLASSES",
    "COLORS",
    "SHAPES",
    "DemoArtefacts",
    "TrainConfig",
    "TrainResult",
    "build_demo",
    "class_names",
    "demo_paths",
    "load_manifest",
    "prompts",
    "render",
    "sample",
    "train_demo_clip",
    "zero_shot_accuracy",
]
