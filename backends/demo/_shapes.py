"""A procedural image-caption data set: coloured shapes on tinted backgrounds.

Every sample is drawn from a seeded :class:`random.Random`, so a seed fixes the whole data set
without storing it. A class is a (colour, shape) pair; size, position, rotation, the shape's
exact tint and the background vary per image, so a model has to learn colour *and* shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: base RGB of each colour word; each image jitters it a little
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 55, 180),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

#: every (colour, shape) class, in a fixed order (class index = position here)
CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)

#: training captions; the ``#{n}`` ones teach the text tower to ignore catalogue-style numbers
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{c} {s}",
    "a {c} {s}",
    "a photo of a {c} {s}",
    "a {s} that is {c}",
    "a {c} {s} on a plain background",
    "{c} {s} #{n}",
    "the {c} {s} no. {n}",
)

#: the one prompt zero-shot evaluation uses for each class
PROMPT = "a {c} {s}"

#: least difference (0-255) between the lightness of a shape and of its background
_MIN_CONTRAST = 40
#: images are drawn this many times larger, then downsampled: cheap anti-aliasing
_SUPERSAMPLE = 2


@dataclass(frozen=True, slots=True)
class Sample:
    image: Image.Image
    color: str
    shape: str

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"


def class_names() -> list[str]:
    """``"red circle"``, ... in class-index order."""
    return [f"{c} {s}" for c, s in CLASSES]


def prompts() -> list[str]:
    """The zero-shot prompt of every class, in class-index order."""
    return [PROMPT.format(c=c, s=s) for c, s in CLASSES]


def caption(rng: random.Random, color: str, shape: str) -> str:
    """A random caption for one class."""
    template = rng.choice(CAPTION_TEMPLATES)
    return template.format(c=color, s=shape, n=rng.randrange(1, 20_000))


def _shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    """Polygon vertices (flattened x, y) of a shape of circumradius ``r`` rotated by ``angle``."""
    if shape == "square":
        radii, corners = [r] * 4, 4
    elif shape == "triangle":
        radii, corners = [r] * 3, 3
    elif shape == "star":
        radii, corners = [r, r * 0.42] * 5, 10
    else:
        raise ValueError(f"not a polygon: {shape}")
    points: list[float] = []
    for k, radius in enumerate(radii):
        theta = angle + 2 * math.pi * k / corners
        points += [cx + radius * math.cos(theta), cy + radius * math.sin(theta)]
    return points


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return (r, g, b)


def render(rng: random.Random, color: str, shape: str, size: int = 64) -> Image.Image:
    """One RGB image ``size`` x ``size`` px of a ``color`` ``shape``, randomly placed."""
    big = size * _SUPERSAMPLE
    fill = _jitter(COLORS[color], rng, 16)
    # low-saturation backgrounds, so that no background is mistaken for a shape colour, and
    # never of the shape's own lightness: at 64 px an outline needs some luminance contrast
    lightness = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    grey = rng.randint(25, 235)
    while abs(grey - lightness) < _MIN_CONTRAST:
        grey = rng.randint(25, 235)
    background = _jitter((grey, grey, grey), rng, 18)
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    r = big * rng.uniform(0.2, 0.36)
    # keep the centre far enough in that most of the shape stays visible
    cx = rng.uniform(r * 0.8, big - r * 0.8)
    cy = rng.uniform(r * 0.8, big - r * 0.8)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=fill)
    return image.resize((size, size), Image.Resampling.BOX)


def sample(rng: random.Random, class_index: int, size: int = 64) -> Sample:
    """A fresh image of class ``class_index``."""
    color, shape = CLASSES[class_index]
    return Sample(render(rng, color, shape, size), color, shape)
