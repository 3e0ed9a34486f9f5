"""A procedural image-caption data set: coloured shapes, drawn in many plain ways.

Every sample is drawn from a seeded :class:`random.Random`, so a seed fixes the whole data set
without storing it. A class is a (colour, shape) pair. Two renderers draw a class:

- :func:`render`, the demo's house style (a filled shape on a grey background, 64 px), which
  the demo catalogue and ``prism demo sample`` use;
- :func:`render_varied`: any plain drawing of the class. The colour is any hue, saturation
  and value that the colour word covers; the background is white, black, grey or a pale or
  dark tint (sometimes noisy); the shape is filled, outlined (hairlines as often as bold
  strokes) or filled with a border, from small to filling the image (every shape as wide as a
  circle of the same size), anywhere, at any angle or upright; the
  image is 40 to 256 px (the model's own transform brings it to 64), anti-aliased or
  hard-edged, and sometimes blurred or JPEG-compressed. Training starts on the house style
  and ends on these (``TrainConfig.varied_first`` / ``varied_last``): a model trained on
  :func:`render` alone learns the house style (filled shapes on grey) rather than colour and
  shape, and fails most plain drawings, outlines above all.
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

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

#: what each colour word covers, as HSV ranges: (hue degrees, saturation, value); the hue
#: ranges leave gaps between words (red-orange, orange-yellow, ...) that no class claims
COLOR_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-12.0, 6.0), (0.7, 1.0), (0.55, 1.0)),
    "green": ((95.0, 150.0), (0.6, 1.0), (0.4, 1.0)),
    "blue": ((200.0, 245.0), (0.6, 1.0), (0.5, 1.0)),
    "yellow": ((48.0, 62.0), (0.7, 1.0), (0.82, 1.0)),
    "purple": ((265.0, 300.0), (0.5, 1.0), (0.4, 0.95)),
    "orange": ((24.0, 41.0), (0.75, 1.0), (0.85, 1.0)),
}

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


# --- any plain drawing (the training images) ------------------------------------------------

#: circumradius per unit of width, against a circle's: an upright square, an apex-up triangle
#: and a star are drawn as wide as a circle of the same size is (a square drawn at the circle's
#: radius would be a third narrower, so that large drawings would mostly be circles)
_WIDTH_SCALE = {
    "circle": 1.0,
    "square": math.sqrt(2),
    "triangle": 2 / math.sqrt(3),
    "star": 1 / math.sin(math.radians(72)),
}
#: least RGB distance between a shape's colour and its background
_MIN_COLOR_DISTANCE = 90


def _hsv_color(rng: random.Random, color: str) -> tuple[int, int, int]:
    (h0, h1), (s0, s1), (v0, v1) = COLOR_RANGES[color]
    h = (rng.uniform(h0, h1) % 360) / 360
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return (round(r * 255), round(g * 255), round(b * 255))


def _background(rng: random.Random) -> tuple[int, int, int]:
    """White, black, grey, or a pale or dark tint (saturation at most 0.2)."""
    kind = rng.random()
    if kind < 0.25:
        v = 255 - min(rng.randrange(12), rng.randrange(12))
        return (v, v, v)
    if kind < 0.4:
        v = min(rng.randrange(20), rng.randrange(20))
        return (v, v, v)
    if kind < 0.65:
        return _jitter((g := rng.randint(0, 255), g, g), rng, 6)
    rf, gf, bf = colorsys.hsv_to_rgb(
        rng.random(), rng.uniform(0.03, 0.2), rng.uniform(0.8, 1.0) if kind < 0.9 else 0.25
    )
    return (round(rf * 255), round(gf * 255), round(bf * 255))


def _distance(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    return math.dist(a, b)


def _varied_points(
    rng: random.Random, shape: str, cx: float, cy: float, r: float, upright: bool
) -> list[float]:
    if shape == "square":  # corners at 45 degrees: upright is an axis-aligned square
        angle = math.pi / 4 if upright else rng.uniform(0, 2 * math.pi)
        radii, corners = [r] * 4, 4
    elif shape == "triangle":  # a vertex at -90 degrees: apex up
        angle = -math.pi / 2 if upright else rng.uniform(0, 2 * math.pi)
        radii, corners = [r] * 3, 3
    else:  # star: five points, a point up when upright; fat or thin
        angle = -math.pi / 2 if upright else rng.uniform(0, 2 * math.pi)
        inner = rng.uniform(0.34, 0.56)
        radii, corners = [r, r * inner] * 5, 10
    wobble = 0.0 if shape == "star" or rng.random() < 0.7 else 0.12  # not quite regular
    points: list[float] = []
    for k, radius in enumerate(radii):
        theta = angle + 2 * math.pi * k / corners + rng.uniform(-wobble, wobble)
        points += [cx + radius * math.cos(theta), cy + radius * math.sin(theta)]
    return points


def render_varied(rng: random.Random, color: str, shape: str) -> Image.Image:
    """Any plain drawing of a ``color`` ``shape`` (a square RGB image of 40 to 256 px)."""
    size = rng.choice((40, 48, 64, 64, 64, 80, 96, 128, 160, 224, 256))
    supersample = 1 if rng.random() < 0.25 else (2 if size > 128 else rng.choice((2, 3)))
    big = size * supersample
    fill = _hsv_color(rng, color)
    background = _background(rng)
    while _distance(fill, background) < _MIN_COLOR_DISTANCE:
        background = _background(rng)
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    r = big * math.exp(rng.uniform(math.log(0.11), math.log(0.48))) * _WIDTH_SCALE[shape]
    cx = rng.uniform(min(r * 0.8, big / 2), max(big - r * 0.8, big / 2))
    cy = rng.uniform(min(r * 0.8, big / 2), max(big - r * 0.8, big / 2))
    style = rng.random()
    # outline strokes from one output pixel to a third of the radius, log-uniform: hairlines
    # (a drawing program's default) as common as bold strokes
    widest = max(1.5, r / supersample / 3)
    width = max(supersample, round(math.exp(rng.uniform(0.0, math.log(widest))) * supersample))
    if style < 0.55:
        kwargs: dict[str, object] = {"fill": fill}
    elif style < 0.85:
        kwargs = {"outline": fill, "width": width}
    else:  # filled, with a border in a neutral or darker tone
        darker = (fill[0] // 2, fill[1] // 2, fill[2] // 2)
        outline = rng.choice(((0, 0, 0), (255, 255, 255), darker))
        kwargs = {"fill": fill, "outline": outline, "width": max(supersample, width // 2)}
    if shape == "circle":
        aspect = 1.0 if rng.random() < 0.8 else rng.uniform(0.9, 1.1)
        draw.ellipse((cx - r, cy - r * aspect, cx + r, cy + r * aspect), **kwargs)  # type: ignore[arg-type]
    else:
        points = _varied_points(rng, shape, cx, cy, r, upright=rng.random() < 0.4)
        draw.polygon(points, **kwargs)  # type: ignore[arg-type]
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    effect = rng.random()
    if effect < 0.15:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * size / 64))
    elif effect < 0.3:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=rng.randint(25, 90))
        image = Image.open(buf).convert("RGB")
    elif effect < 0.38:
        # uniform grey noise from the seeded stream (PIL's own noise is not seeded)
        noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
        image = Image.blend(image, noise, rng.uniform(0.03, 0.1))
    return image


def sample_varied(rng: random.Random, class_index: int) -> Sample:
    """A fresh :func:`render_varied` image of class ``class_index``."""
    color, shape = CLASSES[class_index]
    return Sample(render_varied(rng, color, shape), color, shape)
