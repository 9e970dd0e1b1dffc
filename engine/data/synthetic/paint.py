"""Painting a synthetic layout: per-region colours, texture, illumination, haze, noise."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from engine.data.synthetic.classes import (
    ASPHALT_MINOR,
    BACKGROUND,
    BUILDING,
    DIRT,
    FARMLAND,
    GRASS,
    IGNORE_INDEX,
    NUM_CLASSES,
    ROAD,
    WATER,
    WOODLAND,
)
from engine.data.synthetic.layout import Layout
from engine.data.synthetic.primitives import fbm, value_noise

#: Luminance texture per class: fine grain, mid-scale mottling, coarse patches.
TEXTURE_AMOUNTS = np.array(
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


def _jitter(rng: np.random.Generator, rgb, spread: float) -> np.ndarray:
    """``rgb`` moved by a normal draw of ``spread`` per channel (float32)."""
    return np.asarray(rgb, np.float32) + rng.normal(0, spread, size=3).astype(np.float32)


def _shade_table(rng: np.random.Generator) -> np.ndarray:
    """Two shades per class (and per road kind and lane marking), in 16 steps between them.

    Returns:
        A ``[(NUM_CLASSES + 3) * 16, 3]`` float32 table; row ``16 * k + step``.
    """
    soil = rng.uniform(0.0, 1.0)
    col_a = np.zeros((NUM_CLASSES + 3, 3), np.float32)
    col_b = np.zeros((NUM_CLASSES + 3, 3), np.float32)
    col_a[BACKGROUND] = _jitter(rng, (140 + 30 * soil, 124 + 22 * soil, 100 + 14 * soil), 6)
    col_b[BACKGROUND] = _jitter(rng, (118, 104, 84), 6)
    col_a[GRASS] = _jitter(rng, (96, 122, 64), 7)
    col_b[GRASS] = _jitter(rng, (128, 136, 84), 7)
    col_a[WOODLAND] = _jitter(rng, (48, 72, 40), 5)
    col_b[WOODLAND] = col_a[WOODLAND] * 0.88
    col_a[WATER] = _jitter(rng, (34, 52, 62), 5)
    col_b[WATER] = col_a[WATER] * 1.08
    col_a[FARMLAND] = col_b[FARMLAND] = (120, 120, 80)  # replaced per parcel
    col_a[BUILDING] = col_b[BUILDING] = (150, 150, 150)  # replaced per roof
    col_a[ROAD] = _jitter(rng, (96, 96, 100), 8)  # main asphalt
    col_a[NUM_CLASSES] = _jitter(rng, (118, 114, 110), 8)  # minor asphalt
    col_a[NUM_CLASSES + 1] = _jitter(rng, (156, 138, 110), 8)  # dirt
    col_a[NUM_CLASSES + 2] = _jitter(rng, (205, 205, 200), 6)  # lane marking
    for k in (ROAD, NUM_CLASSES, NUM_CLASSES + 1, NUM_CLASSES + 2):
        col_b[k] = col_a[k] * 0.95
    steps = np.linspace(0.0, 1.0, 16, dtype=np.float32)[None, :, None]
    return (col_a[:, None] + (col_b - col_a)[:, None] * steps).reshape(-1, 3)


def _base_colours(rng: np.random.Generator, lay: Layout, table: np.ndarray) -> np.ndarray:
    """Each pixel's class (or road kind) shade, mixed by a smooth field: ``HxWx3`` float32."""
    key = lay.label.astype(np.int32)
    kind = lay.road_kind
    key[kind == ASPHALT_MINOR] = NUM_CLASSES
    key[kind == DIRT] = NUM_CLASSES + 1
    key[lay.marking] = NUM_CLASSES + 2
    mix = fbm(rng, lay.h, lay.w, (rng.uniform(40, 110),), (1.0,))
    key *= 16
    key += np.clip(8.0 + 8.5 * mix, 0, 15).astype(np.int32)
    return np.take(table, key, axis=0)


def _region_colours(rng: np.random.Generator, lay: Layout, flat: np.ndarray):
    """Colour parcels, roofs and water (shallow near the banks) in ``flat`` (``[H*W, 3]``).

    Returns:
        ``(farm, stripes)``: flat indices of farmland pixels and their crop-row brightness
        (``stripes`` is None without parcels).
    """
    h, w, label = lay.h, lay.w, lay.label
    n = h * w
    stripes = None
    farm = np.flatnonzero(label == FARMLAND)
    parcels = lay.parcels
    if farm.size and parcels is not None:
        fpid = parcels.pid.reshape(-1)[farm]
        flat[farm] = parcels.rgb[fpid]
        rows = parcels.rows.reshape(-1)[farm] * parcels.freq[fpid] + parcels.phase[fpid]
        stripes = parcels.amp[fpid] * np.sin(rows)
    roofs = np.flatnonzero(label == BUILDING)
    flat[roofs] = lay.roof.reshape(n, 3)[roofs]
    water = np.flatnonzero(label == WATER)
    if water.size:
        soft = Image.fromarray((label == WATER).astype(np.uint8) * 255)
        small = soft.resize((max(1, w // 8), max(1, h // 8)), Image.Resampling.BILINEAR)
        depth = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR)).reshape(-1)[water]
        depth = np.clip(depth.astype(np.float32) * (1 / 127.5) - 0.7, 0, 1)[:, None]
        shallow = _jitter(rng, (78, 96, 84), 6)
        flat[water] = shallow + (flat[water] - shallow) * depth
    return farm, stripes


def _texture(rng: np.random.Generator, lay: Layout) -> np.ndarray:
    """Per-class luminance texture around 1: grain, mottling and patches (``HxW`` float32)."""
    h, w, label = lay.h, lay.w, lay.label
    fine = np.frombuffer(rng.bytes(h * w), dtype=np.uint8).reshape(h, w).astype(np.float32)
    fine -= 127.5
    tex = np.take(TEXTURE_AMOUNTS[:, 0] / 73.9, label) * fine  # uniform bytes have std 73.9
    tex += np.take(TEXTURE_AMOUNTS[:, 1], label) * value_noise(rng, h, w, 3.5)
    tex += np.take(TEXTURE_AMOUNTS[:, 2], label) * fbm(rng, h, w, (24.0,), (1.0,))
    tex += 1.0
    return tex


def _tree_crowns(rng: np.random.Generator, lay: Layout, tflat: np.ndarray) -> None:
    """Tree crowns in the flat texture: bumps lit on the sun side, dark gaps between crowns."""
    h, w = lay.h, lay.w
    n = h * w
    wood = np.flatnonzero(lay.label == WOODLAND)
    if wood.size:
        crowns = value_noise(rng, h, w, rng.uniform(3.5, 6.0)).reshape(n)
        step = int(round(lay.sun[1] * 2)) * w + int(round(lay.sun[0] * 2))
        here = crowns[wood]
        there = crowns[np.clip(wood - step, 0, n - 1)]
        tflat[wood] += 0.22 * here - 0.3 * (here - there) - 0.25 * np.maximum(-here - 0.6, 0)


def _shadows(rng: np.random.Generator, lay: Layout, tflat: np.ndarray) -> None:
    """Buildings and woodland edges darken the ground behind them (in the flat texture)."""
    h, w = lay.h, lay.w
    bld = lay.label == BUILDING
    wood_mask = lay.label == WOODLAND
    shade = lay.shadow & ~bld if lay.shadow is not None else np.zeros((h, w), bool)
    if wood_mask.any():
        sx, sy = int(round(-lay.sun[0] * 6)), int(round(-lay.sun[1] * 6))
        shifted = np.zeros_like(wood_mask)
        ys = slice(max(0, -sy), h - max(0, sy))
        xs = slice(max(0, -sx), w - max(0, sx))
        yd = slice(max(0, sy), h - max(0, -sy))
        xd = slice(max(0, sx), w - max(0, -sx))
        shifted[ys, xs] = wood_mask[yd, xd]
        shade |= shifted & ~wood_mask
    tflat[np.flatnonzero(shade)] *= np.float32(rng.uniform(0.5, 0.65))


def _illuminate(rng: np.random.Generator, img: np.ndarray, tex: np.ndarray) -> None:
    """Apply the texture and the scene's light in place: gain drift, white balance, haze."""
    h, w = tex.shape
    tex *= 1.0 + 0.08 * fbm(rng, h, w, (max(h, w) * 0.7,), (1.0,))
    img *= tex[..., None]
    warm, tint = rng.uniform(-0.06, 0.06), rng.uniform(-0.02, 0.02)
    wb = np.array([1 + warm, 1 + tint, 1 - warm], np.float32) * rng.uniform(0.85, 1.15)
    haze = rng.uniform(0.0, 0.16)
    img *= wb * np.float32(1 - haze)
    img += np.float32(haze) * _jitter(rng, (185, 192, 205), 5)


def paint(rng: np.random.Generator, lay: Layout) -> np.ndarray:
    """Colour a layout into a float32 ``HxWx3`` image on the 0–255 scale."""
    n = lay.h * lay.w
    img = _base_colours(rng, lay, _shade_table(rng))
    farm, stripes = _region_colours(rng, lay, img.reshape(n, 3))
    tex = _texture(rng, lay)
    tflat = tex.reshape(n)
    if stripes is not None:
        tflat[farm] += stripes
    _tree_crowns(rng, lay, tflat)
    if lay.flat_rim is not None:
        tflat[np.flatnonzero(lay.flat_rim & (lay.label == BUILDING))] += 0.12
    _shadows(rng, lay, tflat)
    _illuminate(rng, img, tex)
    return img


def add_nodata(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> None:
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
        field = fbm(rng, h, w, (max(h, w) / 6, max(h, w) / 20), (1.0, 0.4))
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        r = rng.uniform(0.08, 0.15) * max(h, w)
        bump = 1.4 - ((xs - cx) ** 2 + (ys - cy) ** 2) / (r * r)
        alpha = np.clip(bump + field - 0.2, 0, 1) ** 0.7
        white = np.float32(rng.uniform(225, 245))
        img[:] = img * (1 - alpha[..., None]) + white * alpha[..., None]
        mask[alpha > 0.5] = IGNORE_INDEX
