"""Plain drawings of the demo's 24 classes, from a rasteriser of its own (not the demo's code).

Nothing here imports ``prism.backends.demo``: shapes are signed-distance fields in numpy,
with their own geometry (a square's side, a triangle's base and a star's tip-to-tip width
are the drawing's *extent*; the star's inner radius is half its outer one), colours are CSS
and office-palette names, and coverage is either exact-edge anti-aliased or hard-edged.
Each drawing is one shape on a plain white or black background, filled or outlined,
at several sizes and positions, as a PNG (some as JPEG) of 224 x 224 or 64 x 64 pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: two common RGB values per colour word: the CSS colour, and an office / paint palette one
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (192, 0, 0)),
    "green": ((0, 128, 0), (0, 176, 80)),
    "blue": ((0, 0, 255), (0, 112, 192)),
    "yellow": ((255, 255, 0), (255, 215, 0)),
    "purple": ((128, 0, 128), (112, 48, 160)),
    "orange": ((255, 165, 0), (255, 127, 0)),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}


@dataclass(frozen=True)
class Drawing:
    color: str
    shape: str
    background: str
    style: str  # "filled" or "outline"
    size: int  # pixels per side
    jpeg: bool
    data: bytes

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape}"

    @property
    def case(self) -> str:
        return f"{self.background}/{self.style}/{self.size}px{'/jpeg' if self.jpeg else ''}"


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from each pixel centre to a closed polygon."""
    n = len(vertices)
    d = (x - vertices[0, 0]) ** 2 + (y - vertices[0, 1]) ** 2
    sign = np.ones_like(x)
    for i in range(n):
        ax, ay = vertices[i]
        bx, by = vertices[i - 1]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        up, down, left = y >= ay, y < by, ex * wy > ey * wx
        crosses = (up & down & left) | (~up & ~down & ~left)
        sign = np.where(crosses, -sign, sign)
    result: np.ndarray = sign * np.sqrt(d)
    return result


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def shape_sdf(shape: str, n: int, cx: float, cy: float, extent: float, angle: float) -> np.ndarray:
    """Signed distance field ``[n, n]`` of one shape ``extent`` px across, centred at (cx, cy)."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    half = extent / 2
    if shape == "circle":
        result: np.ndarray = np.hypot(x - cx, y - cy) - half
        return result
    if shape == "square":
        outline = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    elif shape == "triangle":  # equilateral, base ``extent``, apex up, centred on its centroid
        h = extent * math.sqrt(3) / 2
        outline = np.array([[0.0, -2 * h / 3], [half, h / 3], [-half, h / 3]])
    elif shape == "star":  # five points, inner radius half the outer one, a point up
        k = np.arange(10)
        radii = np.where(k % 2 == 0, half, half * 0.5)
        theta = -math.pi / 2 + k * math.pi / 5
        outline = np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)
    else:
        raise ValueError(shape)
    vertices = _rotate(outline, angle) + np.array([cx, cy])
    return _polygon_sdf(x, y, vertices)


def draw(
    color_rgb: tuple[int, int, int],
    shape: str,
    *,
    size: int,
    background: tuple[int, int, int],
    extent: float,
    center: tuple[float, float],
    angle: float = 0.0,
    stroke: float | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """An ``[size, size, 3]`` uint8 drawing: filled when ``stroke`` is None, else an outline."""
    d = shape_sdf(shape, size, center[0], center[1], extent, angle)
    if stroke is not None:
        d = np.abs(d) - stroke / 2
    coverage = np.clip(0.5 - d, 0.0, 1.0) if antialias else (d <= 0).astype(np.float64)
    bg = np.array(background, dtype=np.float64)
    fg = np.array(color_rgb, dtype=np.float64)
    pixels = bg + coverage[..., None] * (fg - bg)
    return np.round(pixels).astype(np.uint8)


def encode(pixels: np.ndarray, jpeg_quality: int | None) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB")
    if jpeg_quality is None:
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def drawings(seed: int = 13, per_case: int = 2) -> Iterator[Drawing]:
    """Every class x background x style x image size, ``per_case`` times with fresh geometry.

    Extents run from a quarter of the image to nearly all of it, positions from centred to
    near an edge, squares and triangles upright or turned; outlines 1-3 px wide at 64 px and
    2-8 px at 224 px; one drawing in five is hard-edged, one in four a JPEG (quality 60-90).
    """
    rng = np.random.default_rng(seed)
    for background, bg_rgb in BACKGROUNDS.items():
        for style in ("filled", "outline"):
            for size in (224, 64):
                for color, variants in PALETTE.items():
                    for shape in SHAPES:
                        for k in range(per_case):
                            rgb = variants[(k + SHAPES.index(shape)) % len(variants)]
                            extent = size * float(rng.uniform(0.25, 0.85))
                            slack = (size - extent) / 2
                            cx = size / 2 + float(rng.uniform(-slack, slack)) * 0.9
                            cy = size / 2 + float(rng.uniform(-slack, slack)) * 0.9
                            upright = rng.random() < 0.5
                            angle = 0.0 if upright else float(rng.uniform(0, 2 * math.pi))
                            stroke = None
                            if style == "outline":
                                lo, hi = (1.0, 3.0) if size == 64 else (2.0, 8.0)
                                stroke = float(rng.uniform(lo, hi))
                            pixels = draw(
                                rgb,
                                shape,
                                size=size,
                                background=bg_rgb,
                                extent=extent,
                                center=(cx, cy),
                                angle=angle,
                                stroke=stroke,
                                antialias=rng.random() >= 0.2,
                            )
                            jpeg = rng.random() < 0.25
                            quality = int(rng.integers(60, 91)) if jpeg else None
                            yield Drawing(
                                color,
                                shape,
                                background,
                                style,
                                size,
                                jpeg,
                                encode(pixels, quality),
                            )
