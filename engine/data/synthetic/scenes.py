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

from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from engine.data.synthetic.classes import classes_config, palette
from engine.data.synthetic.layout import make_layout
from engine.data.synthetic.paint import add_nodata, paint
from engine.data.synthetic.primitives import blur_float

IMAGE_FORMATS = ("jpg", "png", "tif")


def _as_rng(rng: np.random.Generator | int | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


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
    lay = make_layout(rng, h, w)
    img = paint(rng, lay)
    img = blur_float(img, float(rng.uniform(0.15, 0.45)))
    sigma = rng.uniform(1.5, 4.0)
    noise = np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8).reshape(h, w, 3)
    # Uniform bytes scaled to the wanted standard deviation (std of U[0,256) is 73.9).
    img += (noise.astype(np.float32) - 127.5) * np.float32(sigma / 73.9)
    mask = lay.label.copy()
    if nodata:
        add_nodata(rng, img, mask)
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
