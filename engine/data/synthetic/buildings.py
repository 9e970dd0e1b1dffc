"""Houses of a synthetic scene: placed along the roads, with roofs and cast shadows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.data.synthetic.classes import BUILDING, ROOF_P, ROOFS, WATER
from engine.data.synthetic.primitives import Coarse, convex_hull

Point = tuple[float, float]


@dataclass(frozen=True)
class House:
    """One house's footprint: its corners, axes (unit vectors) and sides in pixels."""

    corners: list[Point]
    along: Point  # unit vector of the frontage (side ``frontage``)
    across: Point  # unit vector of the depth (side ``depth``)
    frontage: float
    depth: float


class Canvas:
    """The rasters houses are drawn into: footprints, roof colours, flat-roof rims, shadows."""

    def __init__(self, h: int, w: int) -> None:
        self.footprint = Image.new("L", (w, h), 0)
        self.roof = Image.new("RGB", (w, h), (0, 0, 0))
        self.rim = Image.new("L", (w, h), 0)
        self.shadow = Image.new("L", (w, h), 0)
        self.footprint_draw = ImageDraw.Draw(self.footprint)
        self.roof_draw = ImageDraw.Draw(self.roof)
        self.rim_draw = ImageDraw.Draw(self.rim)
        self.shadow_draw = ImageDraw.Draw(self.shadow)

    def apply(self, lay) -> None:
        """Write the drawings into the layout's labels, roofs, rims and shadows."""
        lay.label[np.asarray(self.footprint) > 0] = BUILDING
        lay.roof = np.asarray(self.roof)
        lay.flat_rim = np.asarray(self.rim) > 0
        lay.shadow = np.asarray(self.shadow) > 0


def _gable_halves(house: House) -> tuple[list[Point], list[Point], Point]:
    """The two roof halves (the ridge along the longer side) and the normal of the ridge."""
    c0, c1, c2, c3 = house.corners
    if house.frontage >= house.depth:
        m0 = ((c0[0] + c3[0]) / 2, (c0[1] + c3[1]) / 2)
        m1 = ((c1[0] + c2[0]) / 2, (c1[1] + c2[1]) / 2)
        return [c0, c1, m1, m0], [m0, m1, c2, c3], house.across
    m0 = ((c0[0] + c1[0]) / 2, (c0[1] + c1[1]) / 2)
    m1 = ((c3[0] + c2[0]) / 2, (c3[1] + c2[1]) / 2)
    return [c0, m0, m1, c3], [m0, c1, c2, m1], house.along


def draw_house(rng: np.random.Generator, house: House, sun: Point, style: int, canvas: Canvas):
    """Draw one house: footprint, roof colours (gable halves or flat with parapet), shadow."""
    corners = house.corners
    height = rng.uniform(3, 9)
    off = (sun[0] * height, sun[1] * height)
    moved = [(x + off[0], y + off[1]) for x, y in corners]
    canvas.shadow_draw.polygon(convex_hull(corners + moved), fill=1)
    canvas.footprint_draw.polygon(corners, fill=1)
    kind = style if rng.random() < 0.55 else rng.choice(len(ROOFS), p=ROOF_P)
    base = (ROOFS[kind] + rng.normal(0, 9, size=3) + rng.normal(0, 10)).tolist()
    lit = tuple(min(255, max(0, int(v))) for v in base)
    canvas.roof_draw.polygon(corners, fill=lit)  # the same raster as the footprint: no gaps
    if rng.random() < 0.6:
        # Gable roof: the halves differ in light.
        half1, half2, normal = _gable_halves(house)
        facing = normal[0] * sun[0] + normal[1] * sun[1]  # >0: half2 faces away from sun
        dark = tuple(min(255, max(0, int(0.72 * v))) for v in base)
        canvas.roof_draw.polygon(half2 if facing > 0 else half1, fill=dark)
    else:
        cx = sum(p[0] for p in corners) / 4
        cy = sum(p[1] for p in corners) / 4
        inner = [(cx + 0.78 * (x - cx), cy + 0.78 * (y - cy)) for x, y in corners]
        canvas.rim_draw.polygon(corners, fill=1)
        canvas.rim_draw.polygon(inner, fill=0)


class Neighbourhood:
    """Places houses along roads, denser in settlement zones, never on roads, water or houses."""

    def __init__(self, rng: np.random.Generator, lay) -> None:
        h, w = lay.h, lay.w
        self.rng, self.h, self.w, self.sun = rng, h, w, lay.sun
        self.settle = Coarse(rng, h, w, rng.uniform(150, 300))
        self.blocked = (lay.road_kind > 0) | (lay.label == WATER)
        self.occupied = np.zeros((h, w), dtype=bool)
        self.canvas = Canvas(h, w)
        self.style = rng.choice(len(ROOFS), p=ROOF_P)  # the neighbourhood's favourite roof

    def along(self, start: Point, end: Point, road_w: float, density: float) -> None:
        """Try houses on both sides of one road segment, one frontage after another."""
        (x0, y0), (x1, y1) = start, end
        h, w = self.h, self.w
        seg_len = math.hypot(x1 - x0, y1 - y0)
        if seg_len < 1 or max(x0, x1) < -40 or min(x0, x1) > w + 40:
            return
        if max(y0, y1) < -40 or min(y0, y1) > h + 40:
            return
        tangent = (x1 - x0) / seg_len, (y1 - y0) / seg_len
        t = self.rng.uniform(0, 14)
        while t < seg_len:
            a = self.rng.uniform(10, 26)  # frontage
            b = self.rng.uniform(10, 24)  # depth
            plot = x0 + tangent[0] * t, y0 + tangent[1] * t
            t += a + self.rng.uniform(2, 10)
            for side in (-1.0, 1.0):
                self._try_house(plot, side, tangent, (a, b), (road_w, density))

    def _try_house(self, plot: Point, side: float, tangent: Point, size, road) -> None:
        """Maybe build an ``a x b`` house beside ``plot`` on ``side`` of the road."""
        rng, h, w = self.rng, self.h, self.w
        (px, py), (tx, ty), (a, b), (road_w, density) = plot, tangent, size, road
        nx, ny = -ty, tx
        qx, qy = int(px), int(py)
        if not (0 <= qx < w and 0 <= qy < h):
            return
        p = density * (0.35 + 0.65 / (1.0 + math.exp(-3.0 * self.settle.value(qx, qy))))
        p = min(p, 0.95)
        if rng.random() > p:
            return
        off = road_w / 2 + rng.uniform(3, 11) + b / 2
        cx, cy = px + side * nx * off, py + side * ny * off
        ic, jc = int(cy), int(cx)
        if 0 <= ic < h and 0 <= jc < w and (self.blocked[ic, jc] or self.occupied[ic, jc]):
            return
        jit = rng.normal(0, 0.03)
        ca, sa = math.cos(jit), math.sin(jit)
        ux, uy = tx * ca - ty * sa, tx * sa + ty * ca
        vx, vy = -uy, ux
        corners = [
            (
                cx + sx * ux * a / 2 + sy * vx * b / 2,
                cy + sx * uy * a / 2 + sy * vy * b / 2,
            )
            for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
        ]
        house = House(corners, (ux, uy), (vx, vy), a, b)
        if self._claim(house, (cx, cy)):
            draw_house(rng, house, self.sun, self.style, self.canvas)

    def _claim(self, house: House, centre: Point) -> bool:
        """Mark the footprint occupied if it (a little enlarged) touches no road, water or house."""
        h, w = self.h, self.w
        (cx, cy), (ux, uy), (vx, vy) = centre, house.along, house.across
        a, b = house.frontage, house.depth
        xs = [q[0] for q in house.corners]
        ys = [q[1] for q in house.corners]
        bx0, bx1 = max(0, int(min(xs)) - 2), min(w, int(max(xs)) + 3)
        by0, by1 = max(0, int(min(ys)) - 2), min(h, int(max(ys)) + 3)
        if bx0 >= bx1 or by0 >= by1:
            return False
        gx = np.arange(bx0, bx1, dtype=np.float32)[None, :] + (0.5 - cx)
        gy = np.arange(by0, by1, dtype=np.float32)[:, None] + (0.5 - cy)
        foot = (np.abs(gx * ux + gy * uy) <= 0.58 * a + 1) & (
            np.abs(gx * vx + gy * vy) <= 0.58 * b + 1
        )
        taken = self.blocked[by0:by1, bx0:bx1] | self.occupied[by0:by1, bx0:bx1]
        if (taken & foot).any():
            return False
        self.occupied[by0:by1, bx0:bx1] |= foot
        return True


def add_buildings(
    rng: np.random.Generator,
    lay,
    asphalt: list[tuple[list[Point], float, float]],
) -> None:
    """Houses along the roads (denser in settlement zones), with roofs and shadows.

    Args:
        rng: The scene's generator.
        lay: The scene's :class:`engine.data.synthetic.layout.Layout` (roads and water
            laid out); its labels, roofs, rims and shadows are written.
        asphalt: Road polylines with their widths and house densities.
    """
    town = Neighbourhood(rng, lay)
    for pts, road_w, density in asphalt:
        for start, end in zip(pts[:-1], pts[1:]):
            town.along(start, end, road_w, density)
    town.canvas.apply(lay)
