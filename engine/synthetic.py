"""Synthetic land-cover scenes: the embedded default data, so nothing needs a download.

A scene is an aerial-looking RGB image and its class-index mask, made from a seed with
numpy and Pillow only (no per-pixel Python loops). The layout is built in layers —
bare land, grass, farmland parcels with crop stripes and field tracks, woodland with
tree crowns, a river or lakes, a road network with markings, and buildings with gable
or flat roofs and cast shadows — and then rendered with per-region colours (every
parcel and roof has its own), multi-scale texture, per-scene illumination, haze and
white balance, optical blur and sensor noise. Colours of the classes overlap on
purpose (green crops vs grass, ploughed fields vs bare land vs dirt tracks, grey roofs
vs asphalt, deep water vs woodland shade), so the labels need spatial context, not
colour alone.

`write_dataset` writes the Dubai layout (``Scene N/images/scene_part_00K.<ext>`` and
``Scene N/masks/scene_part_00K.png``, colour-coded RGB masks as an annotation tool
exports them) plus a terraseg ``classes.yaml``. A fraction of the scenes carry a small
no-data region (a black border wedge or a cloud) painted ``#000000`` in the mask, which
the classes file marks ``ignore: true`` (class index 255).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

SYNTHETIC_CLASSES: list[dict[str, str]] = [
    {"name": "background", "color": "#A88C64"},
    {"name": "farmland", "color": "#F5D742"},
    {"name": "road", "color": "#E632C8"},
    {"name": "building", "color": "#DC1E1E"},
    {"name": "water", "color": "#1E64E6"},
    {"name": "woodland", "color": "#0F6423"},
    {"name": "grass", "color": "#8CDC5A"},
]
"""The classes in class-index order: ``name`` and mask ``color`` (``#RRGGBB``)."""

NODATA_CLASS: dict[str, str] = {"name": "nodata", "color": "#000000"}
"""The no-data (unlabeled) mask colour; it maps to `IGNORE_INDEX`."""

IGNORE_INDEX = 255
"""Index-mask value of no-data pixels."""

IMAGE_FORMATS = ("jpg", "png", "tif")

BACKGROUND, FARMLAND, ROAD, BUILDING, WATER, WOODLAND, GRASS = range(7)
_NUM_CLASSES = len(SYNTHETIC_CLASSES)

# Road kinds drawn into the road layer (0 = no road).
_ASPHALT_MAIN, _ASPHALT_MINOR, _DIRT = 1, 2, 3

# Crop palettes for farmland parcels: (mean RGB, per-channel spread).
_CROPS = np.array(
    [
        [[74, 112, 50], [8, 9, 6]],  # green crop
        [[112, 134, 74], [8, 8, 6]],  # young / pale green
        [[186, 168, 110], [8, 7, 6]],  # ripe cereal
        [[128, 104, 82], [7, 6, 5]],  # ploughed soil
        [[170, 152, 122], [6, 5, 5]],  # stubble
    ],
    dtype=np.float32,
)
_CROP_P = np.array([0.32, 0.18, 0.18, 0.2, 0.12])

_ROOFS = np.array(
    [
        [172, 88, 66],  # terracotta
        [128, 128, 132],  # grey
        [186, 186, 188],  # light grey
        [222, 218, 210],  # white
        [72, 72, 78],  # dark
        [122, 94, 74],  # brown
        [98, 110, 130],  # bluish metal
    ],
    dtype=np.float32,
)
_ROOF_P = np.array([0.26, 0.2, 0.16, 0.12, 0.1, 0.1, 0.06])


def _hex_to_rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def palette() -> np.ndarray:
    """Return the mask colours as a uint8 array ``[256, 3]`` indexed by class index.

    Entries past the classes (the ignore index 255 included) are the no-data colour.
    """
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:] = _hex_to_rgb(NODATA_CLASS["color"])
    for index, cls in enumerate(SYNTHETIC_CLASSES):
        table[index] = _hex_to_rgb(cls["color"])
    return table


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """Colour-code an index mask (``uint8 HxW``, 255 = ignore) as ``uint8 HxWx3``."""
    return palette()[mask]


def classes_config() -> dict:
    """Return the terraseg classes-file content (``encoding: rgb``) for the synthetic data."""
    classes: list[dict] = [
        {"name": c["name"], "value": c["color"], "color": c["color"]} for c in SYNTHETIC_CLASSES
    ]
    classes.append(
        {
            "name": NODATA_CLASS["name"],
            "value": NODATA_CLASS["color"],
            "color": NODATA_CLASS["color"],
            "ignore": True,
        }
    )
    return {"encoding": "rgb", "classes": classes}


def _as_rng(rng: np.random.Generator | int | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


# --------------------------------------------------------------------------- noise fields


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise (bicubic-interpolated Gaussian grid), std about 0.8."""
    gh = int(math.ceil(h / cell)) + 4
    gw = int(math.ceil(w / cell)) + 4
    grid = Image.fromarray(rng.standard_normal((gh, gw), dtype=np.float32))
    ox, oy = rng.uniform(1.0, 2.0, size=2)
    box = (ox, oy, ox + w / cell, oy + h / cell)
    return np.asarray(grid.resize((w, h), Image.BICUBIC, box=box))


class _Coarse:
    """A smooth field kept at 1/16 resolution, for looking up a few points."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, cell: float) -> None:
        self.step = 16
        self.grid = _noise(rng, h // 16 + 1, w // 16 + 1, cell / 16)

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


def _fbm(
    rng: np.random.Generator, h: int, w: int, cells: Sequence[float], weights: Sequence[float]
) -> np.ndarray:
    """Sum of noise octaves, built at a reduced resolution and upsampled once."""
    step = max(1, int(min(cells) // 4))
    sh, sw = max(2, math.ceil(h / step)), max(2, math.ceil(w / step))
    acc = np.zeros((sh, sw), dtype=np.float32)
    for cell, weight in zip(cells, weights):
        acc += weight * _noise(rng, sh, sw, cell / step)
    if step == 1:
        return acc[:h, :w]
    big = Image.fromarray(acc).resize((w, h), Image.BILINEAR, box=(0, 0, w / step, h / step))
    return np.asarray(big)


def _threshold_for(field: np.ndarray, fraction: float) -> float:
    """Value above which about ``fraction`` of the field lies (from a subsample)."""
    sample = field[::5, ::5]
    return float(np.quantile(sample, 1.0 - float(np.clip(fraction, 0.0, 1.0))))


def _blur_float(img: np.ndarray, strength: float) -> np.ndarray:
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


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
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


def _walk(
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


def _through(
    rng: np.random.Generator,
    point: tuple[float, float],
    heading: float,
    reach: float,
    step: float,
    wiggle: float,
) -> list[tuple[float, float]]:
    """A smoothly turning polyline through ``point``, ``reach`` long on each side."""
    fwd = _walk(rng, point, heading, reach, step, wiggle)
    back = _walk(rng, point, heading + math.pi, reach, step, wiggle)
    return back[::-1] + fwd[1:]


def _thick_line(
    draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], fill: int, width: float
) -> None:
    """A wide polyline without the slivers Pillow leaves at joints: discs on the vertices."""
    width = int(round(width))
    draw.line(pts, fill=fill, width=width)
    r = (width - 1) / 2
    for x, y in pts[1:-1]:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _inside(p: tuple[float, float], h: int, w: int, margin: float = 0.0) -> bool:
    return -margin <= p[0] < w + margin and -margin <= p[1] < h + margin


# --------------------------------------------------------------------------- layout


class _Layout:
    """Everything `make_scene` decides before colouring: labels and per-region attributes."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.label = np.zeros((h, w), dtype=np.uint8)
        self.pid: np.ndarray | None = None  # int32 HxW parcel id
        self.rows: np.ndarray | None = None  # float32 HxW coordinate across crop rows
        self.parcel_rgb: np.ndarray | None = None  # per parcel: colour, row frequency,
        self.parcel_freq: np.ndarray | None = None  # row amplitude and phase
        self.parcel_amp: np.ndarray | None = None
        self.parcel_phase: np.ndarray | None = None
        self.road_kind: np.ndarray | None = None  # uint8 HxW, 0 = none
        self.marking: np.ndarray | None = None  # bool HxW, lane markings
        self.roof: np.ndarray | None = None  # uint8 HxWx3 roof colours
        self.flat_rim: np.ndarray | None = None  # bool HxW, flat-roof parapets
        self.shadow: np.ndarray | None = None  # bool HxW, cast shadows of buildings
        self.sun = (1.0, 1.0)  # shadow direction (x, y), unit vector
        self.tracks: list[list[tuple[float, float]]] = []  # dirt tracks along field strips


def _farmland(rng: np.random.Generator, lay: _Layout, frac: float, theta: float) -> None:
    """Rotated strips of parcels; a coarse zone field picks which parcels are farmed."""
    h, w = lay.h, lay.w
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
    pid = iv * n_u + iu

    # Per-parcel attributes.
    n_parcels = n_strips * n_u
    pu = (np.arange(n_parcels) % n_u + 0.5) * np.repeat(lengths, n_u) - np.repeat(offsets, n_u)
    pv = edges[np.arange(n_parcels) // n_u] + 0.5 * depths[np.arange(n_parcels) // n_u]
    px = (pu + umin) * c - (pv + vmin) * s
    py = (pu + umin) * s + (pv + vmin) * c
    zone = _Coarse(rng, h, w, rng.uniform(250, 450))
    pzone = zone.at(px, py) + rng.normal(0, 0.25, size=n_parcels).astype(np.float32)
    visible = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    if visible.any():
        thr = float(np.quantile(pzone[visible], 1.0 - frac))
    else:
        thr = float(np.quantile(pzone, 1.0 - frac))
    farmed = pzone > thr
    # Some farmed parcels lie fallow: grass or bare land, with their own shade.
    fate = rng.random(n_parcels)
    crop = rng.choice(len(_CROPS), size=n_parcels, p=_CROP_P)
    rgb = (
        _CROPS[crop, 0]
        + rng.normal(0, 1, size=(n_parcels, 3)).astype(np.float32) * (_CROPS[crop, 1])
    )
    rgb *= rng.uniform(0.85, 1.15, size=(n_parcels, 1)).astype(np.float32)
    period = rng.uniform(2.6, 9.0, size=n_parcels).astype(np.float32)
    amp = rng.uniform(0.0, 0.16, size=n_parcels).astype(np.float32)
    amp[rng.random(n_parcels) < 0.15] = 0.0  # some parcels show no rows
    along_v = rng.random(n_parcels) < 0.5
    phase = rng.uniform(0, 2 * math.pi, size=n_parcels).astype(np.float32)

    parcel_label = np.where(
        farmed, np.where(fate < 0.1, GRASS, np.where(fate < 0.14, BACKGROUND, FARMLAND)), 255
    ).astype(np.uint8)
    pl = parcel_label[pid]
    # Field margins (tracks, hedges) between parcels: thin strips of another class.
    margin = rng.uniform(1.5, 4.0)
    margin_cls = GRASS if rng.random() < 0.5 else BACKGROUND
    edge = (fu < margin) | (fv < margin) | (fu > plen - 0.5) | (fv > depth - 0.5)
    on = pl != 255
    lay.label[on] = pl[on]
    lay.label[on & edge] = margin_cls

    # Per-pixel parcel id and row coordinate; colours are applied after the later layers.
    lay.pid = pid
    lay.rows = np.where(along_v[pid], v, u)
    lay.parcel_rgb = rgb
    lay.parcel_freq = (2 * math.pi / period).astype(np.float32)
    lay.parcel_amp = amp
    lay.parcel_phase = phase

    # Dirt tracks along a few strip edges.
    for _ in range(rng.poisson(1.2 * frac * 3)):
        k = int(rng.integers(1, max(2, n_strips)))
        vv = float(edges[min(k, len(edges) - 1)]) + vmin
        a = np.array([umin, vv])
        b = np.array([umin + ulen, vv])
        p0 = (a[0] * c - a[1] * s, a[0] * s + a[1] * c)
        p1 = (b[0] * c - b[1] * s, b[0] * s + b[1] * c)
        lay.tracks.append([p0, p1])


def _settlement(
    rng: np.random.Generator,
    lay: _Layout,
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
    lay: _Layout,
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
        draw.line(track, fill=_DIRT, width=int(rng.integers(3, 6)))
    asphalt: list[tuple[list[tuple[float, float]], float, float]] = []
    for pts, width in streets:
        draw.line(pts, fill=_ASPHALT_MINOR, width=int(round(width)))
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
        pts = _through(rng, point, heading, diag, 30.0, wiggle)
        width = float(rng.uniform(8, 15))
        _thick_line(draw, pts, _ASPHALT_MAIN, width)
        if rng.random() < 0.7:
            # Dashed centre line.
            for a, b in zip(pts[::2], pts[1::2]):
                mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
                mdraw.line([a, mid], fill=1, width=1)
        asphalt.append((pts, width, density))
    n_minor = rng.poisson((1.0 + 4.0 * density) * math.sqrt(area))
    for _ in range(n_minor):
        parent = asphalt[int(rng.integers(0, len(asphalt)))][0]
        inside = [i for i in range(len(parent) - 1) if _inside(parent[i], h, w)]
        if not inside:
            continue
        i = inside[int(rng.integers(0, len(inside)))]
        (x0, y0), (x1, y1) = parent[i], parent[i + 1]
        seg = math.atan2(y1 - y0, x1 - x0)
        heading = seg + math.copysign(math.pi / 2, rng.random() - 0.5) + rng.normal(0, 0.05)
        wiggle = 0.003 if rng.random() < 0.6 else 0.04
        pts = _walk(rng, (x0, y0), heading, rng.uniform(0.15, 0.7) * diag, 25.0, wiggle)
        width = float(rng.uniform(5, 8.5))
        kind = _ASPHALT_MINOR if rng.random() < 0.8 else _DIRT
        _thick_line(draw, pts, kind, width)
        if kind != _DIRT:
            asphalt.append((pts, width, density))
    lay.road_kind = np.asarray(img)
    lay.marking = np.asarray(mark).astype(bool) & (lay.road_kind == _ASPHALT_MAIN)
    return asphalt


def _buildings(
    rng: np.random.Generator,
    lay: _Layout,
    asphalt: list[tuple[list[tuple[float, float]], float, float]],
) -> None:
    """Houses along the roads (denser in settlement zones), with roofs and shadows."""
    h, w = lay.h, lay.w
    settle = _Coarse(rng, h, w, rng.uniform(150, 300))
    blocked = (lay.road_kind > 0) | (lay.label == WATER)
    occupied = np.zeros((h, w), dtype=bool)
    bld = Image.new("L", (w, h), 0)
    roof = Image.new("RGB", (w, h), (0, 0, 0))
    rim = Image.new("L", (w, h), 0)
    shadow = Image.new("L", (w, h), 0)
    bdraw, rdraw = ImageDraw.Draw(bld), ImageDraw.Draw(roof)
    idraw, sdraw = ImageDraw.Draw(rim), ImageDraw.Draw(shadow)
    sun = lay.sun
    style = rng.choice(len(_ROOFS), p=_ROOF_P)  # the neighbourhood's favourite roof
    for pts, road_w, density in asphalt:
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            seg_len = math.hypot(x1 - x0, y1 - y0)
            if seg_len < 1 or max(x0, x1) < -40 or min(x0, x1) > w + 40:
                continue
            if max(y0, y1) < -40 or min(y0, y1) > h + 40:
                continue
            tx, ty = (x1 - x0) / seg_len, (y1 - y0) / seg_len
            nx, ny = -ty, tx
            t = rng.uniform(0, 14)
            while t < seg_len:
                a = rng.uniform(10, 26)  # frontage
                b = rng.uniform(10, 24)  # depth
                px, py = x0 + tx * t, y0 + ty * t
                t += a + rng.uniform(2, 10)
                for side in (-1.0, 1.0):
                    qx, qy = int(px), int(py)
                    if not (0 <= qx < w and 0 <= qy < h):
                        continue
                    p = density * (0.35 + 0.65 / (1.0 + math.exp(-3.0 * settle.value(qx, qy))))
                    p = min(p, 0.95)
                    if rng.random() > p:
                        continue
                    off = road_w / 2 + rng.uniform(3, 11) + b / 2
                    cx, cy = px + side * nx * off, py + side * ny * off
                    ic, jc = int(cy), int(cx)
                    if 0 <= ic < h and 0 <= jc < w and (blocked[ic, jc] or occupied[ic, jc]):
                        continue
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
                    xs = [q[0] for q in corners]
                    ys = [q[1] for q in corners]
                    bx0, bx1 = max(0, int(min(xs)) - 2), min(w, int(max(xs)) + 3)
                    by0, by1 = max(0, int(min(ys)) - 2), min(h, int(max(ys)) + 3)
                    if bx0 >= bx1 or by0 >= by1:
                        continue
                    # The footprint, a little enlarged, must not touch roads, water or houses.
                    gx = np.arange(bx0, bx1, dtype=np.float32)[None, :] + (0.5 - cx)
                    gy = np.arange(by0, by1, dtype=np.float32)[:, None] + (0.5 - cy)
                    foot = (np.abs(gx * ux + gy * uy) <= 0.58 * a + 1) & (
                        np.abs(gx * vx + gy * vy) <= 0.58 * b + 1
                    )
                    taken = blocked[by0:by1, bx0:bx1] | occupied[by0:by1, bx0:bx1]
                    if (taken & foot).any():
                        continue
                    occupied[by0:by1, bx0:bx1] |= foot
                    _one_building(
                        rng,
                        corners,
                        (ux, uy),
                        (vx, vy),
                        a,
                        b,
                        sun,
                        style,
                        bdraw,
                        rdraw,
                        idraw,
                        sdraw,
                    )
    lay.label[np.asarray(bld) > 0] = BUILDING
    lay.roof = np.asarray(roof)
    lay.flat_rim = np.asarray(rim) > 0
    lay.shadow = np.asarray(shadow) > 0


def _one_building(rng, corners, uvec, vvec, a, b, sun, style, bdraw, rdraw, idraw, sdraw) -> None:
    """Draw one house: footprint, roof colours (gable halves or flat with parapet), shadow."""
    height = rng.uniform(3, 9)
    off = (sun[0] * height, sun[1] * height)
    moved = [(x + off[0], y + off[1]) for x, y in corners]
    sdraw.polygon(_hull(corners + moved), fill=1)
    bdraw.polygon(corners, fill=1)
    kind = style if rng.random() < 0.55 else rng.choice(len(_ROOFS), p=_ROOF_P)
    base = (_ROOFS[kind] + rng.normal(0, 9, size=3) + rng.normal(0, 10)).tolist()
    lit = tuple(min(255, max(0, int(v))) for v in base)
    rdraw.polygon(corners, fill=lit)  # the same raster as the footprint: no gaps
    if rng.random() < 0.6:
        # Gable roof: the ridge runs along the longer side; the halves differ in light.
        c0, c1, c2, c3 = corners
        if a >= b:
            m0 = ((c0[0] + c3[0]) / 2, (c0[1] + c3[1]) / 2)
            m1 = ((c1[0] + c2[0]) / 2, (c1[1] + c2[1]) / 2)
            half1, half2 = [c0, c1, m1, m0], [m0, m1, c2, c3]
            normal = vvec
        else:
            m0 = ((c0[0] + c1[0]) / 2, (c0[1] + c1[1]) / 2)
            m1 = ((c3[0] + c2[0]) / 2, (c3[1] + c2[1]) / 2)
            half1, half2 = [c0, m0, m1, c3], [m0, c1, c2, m1]
            normal = uvec
        facing = normal[0] * sun[0] + normal[1] * sun[1]  # >0: half2 faces away from sun
        dark = tuple(min(255, max(0, int(0.72 * v))) for v in base)
        rdraw.polygon(half2 if facing > 0 else half1, fill=dark)
    else:
        cx = sum(p[0] for p in corners) / 4
        cy = sum(p[1] for p in corners) / 4
        inner = [(cx + 0.78 * (x - cx), cy + 0.78 * (y - cy)) for x, y in corners]
        idraw.polygon(corners, fill=1)
        idraw.polygon(inner, fill=0)


def _layout(rng: np.random.Generator, h: int, w: int) -> _Layout:
    lay = _Layout(h, w)
    phi = rng.uniform(0, 2 * math.pi)
    lay.sun = (math.cos(phi), math.sin(phi))
    theta = rng.uniform(0, math.pi)
    farm_frac = rng.uniform(0.1, 0.65)
    wood_frac = rng.uniform(0.02, 0.3)
    grass_frac = rng.uniform(0.1, 0.45)
    density = rng.uniform(0.4, 1.0)

    grass = _fbm(rng, h, w, (rng.uniform(120, 260), 40.0), (1.0, 0.35))
    lay.label[grass > _threshold_for(grass, grass_frac)] = GRASS
    _farmland(rng, lay, farm_frac, theta)
    wood = _fbm(rng, h, w, (rng.uniform(100, 220), 36.0, 12.0), (1.0, 0.45, 0.2))
    lay.label[wood > _threshold_for(wood, wood_frac)] = WOODLAND

    water_kind = rng.choice(3, p=[0.4, 0.35, 0.25])  # river, lakes, none
    if water_kind == 0:
        img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(img)
        point = (rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h)
        pts = _through(rng, point, rng.uniform(0, math.pi), math.hypot(h, w), 12.0, 0.06)
        width = int(rng.uniform(14, 55))
        _thick_line(draw, pts, 1, width)
        if rng.random() < 0.5:  # a side channel
            side = _walk(rng, pts[len(pts) // 2], rng.uniform(0, 2 * math.pi), 0.5 * w, 10, 0.08)
            _thick_line(draw, side, 1, max(6, width // 3))
        lay.label[np.asarray(img) > 0] = WATER
    elif water_kind == 1:
        lakes = _fbm(rng, h, w, (rng.uniform(110, 220), 50.0), (1.0, 0.3))
        lay.label[lakes > _threshold_for(lakes, rng.uniform(0.03, 0.16))] = WATER

    streets: list[tuple[list[tuple[float, float]], float]] = []
    block = rng.uniform(55, 95)
    origin = (rng.uniform(0, w), rng.uniform(0, h))
    for _ in range(rng.poisson(0.9 * math.sqrt(h * w) / 512.0)):
        streets += _settlement(rng, lay, theta, block, origin, grass)
    # Paved roads cross water (bridges); tracks and dirt roads do not.
    asphalt = _roads(rng, lay, theta, density, streets)
    wet_dirt = (lay.road_kind == _DIRT) & (lay.label == WATER)
    if wet_dirt.any():  # dirt roads stop at the water's edge
        lay.road_kind = np.where(wet_dirt, np.uint8(0), lay.road_kind)
        lay.marking = lay.marking & ~wet_dirt
    lay.label[lay.road_kind > 0] = ROAD
    _buildings(rng, lay, asphalt)
    return lay


# --------------------------------------------------------------------------- rendering


def _render(rng: np.random.Generator, lay: _Layout) -> np.ndarray:
    """Colour a layout into a float32 ``HxWx3`` image on the 0–255 scale."""
    h, w = lay.h, lay.w
    label = lay.label
    n = h * w

    def jitter(rgb, spread):
        return np.asarray(rgb, np.float32) + rng.normal(0, spread, size=3).astype(np.float32)

    soil = rng.uniform(0.0, 1.0)
    # Two shades per class (and per road kind), mixed by a smooth field in 16 steps.
    col_a = np.zeros((_NUM_CLASSES + 3, 3), np.float32)
    col_b = np.zeros((_NUM_CLASSES + 3, 3), np.float32)
    col_a[BACKGROUND] = jitter((140 + 30 * soil, 124 + 22 * soil, 100 + 14 * soil), 6)
    col_b[BACKGROUND] = jitter((118, 104, 84), 6)
    col_a[GRASS] = jitter((96, 122, 64), 7)
    col_b[GRASS] = jitter((128, 136, 84), 7)
    col_a[WOODLAND] = jitter((48, 72, 40), 5)
    col_b[WOODLAND] = col_a[WOODLAND] * 0.88
    col_a[WATER] = jitter((34, 52, 62), 5)
    col_b[WATER] = col_a[WATER] * 1.08
    col_a[FARMLAND] = col_b[FARMLAND] = (120, 120, 80)  # replaced per parcel
    col_a[BUILDING] = col_b[BUILDING] = (150, 150, 150)  # replaced per roof
    col_a[ROAD] = jitter((96, 96, 100), 8)  # main asphalt
    col_a[_NUM_CLASSES] = jitter((118, 114, 110), 8)  # minor asphalt
    col_a[_NUM_CLASSES + 1] = jitter((156, 138, 110), 8)  # dirt
    col_a[_NUM_CLASSES + 2] = jitter((205, 205, 200), 6)  # lane marking
    for k in (ROAD, _NUM_CLASSES, _NUM_CLASSES + 1, _NUM_CLASSES + 2):
        col_b[k] = col_a[k] * 0.95
    steps = np.linspace(0.0, 1.0, 16, dtype=np.float32)[None, :, None]
    table = (col_a[:, None] + (col_b - col_a)[:, None] * steps).reshape(-1, 3)
    key = label.astype(np.int32)
    kind = lay.road_kind
    key[kind == _ASPHALT_MINOR] = _NUM_CLASSES
    key[kind == _DIRT] = _NUM_CLASSES + 1
    key[lay.marking] = _NUM_CLASSES + 2
    mix = _fbm(rng, h, w, (rng.uniform(40, 110),), (1.0,))
    key *= 16
    key += np.clip(8.0 + 8.5 * mix, 0, 15).astype(np.int32)
    img = np.take(table, key, axis=0)
    flat = img.reshape(n, 3)

    farm = np.flatnonzero(label == FARMLAND)
    if farm.size and lay.pid is not None:
        fpid = lay.pid.reshape(-1)[farm]
        flat[farm] = lay.parcel_rgb[fpid]
        rows = lay.rows.reshape(-1)[farm] * lay.parcel_freq[fpid] + lay.parcel_phase[fpid]
        stripes = lay.parcel_amp[fpid] * np.sin(rows)
    bld = label == BUILDING
    roofs = np.flatnonzero(bld)
    flat[roofs] = lay.roof.reshape(n, 3)[roofs]
    water = np.flatnonzero(label == WATER)
    if water.size:
        # Shallow, lighter water near the banks.
        soft = Image.fromarray((label == WATER).astype(np.uint8) * 255)
        small = soft.resize((max(1, w // 8), max(1, h // 8)), Image.BILINEAR)
        depth = np.asarray(small.resize((w, h), Image.BILINEAR)).reshape(-1)[water]
        depth = np.clip(depth.astype(np.float32) * (1 / 127.5) - 0.7, 0, 1)[:, None]
        shallow = jitter((78, 96, 84), 6)
        flat[water] = shallow + (flat[water] - shallow) * depth

    # Luminance texture: fine grain, mid-scale mottling, coarse patches (per-class amounts).
    amp = np.array(
        [
            [0.05, 0.06, 0.08],  # background
            [0.035, 0.04, 0.03],  # farmland
            [0.03, 0.02, 0.02],  # road
            [0.025, 0.02, 0.0],  # building
            [0.01, 0.006, 0.03],  # water
            [0.06, 0.05, 0.06],  # woodland
            [0.05, 0.09, 0.08],  # grass
        ],
        np.float32,
    )
    fine = np.frombuffer(rng.bytes(n), dtype=np.uint8).reshape(h, w).astype(np.float32)
    fine -= 127.5
    tex = np.take(amp[:, 0] / 73.9, label) * fine  # uniform bytes have std 73.9
    tex += np.take(amp[:, 1], label) * _noise(rng, h, w, 3.5)
    tex += np.take(amp[:, 2], label) * _fbm(rng, h, w, (24.0,), (1.0,))
    tex += 1.0
    tflat = tex.reshape(n)
    if farm.size and lay.pid is not None:
        tflat[farm] += stripes
    # Tree crowns: bumps lit on the sun side, dark gaps between crowns.
    wood_mask = label == WOODLAND
    wood = np.flatnonzero(wood_mask)
    if wood.size:
        crowns = _noise(rng, h, w, rng.uniform(3.5, 6.0)).reshape(n)
        step = int(round(lay.sun[1] * 2)) * w + int(round(lay.sun[0] * 2))
        here = crowns[wood]
        there = crowns[np.clip(wood - step, 0, n - 1)]
        tflat[wood] += 0.22 * here - 0.3 * (here - there) - 0.25 * np.maximum(-here - 0.6, 0)
    if lay.flat_rim is not None:
        tflat[np.flatnonzero(lay.flat_rim & bld)] += 0.12

    # Shadows: buildings and woodland edges darken the ground behind them.
    shade = lay.shadow & ~bld if lay.shadow is not None else np.zeros((h, w), bool)
    if wood.size:
        sx, sy = int(round(-lay.sun[0] * 6)), int(round(-lay.sun[1] * 6))
        shifted = np.zeros_like(wood_mask)
        ys = slice(max(0, -sy), h - max(0, sy))
        xs = slice(max(0, -sx), w - max(0, sx))
        yd = slice(max(0, sy), h - max(0, -sy))
        xd = slice(max(0, sx), w - max(0, -sx))
        shifted[ys, xs] = wood_mask[yd, xd]
        shade |= shifted & ~wood_mask
    tflat[np.flatnonzero(shade)] *= np.float32(rng.uniform(0.5, 0.65))

    # Scene illumination: slow gain drift, brightness, white balance, haze.
    tex *= 1.0 + 0.08 * _fbm(rng, h, w, (max(h, w) * 0.7,), (1.0,))
    img *= tex[..., None]
    warm, tint = rng.uniform(-0.06, 0.06), rng.uniform(-0.02, 0.02)
    wb = np.array([1 + warm, 1 + tint, 1 - warm], np.float32) * rng.uniform(0.85, 1.15)
    haze = rng.uniform(0.0, 0.16)
    img *= wb * np.float32(1 - haze)
    img += np.float32(haze) * jitter((185, 192, 205), 5)
    return img


def _nodata(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
    """Add a small no-data region in place: a black border wedge or a cloud."""
    h, w = mask.shape
    if rng.random() < 0.5:
        poly = Image.new("L", (w, h), 0)
        fa, fb = rng.uniform(0.12, 0.35, size=2)
        corner = int(rng.integers(0, 4))
        cx, cy = (
            (0, 0) if corner == 0 else (w, 0) if corner == 1 else (w, h) if corner == 2 else (0, h)
        )
        dx = fa * w * (1 if cx == 0 else -1)
        dy = fb * h * (1 if cy == 0 else -1)
        ImageDraw.Draw(poly).polygon([(cx, cy), (cx + dx, cy), (cx, cy + dy)], fill=1)
        region = np.asarray(poly) > 0
        img[region] = 0
        mask[region] = IGNORE_INDEX
    else:
        field = _fbm(rng, h, w, (max(h, w) / 6, max(h, w) / 20), (1.0, 0.4))
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        r = rng.uniform(0.08, 0.15) * max(h, w)
        bump = 1.4 - ((xs - cx) ** 2 + (ys - cy) ** 2) / (r * r)
        alpha = np.clip(bump + field - 0.2, 0, 1) ** 0.7
        white = np.float32(rng.uniform(225, 245))
        img[:] = img * (1 - alpha[..., None]) + white * alpha[..., None]
        mask[alpha > 0.5] = IGNORE_INDEX


def make_scene(
    height: int,
    width: int,
    rng: np.random.Generator | int | np.random.SeedSequence | None = None,
    *,
    nodata: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one synthetic aerial scene.

    Args:
        height: Image height in pixels (any size from 16 up; odd sizes are fine).
        width: Image width in pixels.
        rng: A numpy ``Generator``, or a seed (int or ``SeedSequence``) for a new one.
            The same seed always gives the same scene.
        nodata: Add a small no-data region (black border wedge or cloud), labelled
            `IGNORE_INDEX` in the mask.

    Returns:
        ``(image, mask)``: the RGB image ``uint8 [H, W, 3]`` and the class-index mask
        ``uint8 [H, W]`` (indices into `SYNTHETIC_CLASSES`, 255 = no data).
    """
    h, w = int(height), int(width)
    if h < 16 or w < 16:
        raise ValueError(f"scene size must be at least 16x16, got {h}x{w}")
    rng = _as_rng(rng)
    lay = _layout(rng, h, w)
    img = _render(rng, lay)
    img = _blur_float(img, float(rng.uniform(0.15, 0.45)))
    sigma = rng.uniform(1.5, 4.0)
    noise = np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8).reshape(h, w, 3)
    # Uniform bytes scaled to the wanted standard deviation (std of U[0,256) is 73.9).
    img += (noise.astype(np.float32) - 127.5) * np.float32(sigma / 73.9)
    mask = lay.label.copy()
    if nodata:
        _nodata(rng, img, mask)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8), mask


# --------------------------------------------------------------------------- datasets


def parse_size(text: str) -> tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]:
    """Parse ``"512"``, ``"480x640"`` (height x width) or a range ``"400x500-640x720"``."""
    text = text.strip().lower()

    def one(part: str) -> tuple[int, int]:
        if "x" in part:
            hh, ww = part.split("x", 1)
            return int(hh), int(ww)
        return int(part), int(part)

    if "-" in text:
        lo, hi = text.split("-", 1)
        return one(lo), one(hi)
    return one(text)


def _size_picker(size) -> Callable[[np.random.Generator], tuple[int, int]]:
    """Turn a ``size`` argument into a function ``rng -> (h, w)``."""
    if isinstance(size, str):
        size = parse_size(size)
    if isinstance(size, (int, np.integer)):
        return lambda rng: (int(size), int(size))
    if len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        return lambda rng: (int(size[0]), int(size[1]))
    if len(size) == 2 and all(len(s) == 2 for s in size):
        (h0, w0), (h1, w1) = size
        if h0 > h1 or w0 > w1:
            raise ValueError(f"size range must go from small to large, got {size}")
        return lambda rng: (int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1)))
    raise ValueError(f"size must be an int, (h, w) or ((h_min, w_min), (h_max, w_max)): {size}")


def _save_image(image: np.ndarray, path: Path, image_format: str) -> None:
    pil = Image.fromarray(image)
    if image_format == "jpg":
        pil.save(path, format="JPEG", quality=90)
    elif image_format == "png":
        pil.save(path, format="PNG")
    else:
        pil.save(path, format="TIFF")


def write_dataset(
    out_dir: str | Path,
    num_groups: int = 4,
    scenes_per_group: int = 3,
    size=(512, 512),
    seed: int = 0,
    image_format: str = "jpg",
    nodata_fraction: float = 0.1,
) -> Path:
    """Write a synthetic dataset in the Dubai layout and return its folder.

    The layout is ``out_dir/Scene N/images/scene_part_00K.<ext>`` with colour-coded RGB
    masks ``out_dir/Scene N/masks/scene_part_00K.png`` (``N``, ``K`` from 1) and
    ``out_dir/classes.yaml`` (terraseg classes file, ``encoding: rgb``). Every scene has
    its own seed derived from ``seed`` and its position, so a scene does not change when
    the number of groups or scenes changes. Files are byte-identical for the same
    arguments.

    Args:
        out_dir: Folder to write (created; existing files of the same names are replaced).
        num_groups: Number of ``Scene N`` folders.
        scenes_per_group: Image/mask pairs per folder.
        size: ``int`` (square), ``(height, width)``, a range
            ``((h_min, w_min), (h_max, w_max))`` drawn per group (like the Dubai tiles,
            whose parts share a size), or a string for `parse_size`.
        seed: Seed of the whole dataset.
        image_format: ``"jpg"`` (quality 90), ``"png"`` or ``"tif"``.
        nodata_fraction: Share of scenes with a no-data region (black border or cloud,
            mask colour ``#000000``, ``ignore: true``); at least one scene when above 0.

    Returns:
        The dataset folder.
    """
    image_format = image_format.lower().lstrip(".")
    if image_format in ("jpeg",):
        image_format = "jpg"
    if image_format in ("tiff",):
        image_format = "tif"
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if num_groups < 1 or scenes_per_group < 1:
        raise ValueError("num_groups and scenes_per_group must be at least 1")
    pick = _size_picker(size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = num_groups * scenes_per_group
    plan = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_nodata = int(round(nodata_fraction * total))
    if nodata_fraction > 0:
        n_nodata = min(total, max(1, n_nodata))
    with_nodata = set(plan.choice(total, size=n_nodata, replace=False).tolist())
    table = palette()
    for g in range(num_groups):
        h, w = pick(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, g))))
        group = out / f"Scene {g + 1}"
        (group / "images").mkdir(parents=True, exist_ok=True)
        (group / "masks").mkdir(parents=True, exist_ok=True)
        for k in range(scenes_per_group):
            index = g * scenes_per_group + k
            scene_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, index)))
            image, mask = make_scene(h, w, scene_rng, nodata=index in with_nodata)
            stem = f"scene_part_{k + 1:03d}"
            _save_image(image, group / "images" / f"{stem}.{image_format}", image_format)
            Image.fromarray(table[mask]).save(group / "masks" / f"{stem}.png", format="PNG")
    with open(out / "classes.yaml", "w", encoding="utf-8") as fh:
        yaml.safe_dump(classes_config(), fh, sort_keys=False, default_flow_style=None)
    return out
