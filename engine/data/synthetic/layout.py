"""The layout of a synthetic scene: labels and per-region attributes, before any colour."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.data.synthetic.buildings import add_buildings
from engine.data.synthetic.classes import (
    ASPHALT_MAIN,
    ASPHALT_MINOR,
    BACKGROUND,
    CROP_P,
    CROPS,
    DIRT,
    FARMLAND,
    GRASS,
    ROAD,
    WATER,
    WOODLAND,
)
from engine.data.synthetic.primitives import (
    Coarse,
    fbm,
    is_inside,
    path_through,
    thick_line,
    threshold_for,
    walk,
)


@dataclass
class CropParcels:
    """The farmland's parcels: each pixel's parcel and each parcel's colour and crop rows."""

    pid: np.ndarray  # int32 HxW parcel id
    rows: np.ndarray  # float32 HxW coordinate across crop rows
    rgb: np.ndarray  # per parcel: colour, row frequency, row amplitude and phase
    freq: np.ndarray
    amp: np.ndarray
    phase: np.ndarray


class Layout:
    """Everything `make_scene` decides before colouring: labels and per-region attributes."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.zeros((h, w), dtype=np.uint8)
        self.parcels: CropParcels | None = None  # None: the scene has no farmland parcels
        self.road_kind = np.zeros((h, w), np.uint8)  # uint8 HxW, 0 = none
        self.marking = np.zeros((h, w), bool)  # bool HxW, lane markings
        self.roof = np.zeros((h, w, 3), np.uint8)  # uint8 HxWx3 roof colours
        self.flat_rim: np.ndarray | None = None  # bool HxW, flat-roof parapets
        self.shadow: np.ndarray | None = None  # bool HxW, cast shadows of buildings
        self.sun = (1.0, 1.0)  # shadow direction (x, y), unit vector
        self.tracks: list[list[tuple[float, float]]] = []  # dirt tracks along field strips


@dataclass
class _Parcels:
    """Rotated strips of parcels: each pixel's place in them, and each parcel's centre."""

    cos: float
    sin: float
    u: np.ndarray  # HxW coordinate along the strips
    v: np.ndarray  # HxW coordinate across the strips
    umin: float
    vmin: float
    ulen: int
    edges: np.ndarray  # strip edges along v
    n_strips: int
    n_u: int  # parcels per strip
    pid: np.ndarray  # HxW parcel id
    fu: np.ndarray  # HxW position within the parcel along u
    fv: np.ndarray  # ... along v
    plen: np.ndarray  # HxW length of the pixel's parcel
    depth: np.ndarray  # HxW depth of the pixel's strip
    centres: tuple[np.ndarray, np.ndarray]  # (x, y) of each parcel's centre

    @property
    def count(self) -> int:
        return self.n_strips * self.n_u


def _parcel_grid(rng: np.random.Generator, h: int, w: int, theta: float) -> _Parcels:
    """Strips of random depth at angle ``theta``, cut into parcels of random length."""
    c, s = math.cos(theta), math.sin(theta)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    corners_u = [0.0, w * c, h * s, w * c + h * s]
    corners_v = [0.0, -w * s, h * c, -w * s + h * c]
    umin, vmin = min(corners_u), min(corners_v)
    u = xs * c + ys * s - umin
    v = ys * c - xs * s - vmin
    vlen = int(max(corners_v) - vmin) + 2
    # Strips of random depth along v, found through a 1-D table (no searchsorted).
    depths = rng.uniform(45, 150, size=vlen // 45 + 2)
    edges = np.concatenate([[0.0], np.cumsum(depths)])
    n_strips = int(np.searchsorted(edges, vlen)) + 1
    vi = np.arange(vlen + 1, dtype=np.float32)
    strip_of = np.clip(np.searchsorted(edges, vi, side="right") - 1, 0, n_strips - 1)
    within_of = (vi - edges[strip_of]).astype(np.float32)
    vint = np.clip(v.astype(np.int32), 0, vlen)
    iv = strip_of[vint]
    fv = within_of[vint]
    depth = depths[np.minimum(iv, len(depths) - 1)].astype(np.float32)
    # Parcels of random length along u, per strip, with a per-strip offset.
    lengths = rng.uniform(40, 220, size=n_strips).astype(np.float32)
    offsets = rng.uniform(0, 1, size=n_strips).astype(np.float32) * lengths
    uu = u + offsets[iv]
    plen = lengths[iv]
    iu = np.floor(uu / plen).astype(np.int32)
    fu = uu - iu * plen
    ulen = int(max(corners_u) - umin) + 2
    n_u = int(ulen / 40) + 3
    n_parcels = n_strips * n_u
    pu = (np.arange(n_parcels) % n_u + 0.5) * np.repeat(lengths, n_u) - np.repeat(offsets, n_u)
    pv = edges[np.arange(n_parcels) // n_u] + 0.5 * depths[np.arange(n_parcels) // n_u]
    px = (pu + umin) * c - (pv + vmin) * s
    py = (pu + umin) * s + (pv + vmin) * c
    return _Parcels(
        c, s, u, v, umin, vmin, ulen, edges, n_strips, n_u,
        iv * n_u + iu, fu, fv, plen, depth, (px, py),
    )  # fmt: skip


def _farmed(rng: np.random.Generator, grid: _Parcels, h: int, w: int, frac: float) -> np.ndarray:
    """Which parcels are farmed: those highest in a coarse zone field (``frac`` of them)."""
    px, py = grid.centres
    zone = Coarse(rng, h, w, rng.uniform(250, 450))
    pzone = zone.at(px, py) + rng.normal(0, 0.25, size=grid.count).astype(np.float32)
    visible = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    if visible.any():
        thr = float(np.quantile(pzone[visible], 1.0 - frac))
    else:
        thr = float(np.quantile(pzone, 1.0 - frac))
    return pzone > thr


def _parcel_looks(rng: np.random.Generator, lay: Layout, grid: _Parcels) -> None:
    """Each parcel's crop colour and rows (period, amplitude, direction, phase) in ``lay``."""
    n_parcels = grid.count
    crop = rng.choice(len(CROPS), size=n_parcels, p=CROP_P)
    rgb = (
        CROPS[crop, 0] + rng.normal(0, 1, size=(n_parcels, 3)).astype(np.float32) * (CROPS[crop, 1])
    )
    rgb *= rng.uniform(0.85, 1.15, size=(n_parcels, 1)).astype(np.float32)
    period = rng.uniform(2.6, 9.0, size=n_parcels).astype(np.float32)
    amp = rng.uniform(0.0, 0.16, size=n_parcels).astype(np.float32)
    amp[rng.random(n_parcels) < 0.15] = 0.0  # some parcels show no rows
    along_v = rng.random(n_parcels) < 0.5
    phase = rng.uniform(0, 2 * math.pi, size=n_parcels).astype(np.float32)
    # Per-pixel parcel id and row coordinate; colours are applied after the later layers.
    lay.parcels = CropParcels(
        pid=grid.pid,
        rows=np.where(along_v[grid.pid], grid.v, grid.u),
        rgb=rgb,
        freq=(2 * math.pi / period).astype(np.float32),
        amp=amp,
        phase=phase,
    )


def _dirt_tracks(rng: np.random.Generator, lay: Layout, grid: _Parcels, frac: float) -> None:
    """Dirt tracks along a few strip edges (drawn later with the roads)."""
    c, s, edges = grid.cos, grid.sin, grid.edges
    for _ in range(rng.poisson(1.2 * frac * 3)):
        k = int(rng.integers(1, max(2, grid.n_strips)))
        vv = float(edges[min(k, len(edges) - 1)]) + grid.vmin
        a = np.array([grid.umin, vv])
        b = np.array([grid.umin + grid.ulen, vv])
        p0 = (a[0] * c - a[1] * s, a[0] * s + a[1] * c)
        p1 = (b[0] * c - b[1] * s, b[0] * s + b[1] * c)
        lay.tracks.append([p0, p1])


def _farmland(rng: np.random.Generator, lay: Layout, frac: float, theta: float) -> None:
    """Rotated strips of parcels; a coarse zone field picks which parcels are farmed."""
    grid = _parcel_grid(rng, lay.h, lay.w, theta)
    farmed = _farmed(rng, grid, lay.h, lay.w, frac)
    # Some farmed parcels lie fallow: grass or bare land, with their own shade.
    fate = rng.random(grid.count)
    _parcel_looks(rng, lay, grid)
    parcel_label = np.where(
        farmed, np.where(fate < 0.1, GRASS, np.where(fate < 0.14, BACKGROUND, FARMLAND)), 255
    ).astype(np.uint8)
    pl = parcel_label[grid.pid]
    # Field margins (tracks, hedges) between parcels: thin strips of another class.
    margin = rng.uniform(1.5, 4.0)
    margin_cls = GRASS if rng.random() < 0.5 else BACKGROUND
    edge = (grid.fu < margin) | (grid.fv < margin) | (grid.fu > grid.plen - 0.5)
    edge |= grid.fv > grid.depth - 0.5
    on = pl != 255
    lay.label[on] = pl[on]
    lay.label[on & edge] = margin_cls
    _dirt_tracks(rng, lay, grid, frac)


def _settlement(
    rng: np.random.Generator,
    lay: Layout,
    theta: float,
    block: float,
    origin: tuple[float, float],
    ragged: np.ndarray,
) -> list[tuple[list[tuple[float, float]], float]]:
    """Clear a roughly round village (gardens) and lay out its street grid."""
    h, w = lay.h, lay.w
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    radius = rng.uniform(90, 260)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) * (1.0 - 0.25 * ragged)
    inside = dist < radius
    garden = GRASS if rng.random() < 0.6 else BACKGROUND
    lay.label[inside & ((lay.label == FARMLAND) | (lay.label == WOODLAND))] = garden
    # Streets lie on a lattice shared by all villages of the scene, so they line up.
    streets = []
    one_way = rng.random() < 0.3  # some villages have streets one way only
    for angle in (theta, theta + math.pi / 2)[: 1 if one_way else 2]:
        tx, ty = math.cos(angle), math.sin(angle)
        nx, ny = -ty, tx
        centre_off = (cx - origin[0]) * nx + (cy - origin[1]) * ny
        centre_along = (cx - origin[0]) * tx + (cy - origin[1]) * ty
        first = math.ceil((centre_off - radius) / block)
        for k in range(first, int((centre_off + radius) // block) + 1):
            off = k * block - centre_off
            half = math.sqrt(max(radius**2 - off**2, 0.0))
            if half < 25:
                continue
            a = centre_along - half * rng.uniform(0.7, 1.1)
            b = centre_along + half * rng.uniform(0.7, 1.1)
            bx, by = origin[0] + nx * k * block, origin[1] + ny * k * block
            pts = [(bx + tx * a, by + ty * a), (bx + tx * b, by + ty * b)]
            streets.append((pts, float(rng.uniform(5, 8))))
    return streets


def _roads(
    rng: np.random.Generator,
    lay: Layout,
    theta: float,
    density: float,
    streets: list[tuple[list[tuple[float, float]], float]],
) -> list[tuple[list[tuple[float, float]], float, float]]:
    """Draw the road network; return asphalt polylines with widths and house densities."""
    h, w = lay.h, lay.w
    diag = math.hypot(h, w)
    area = h * w / 512.0**2
    img = Image.new("L", (w, h), 0)
    mark = Image.new("L", (w, h), 0)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mark)
    for track in lay.tracks:
        draw.line(track, fill=DIRT, width=int(rng.integers(3, 6)))
    asphalt: list[tuple[list[tuple[float, float]], float, float]] = []
    for pts, width in streets:
        draw.line(pts, fill=ASPHALT_MINOR, width=int(round(width)))
        asphalt.append((pts, width, 1.0))
    n_main = 1 + rng.poisson(0.6 * math.sqrt(area) + 0.3)
    for _ in range(n_main):
        point = (rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h)
        if rng.random() < 0.6:
            heading = theta + (math.pi / 2) * int(rng.integers(0, 2)) + rng.normal(0, 0.02)
            wiggle = 0.004
        else:
            heading = rng.uniform(0, math.pi)
            wiggle = 0.03
        pts = path_through(rng, point, heading, diag, 30.0, wiggle)
        width = float(rng.uniform(8, 15))
        thick_line(draw, pts, ASPHALT_MAIN, width)
        if rng.random() < 0.7:
            # Dashed centre line.
            for a, b in zip(pts[::2], pts[1::2]):
                mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
                mdraw.line([a, mid], fill=1, width=1)
        asphalt.append((pts, width, density))
    n_minor = rng.poisson((1.0 + 4.0 * density) * math.sqrt(area))
    for _ in range(n_minor):
        parent = asphalt[int(rng.integers(0, len(asphalt)))][0]
        inside = [i for i in range(len(parent) - 1) if is_inside(parent[i], h, w)]
        if not inside:
            continue
        i = inside[int(rng.integers(0, len(inside)))]
        (x0, y0), (x1, y1) = parent[i], parent[i + 1]
        seg = math.atan2(y1 - y0, x1 - x0)
        heading = seg + math.copysign(math.pi / 2, rng.random() - 0.5) + rng.normal(0, 0.05)
        wiggle = 0.003 if rng.random() < 0.6 else 0.04
        pts = walk(rng, (x0, y0), heading, rng.uniform(0.15, 0.7) * diag, 25.0, wiggle)
        width = float(rng.uniform(5, 8.5))
        kind = ASPHALT_MINOR if rng.random() < 0.8 else DIRT
        thick_line(draw, pts, kind, width)
        if kind != DIRT:
            asphalt.append((pts, width, density))
    lay.road_kind = np.asarray(img)
    lay.marking = np.asarray(mark).astype(bool) & (lay.road_kind == ASPHALT_MAIN)
    return asphalt


def make_layout(rng: np.random.Generator, h: int, w: int) -> Layout:
    """Decide what is where in an ``h x w`` scene: land cover, water, roads, buildings."""
    lay = Layout(h, w)
    phi = rng.uniform(0, 2 * math.pi)
    lay.sun = (math.cos(phi), math.sin(phi))
    theta = rng.uniform(0, math.pi)
    farm_frac = rng.uniform(0.1, 0.65)
    wood_frac = rng.uniform(0.02, 0.3)
    grass_frac = rng.uniform(0.1, 0.45)
    density = rng.uniform(0.4, 1.0)

    grass = fbm(rng, h, w, (rng.uniform(120, 260), 40.0), (1.0, 0.35))
    lay.label[grass > threshold_for(grass, grass_frac)] = GRASS
    _farmland(rng, lay, farm_frac, theta)
    wood = fbm(rng, h, w, (rng.uniform(100, 220), 36.0, 12.0), (1.0, 0.45, 0.2))
    lay.label[wood > threshold_for(wood, wood_frac)] = WOODLAND

    water_kind = rng.choice(3, p=[0.4, 0.35, 0.25])  # river, lakes, none
    if water_kind == 0:
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        point = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
        pts = path_through(rng, point, rng.uniform(0, math.pi), math.hypot(h, w), 12.0, 0.06)
        width = int(rng.uniform(14, 55))
        thick_line(draw, pts, 1, width)
        if rng.random() < 0.5:  # a side channel
            side = walk(rng, pts[len(pts) // 2], rng.uniform(0, 2 * math.pi), 0.5 * w, 10, 0.08)
            thick_line(draw, side, 1, max(6, width // 3))
        lay.label[np.asarray(img) > 0] = WATER
    elif water_kind == 1:
        lakes = fbm(rng, h, w, (rng.uniform(110, 220), 50.0), (1.0, 0.3))
        lay.label[lakes > threshold_for(lakes, rng.uniform(0.03, 0.16))] = WATER

    streets: list[tuple[list[tuple[float, float]], float]] = []
    block = rng.uniform(55, 95)
    origin = (rng.uniform(0, w), rng.uniform(0, h))
    for _ in range(rng.poisson(0.9 * math.sqrt(h * w) / 512.0)):
        streets += _settlement(rng, lay, theta, block, origin, grass)
    # Paved roads cross water (bridges); tracks and dirt roads do not.
    asphalt = _roads(rng, lay, theta, density, streets)
    wet_dirt = (lay.road_kind == DIRT) & (lay.label == WATER)
    if wet_dirt.any():  # dirt roads stop at the water's edge
        lay.road_kind = np.where(wet_dirt, np.uint8(0), lay.road_kind)
        lay.marking = lay.marking & ~wet_dirt
    lay.label[lay.road_kind > 0] = ROAD
    add_buildings(rng, lay, asphalt)
    return lay
