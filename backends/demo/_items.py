"""The demo catalogue source: generated shape items (PNG images, varied titles, tags)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .._progress import progress as progress_bar
from . import _shapes

#: title shapes, so that items of one class do not all read alike
TITLE_TEMPLATES: tuple[str, ...] = (
    "{c} {s} #{n}",
    "the {c} {s} no. {n}",
    "{C} {S} #{n}",
    "a {c} {s}, item {n}",
    "{c} {s} on a plain background #{n}",
    "{S} that is {c} (no. {n})",
)
#: every this-many-th item has no image, so catalogues exercise the title-only path
NO_IMAGE_EVERY = 50


def item_id(index: int) -> str:
    """Catalogue id of demo item ``index`` (``shape-00042``)."""
    return f"shape-{index:05d}"


def write_demo_items(
    folder: Path, *, count: int = 10_000, seed: int = 0, progress: bool = True
) -> Path:
    """Write ``count`` items to ``folder/items.jsonl`` (+ ``folder/images/*.png``).

    Each item is a random class (colour x shape) with a fresh random image, a title from
    :data:`TITLE_TEMPLATES` and tags ``[colour, shape]``. Returns the JSONL path.
    """
    rng = random.Random(seed + 7_919)  # a stream of its own: not the training images
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    jsonl = folder / "items.jsonl"
    bar = progress_bar(range(count), desc="draw catalogue items", unit="item", enabled=progress)
    with jsonl.open("w", encoding="utf-8") as out:
        for index in bar:
            color, shape = _shapes.CLASSES[rng.randrange(len(_shapes.CLASSES))]
            title = rng.choice(TITLE_TEMPLATES).format(
                c=color, s=shape, C=color.capitalize(), S=shape.capitalize(), n=index
            )
            record: dict[str, object] = {
                "id": item_id(index),
                "title": title,
                "tags": [color, shape],
            }
            if index % NO_IMAGE_EVERY != NO_IMAGE_EVERY - 1:
                name = f"{item_id(index)}.png"
                _shapes.render(rng, color, shape).save(images / name, optimize=False)
                record["image"] = f"images/{name}"
            out.write(json.dumps(record) + "\n")
    return jsonl
