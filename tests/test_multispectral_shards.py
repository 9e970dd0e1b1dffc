"""Acceptance on the real multispectral chips (issue #14): N bands at native precision.

Sentinel-2 (13 int16 bands, label -1 = no data), Sentinel-1 (2 float32 bands in dB, NaN
nodata) and Landsat-8 (uint16, one file per band) become shards whose pixels equal the
source bit for bit and whose per-band statistics equal a float64 reference. The data lives
in ``../shared/datasets/multispectral`` (PROVENANCE.md); a missing dataset fails.
"""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from engine.data.classes import load_classes
from engine.data.loader import eval_batches, read_split, train_batches
from engine.data.manifest import load_manifest
from engine.data.pairing import pair_by_glob
from engine.data.paths import REPO_ROOT, multispectral_dataset_dir
from engine.data.shard_builder import BuildOptions, build_shards

S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
FLOODS_CLASSES = {
    "encoding": "index",
    "classes": [
        {"name": "nodata", "value": -1, "ignore": True},
        {"name": "not-water", "value": 0},
        {"name": "water", "value": 1},
    ],
}
CLOUD_CLASSES = {
    "encoding": "index",
    "classes": [{"name": "clear", "value": 0}, {"name": "cloud", "value": 255}],
}


@pytest.fixture(scope="module")
def data() -> Path:
    path = multispectral_dataset_dir()
    if not (path / "sen1floods11" / "S2").is_dir():
        pytest.fail(f"multispectral samples not found at {path}; set TERRASEG_MULTISPECTRAL_DIR")
    return path


def _floods(data: Path, sensor: str, out: Path) -> Path:
    """Build the Sen1Floods11 chip of ``sensor`` (S1 or S2) with the launch script."""
    classes = out.parent / f"{out.name}-classes.yaml"
    classes.write_text(yaml.safe_dump(FLOODS_CLASSES))
    root = data / "sen1floods11"
    command = [
        sys.executable, str(REPO_ROOT / "launch" / "build_shards.py"),
        "--images", str(root / sensor / "*.tif"), "--masks", str(root / "Labels" / "*.tif"),
        "--image-key", f"(.*)_{sensor}Hand", "--mask-key", "(.*)_LabelHand",
        "--classes", str(classes), "--split-by", "blocks:1", "--tile", "128",
        "--samples-per-shard", "5", "--out", str(out),
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def s2_shards(data, tmp_path_factory) -> Path:
    return _floods(data, "S2", tmp_path_factory.mktemp("s2") / "shards")


def _source(path: Path) -> np.ndarray:
    with warnings.catch_warnings():  # the Landsat chip is not georeferenced
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return np.moveaxis(dataset.read(), 0, -1)


def _window(sample) -> tuple[slice, slice]:
    w = sample.meta["window"]
    return slice(w["row"], w["row"] + w["height"]), slice(w["col"], w["col"] + w["width"])


def _reference(source: np.ndarray, label: np.ndarray, train_windows: list) -> np.ndarray:
    """Valid train pixels ``[N, C]`` float64: label not -1, no band NaN or 0 (S2 nodata)."""
    valid = (label != -1) & np.isfinite(source.astype(np.float64)).all(-1)
    if source.dtype.kind == "i":
        valid &= ~(source == 0).any(-1)
    chosen = np.zeros(label.shape, bool)
    for rows, cols in train_windows:
        chosen[rows, cols] = True
    return source[chosen & valid].astype(np.float64)


def test_sentinel2_shards_are_the_13_int16_bands_bit_for_bit(s2_shards, data):
    manifest = load_manifest(s2_shards)
    assert manifest.data["version"] == 3 and "mean" not in manifest.data
    norm = manifest.normalization
    assert norm.names == S2_BANDS and manifest.in_channels == 13
    assert {b.dtype for b in norm.bands} == {"int16"} and {b.nodata for b in norm.bands} == {0.0}
    assert norm.rgb_bands == (3, 2, 1)  # B4, B3, B2
    assert {s for s in ("train", "val", "test") if manifest.has_split(s)} == {
        "train",
        "val",
        "test",
    }
    root = data / "sen1floods11"
    source = _source(root / "S2" / "Spain_7370579_S2Hand.tif")
    label = _source(root / "Labels" / "Spain_7370579_LabelHand.tif")[..., 0]
    seen, train_windows = 0, []
    for split in ("train", "val", "test"):
        for sample in read_split(manifest, split):
            rows, cols = _window(sample)
            image = sample.image.permute(1, 2, 0).numpy()
            assert image.dtype == np.int16 and image.shape == (128, 128, 13)
            assert np.array_equal(image, source[rows, cols])  # bit for bit
            expected = np.where(label[rows, cols] == -1, 255, label[rows, cols]).astype(np.uint8)
            assert np.array_equal(sample.mask.numpy(), expected)  # -1 → ignore
            seen += int((sample.mask == 255).sum())
            if split == "train":
                train_windows.append((rows, cols))
    assert seen == 99 == sum(manifest.data["ignore_pixels"].values())
    pixels = _reference(source, label, train_windows)
    np.testing.assert_allclose([b.mean for b in norm.bands], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose([b.std for b in norm.bands], pixels.std(0), rtol=1e-9)
    low, high = np.percentile(pixels, [2, 98], axis=0, method="inverted_cdf")
    assert [b.display for b in norm.bands] == list(zip(low.tolist(), high.tolist()))


def test_sentinel2_batches_are_int16_on_both_read_paths(s2_shards):
    manifest = load_manifest(s2_shards)
    batches = {
        direct: list(
            train_batches(
                manifest,
                4,
                2,
                seed=1,
                rank=0,
                epoch=0,
                num_workers=0,
                shuffle_buffer=2,
                pin_memory=False,
                direct=direct,
            )  # fmt: skip
        )
        for direct in (True, False)
    }
    for pair in batches.values():
        for batch in pair:
            assert batch.images.dtype == torch.int16 and batch.images.shape == (4, 13, 128, 128)
            assert batch.masks.dtype == torch.uint8
    for a, b in zip(batches[True], batches[False]):
        assert a.keys == b.keys and torch.equal(a.images, b.images)
    normalised = manifest.normalization(batches[True][0].images)
    assert normalised.dtype == torch.float32 and torch.isfinite(normalised).all()
    evaluated = list(eval_batches(manifest, "val", 3, world_size=2, rank=1, num_workers=0,
                                  pin_memory=False))  # fmt: skip
    assert all(b.images.dtype == torch.int16 and b.images.shape[1] == 13 for b in evaluated)


def test_sentinel1_float32_chip_builds_with_nan_nodata(data, tmp_path):
    manifest = load_manifest(_floods(data, "S1", tmp_path / "s1"))
    norm = manifest.normalization
    assert norm.names == ["VV", "VH"] and norm.rgb_bands is None
    assert all(
        b.dtype == "float32" and b.nodata is not None and np.isnan(b.nodata) for b in norm.bands
    )
    assert manifest.data["bands"][0]["nodata"] == "nan"
    root = data / "sen1floods11"
    source = _source(root / "S1" / "Spain_7370579_S1Hand.tif")
    label = _source(root / "Labels" / "Spain_7370579_LabelHand.tif")[..., 0]
    train_windows = []
    for sample in read_split(manifest, "train"):
        rows, cols = _window(sample)
        image = sample.image.permute(1, 2, 0).numpy()
        assert image.dtype == np.float32
        assert np.array_equal(image, source[rows, cols], equal_nan=True)
        train_windows.append((rows, cols))
    pixels = _reference(source, label, train_windows)
    assert (pixels < 0).any()  # dB: negative values are kept as they are
    np.testing.assert_allclose([b.mean for b in norm.bands], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose([b.std for b in norm.bands], pixels.std(0), rtol=1e-9)
    # float32 display: percentiles of every ceil(N / 65536)-th valid train pixel (documented).
    sample = pixels[:: -(-len(pixels) // 65536)].astype(np.float32)
    assert len(sample) < len(pixels)
    low, high = np.percentile(sample, [2, 98], axis=0, method="inverted_cdf")
    assert [b.display for b in norm.bands] == list(zip(low.tolist(), high.tolist()))
    exact = np.percentile(pixels, [2, 98], axis=0)
    np.testing.assert_allclose([b.display for b in norm.bands], exact.T, atol=0.2)


def test_landsat_band_files_stack_in_the_given_order_uint16_exact(data, tmp_path):
    root = data / "landsat8-38cloud"
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(CLOUD_CLASSES))
    pairs = pair_by_glob(
        str(root / "red_*.TIF"), str(root / "gt_*.TIF"), image_key="red_(.*)", mask_key="gt_(.*)"
    )
    assert len(pairs) == 1
    options = BuildOptions(
        tile=128,
        split_by="blocks:1",
        band_files=("red", "green", "blue", "nir"),
        samples_per_shard=4,
    )
    build_shards(pairs, load_classes(tmp_path / "classes.yaml"), tmp_path / "out", options)
    manifest = load_manifest(tmp_path / "out")
    norm = manifest.normalization
    assert norm.names == ["red", "green", "blue", "nir"] and norm.rgb_bands == (0, 1, 2)
    assert {b.dtype for b in norm.bands} == {"uint16"} and {b.nodata for b in norm.bands} == {None}
    name = pairs[0].image.name.removeprefix("red_")
    stacked = np.concatenate([_source(root / f"{band}_{name}") for band in norm.names], -1)
    cloud = _source(root / f"gt_{name}")[..., 0]
    assert stacked.max() > 255  # 16-bit values, not rescaled
    samples = [s for split in ("train", "val", "test") for s in read_split(manifest, split)]
    assert len(samples) == 9  # 384 / 128 = 3 x 3 tiles
    for sample in samples:
        rows, cols = _window(sample)
        assert sample.image.dtype == torch.uint16
        assert np.array_equal(sample.image.permute(1, 2, 0).numpy(), stacked[rows, cols])
        assert np.array_equal(sample.mask.numpy(), (cloud[rows, cols] == 255).astype(np.uint8))
    counts = [sum(manifest.data["class_pixels"][s][i] for s in manifest.data["class_pixels"])
              for i in (0, 1)]  # fmt: skip
    assert counts == [102_123, 45_333]  # PROVENANCE.md
