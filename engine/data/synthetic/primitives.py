"""Noise fields and geometry the synthetic scene layout is drawn with."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise (bicubic-interpolated Gaussian grid), std about 0.8."""
    gh = int(math.ceil(h / cell)) + 4
    gw = int(math.ceil(w / cell)) + 4
    grid = Image.fromarray(rng.standard_normal((gh, gw), dtype=np.float32))
    ox, oy = rng.uniform(1.0, 2.0, size=2)
    box = (ox, oy, ox + w / cell, oy + h / cell)
    return np.asarray(grid.resize((w, h), Image.Resampling.BICUBIC, box=box))


class Coarse:
    """A smooth field kept at 1/16 resolution, for looking up a few points."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, cell: float) -> None:
        self.step = 16
        self.grid = value_noise(rng, h // 16 + 1, w // 16 + 1, cell / 16)

    def at(self, x, y):
        """Field values at pixel positions (clipped to the image)."""
        gh, gw = self.grid.shape
        iy = np.clip(np.asarray(y) // self.step, 0, gh - 1).astype(np.int32)
        ix = np.clip(np.asarray(x) // self.step, 0, gw - 1).astype(np.int32)
        return self.grid[iy, ix]

    def value(self, x: float, y: float) -> float:
        """The field value at one pixel position (clipped to the image)."""
        gh, gw = self.grid.shape
        iy = min(max(int(y) // self.step, 0), gh - 1)
        ix = min(max(int(x) // self.step, 0), gw - 1)
        return float(self.grid[iy, ix])


def fbm(
    rng: np.random.Generator, h: int, w: int, cells: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    """Sum of noise octaves, built at a reduced resolution and upsampled once."""
    step = max(1, int(min(cells) // 4))
    sh, sw = max(2, math.ceil(h / step)), max(2, math.ceil(w / step))
    acc = np.zeros((sh, sw), dtype=np.float32)
    for cell, weight in zip(cells, weights):
        acc += weight * value_noise(rng, sh, sw, cell / step)
    if step == 1:
        return acc[:h, :w]
    box = (0, 0, w / step, h / step)
    big = Image.fromarray(acc).resize((w, h), Image.Resampling.BILINEAR, box=box)
    return np.asarray(big)


def threshold_for(field: np.ndarray, fraction: float) -> float:
    """Value above which about ``fraction`` of the field lies (from a subsample)."""
    sample = field[::5, ::5]
    return float(np.quantile(sample, 1.0 - float(np.clip(fraction, 0.0, 1.0))))


def blur_float(img: np.ndarray, strength: float) -> np.ndarray:
    """Separable ``[b, 1, b]`` blur of an ``HxWx3`` float image (edges replicated)."""
    if strength <= 0:
        return img
    norm = 1.0 / (1.0 + 2.0 * strength)
    out = img.copy()
    out[:, 1:] += strength * img[:, :-1]
    out[:, :-1] += strength * img[:, 1:]
    out[:, 0] += strength * img[:, 0]
    out[:, -1] += strength * img[:, -1]
    res = out.copy()
    res[1:] += strength * out[:-1]
    res[:-1] += strength * out[1:]
    res[0] += strength * out[0]
    res[-1] += strength * out[-1]
    res *= norm * norm
    return res


# --------------------------------------------------------------------------- geometry


def convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (monotone chain) of a few points, counter-clockwise."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    step: float,
    wiggle: float,
) -> list[tuple[float, float]]:
    """A smoothly turning polyline from ``start``."""
    x, y = start
    pts = [(x, y)]
    turn = 0.0
    for _ in range(max(1, int(length / step))):
        turn = 0.6 * turn + rng.normal(0.0, wiggle)
        heading += turn
        x += step * math.cos(heading)
        y += step * math.sin(heading)
        pts.append((x, y))
    return pts


def path_through(
    rng: np.random.Generator,
    point: tuple[float, float],
    heading: float,
    reach: float,
    step: float,
    wiggle: float,
) -> list[tuple[float, float]]:
    """A smoothly turning polyline through ``point``, ``reach`` long on each side."""
    fwd = walk(rng, point, heading, reach, step, wiggle)
    back = walk(rng, point, heading + math.pi, reach, step, wiggle)
    return back[::-1] + fwd[1:]


def thick_line(
    draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: int, width: float
) -> None:
    """A wide polyline without the slivers Pillow leaves at joints: discs on the vertices."""
    width = int(round(width))
    draw.line(pts, fill=fill, width=width)
    r = (width - 1) / 2
    for x, y in pts[1:-1]:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def is_inside(p: tuple[float, float], h: int, w: int, margin: float = 0.0) -> bool:
    """Whether point ``(x, y)`` lies in the ``h x w`` frame grown by ``margin``."""
    return -margin <= p[0] < w + margin and -margin <= p[1] < h + margin
