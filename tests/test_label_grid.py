"""Labels on the image's grid: real GeoTIFFs (rasterio) whose masks are on, near or off it.

A 64x64 UTM image (10 m pixels) and an index mask written with another CRS, shifted,
at half the resolution, of another size, or jittered by less than 1/100 pixel.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.transform import from_origin

from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.label_grid import LabelGridError
from engine.data.shards.loader import read_split
from engine.data.shards.manifest import load_manifest
from engine.data.sources.classes import load_classes
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.paths import REPO_ROOT

SIZE, PIXEL = 64, 10.0
X0, Y0 = 500_000.0, 2_800_000.0
UTM = CRS.from_epsg(32640)
CLASSES = {"encoding": "index", "classes": [{"name": f"c{v}", "value": v} for v in range(4)]}


def write_tif(path: Path, array: np.ndarray, crs, transform) -> Path:
    """A GeoTIFF of ``array`` (HxW or HxWxC) with this CRS and transform."""
    array = array[..., None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=array.shape[0], width=array.shape[1],
        count=array.shape[2], dtype=array.dtype, crs=crs, transform=transform,
    ) as dataset:  # fmt: skip
        dataset.write(np.moveaxis(array, -1, 0))
    return path


def scene(root: Path, mask: np.ndarray, crs=UTM, transform=None, name: str = "a") -> Path:
    """Image ``root/img/<name>.tif`` on the UTM grid, its mask ``root/lbl/<name>.tif``."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    write_tif(root / "img" / f"{name}.tif", image, UTM, from_origin(X0, Y0, PIXEL, PIXEL))
    transform = transform or from_origin(X0, Y0, PIXEL, PIXEL)
    write_tif(root / "lbl" / f"{name}.tif", mask, crs, transform)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return root


def labels(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, shape, dtype=np.uint8)


def build(root: Path, **options) -> np.ndarray:
    """Build one 64x64 tile per image; return the first image's stored mask."""
    pairs = pair_by_glob(str(root / "img" / "*.tif"), str(root / "lbl" / "*.tif"))
    settings = dict(tile=SIZE, val=0, test=0) | options
    build_shards(pairs, load_classes(root / "classes.yaml"), root / "out", BuildOptions(**settings))
    samples = sorted(read_split(load_manifest(root / "out"), "train"), key=lambda s: s.key)
    return samples[0].mask.numpy()


def test_a_mask_on_the_same_grid_builds_as_it_is(tmp_path):
    mask = labels((SIZE, SIZE))
    assert (build(scene(tmp_path, mask)) == mask).all()


@pytest.mark.parametrize(
    "crs, transform, shape, message",
    [
        pytest.param(CRS.from_epsg(4326), from_origin(57.0, 25.3, 1e-4, 1e-4), (SIZE, SIZE),
                     "CRS EPSG:4326 vs EPSG:32640", id="another-crs"),
        pytest.param(UTM, from_origin(X0 + 30, Y0 + 15, PIXEL, PIXEL), (SIZE, SIZE),
                     r"offset \(\+3\.0, -1\.5\) pixels \(x, y\)", id="shifted-3-pixels"),
        pytest.param(UTM, from_origin(X0, Y0, 20, 20), (SIZE // 2, SIZE // 2),
                     "resolution 20 m vs 10 m; shape 32×32 vs 64×64", id="half-resolution"),
        pytest.param(UTM, from_origin(X0, Y0, PIXEL, PIXEL), (48, SIZE),
                     "shape 64×48 vs 64×64", id="another-shape"),
    ],
)  # fmt: skip
def test_a_mask_off_its_images_grid_is_named_with_what_differs(
    tmp_path, crs, transform, shape, message
):
    root = scene(tmp_path, labels(shape), crs, transform)
    with pytest.raises(LabelGridError) as caught:
        build(root)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{root / 'lbl' / 'a.tif'}: not on the grid of its image ")
    assert str(root / "img" / "a.tif") in text
    assert re.search(message, text) and "(mask vs image); pass --resample-labels" in text


def test_sub_hundredth_pixel_jitter_is_the_same_grid(tmp_path):
    mask = labels((SIZE, SIZE))
    # 0.004 px offset and a 1e-5 relative pixel size: at most 0.0047 px anywhere on the image
    jitter = from_origin(X0 + 0.04, Y0 - 0.02, PIXEL * (1 + 1e-5), PIXEL * (1 + 1e-5))
    assert (build(scene(tmp_path, mask, UTM, jitter)) == mask).all()
    # ...but 0.02 px is not
    root = scene(tmp_path / "b", mask, UTM, from_origin(X0 + 0.2, Y0, PIXEL, PIXEL))
    with pytest.raises(LabelGridError, match=r"offset \(\+0\.020, \+0\.0\) pixels"):
        build(root)


def expected_nearest(mask: np.ndarray, x0: float, y0: float, pixel: float) -> np.ndarray:
    """Each image pixel's centre looked up in the mask's grid; 255 outside its extent."""
    out = np.full((SIZE, SIZE), 255, np.uint8)
    for row in range(SIZE):
        for col in range(SIZE):
            x, y = X0 + (col + 0.5) * PIXEL, Y0 - (row + 0.5) * PIXEL
            r, c = math.floor((y0 - y) / pixel), math.floor((x - x0) / pixel)
            if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
                out[row, col] = mask[r, c]
    return out


def test_resample_labels_puts_the_mask_on_the_image_grid_nearest(tmp_path):
    half = labels((SIZE // 2, SIZE // 2))
    # 20 m pixels starting 40 m (4 image pixels) east of the image: columns 0..3 uncovered
    root = scene(tmp_path, half, UTM, from_origin(X0 + 40, Y0, 20, 20))
    notes = []
    pairs = pair_by_glob(str(root / "img" / "*.tif"), str(root / "lbl" / "*.tif"))
    options = BuildOptions(tile=SIZE, val=0, test=0, resample_labels=True)
    build_shards(pairs, load_classes(root / "classes.yaml"), root / "out", options, notes.append)
    stored = next(read_split(load_manifest(root / "out"), "train")).mask.numpy()
    assert (stored[:, :4] == 255).all()  # outside the mask's extent: ignore
    assert stored[0, 4] == half[0, 0] and stored[0, 5] == half[0, 0]
    assert stored[5, 7] == half[2, 1]  # centre (75 m, -55 m) from the mask's origin
    assert stored[63, 63] == half[31, 29]
    assert (stored == expected_nearest(half, X0 + 40, Y0, 20)).all()
    (note,) = [n for n in notes if "resampled" in n]
    assert note.startswith(f"{root / 'lbl' / 'a.tif'}: resampled onto the grid of its image")
    assert "nearest neighbour" in note and "resolution 20 m vs 10 m" in note


def test_resample_labels_reprojects_a_mask_in_another_crs(tmp_path):
    from rasterio.warp import transform_bounds

    # the image's extent in EPSG:4326, covered by a 4326 mask of 128x128 pixels
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", X0, Y0 - 640, X0 + 640, Y0)
    step = max(east - west, north - south) / 128
    mask = labels((128, 128))
    transform = from_origin(west, north, step, step)
    stored = build(scene(tmp_path, mask, CRS.from_epsg(4326), transform), resample_labels=True)
    # every image pixel's centre, moved to EPSG:4326, falls in the mask pixel stored
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    xs, ys = X0 + (cols.ravel() + 0.5) * PIXEL, Y0 - (rows.ravel() + 0.5) * PIXEL
    lon, lat = rasterio.warp.transform(UTM, "EPSG:4326", xs, ys)
    r = np.floor((north - np.array(lat)) / step).astype(int)
    c = np.floor((np.array(lon) - west) / step).astype(int)
    agree = stored.ravel() == mask[r, c]
    assert agree.mean() > 0.99  # GDAL's approximate transformer may tip a pixel at an edge


def test_a_png_mask_of_a_geotiff_keeps_the_size_rule(tmp_path):
    from PIL import Image

    mask = labels((SIZE, SIZE))
    root = scene(tmp_path, mask)
    (root / "lbl" / "a.tif").unlink()
    Image.fromarray(mask).save(root / "lbl" / "a.png")
    pairs = pair_by_glob(str(root / "img" / "*.tif"), str(root / "lbl" / "*.png"))
    build_shards(pairs, load_classes(root / "classes.yaml"), root / "out",
                 BuildOptions(tile=SIZE, val=0, test=0))  # fmt: skip
    assert (next(read_split(load_manifest(root / "out"), "train")).mask.numpy() == mask).all()
    Image.fromarray(mask[:40]).save(root / "lbl" / "a.png")
    with pytest.raises(Exception, match=r"a\.png: mask is 64x40 \(WxH\) but its image"):
        build_shards(pairs, load_classes(root / "classes.yaml"), root / "out2",
                     BuildOptions(tile=SIZE, val=0, test=0))  # fmt: skip


@pytest.mark.slow
def test_build_script_refuses_or_resamples_in_worker_processes(tmp_path):
    """``--workers 2`` (the check runs in the workers) and ``--resample-labels`` on the CLI."""
    mask = labels((SIZE // 2, SIZE // 2))
    scene(tmp_path, labels((SIZE, SIZE)), name="a")
    scene(tmp_path, mask, UTM, from_origin(X0 + 30, Y0 + 15, 20, 20), name="b")
    command = [
        sys.executable, str(REPO_ROOT / "launch" / "build_shards.py"),
        "--images", str(tmp_path / "img" / "*.tif"), "--masks", str(tmp_path / "lbl" / "*.tif"),
        "--classes", str(tmp_path / "classes.yaml"), "--tile", str(SIZE), "--val", "0",
        "--test", "0", "--workers", "2",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([*command, "--out", str(tmp_path / "o1")], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = "error: " + done.stderr.split("error: ", 1)[1].splitlines()[0]  # one line
    assert last.startswith(f"error: {tmp_path / 'lbl' / 'b.tif'}: not on the grid of its image")
    assert "offset (+3.0, -1.5) pixels (x, y); resolution 20 m vs 10 m" in last
    assert not (tmp_path / "o1").exists()
    done = subprocess.run([*command, "--out", str(tmp_path / "o2"), "--resample-labels"],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "resampled onto the grid" in line]
    assert len(notes) == 1 and notes[0].startswith(f"warning: {tmp_path / 'lbl' / 'b.tif'}: ")
    samples = {s.key: s.mask.numpy() for s in read_split(load_manifest(tmp_path / "o2"), "train")}
    stored = samples["b/r00000_c00000"]
    assert (stored == expected_nearest(mask, X0 + 30, Y0 + 15, 20)).all()
