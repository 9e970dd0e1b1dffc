"""Acceptance on the real multispectral chips (issue #14): N bands at native precision.

Sentinel-2 (13 int16 bands, label -1 = no data), Sentinel-1 (2 float32 bands in dB, NaN
nodata) and Landsat-8 (uint16, one file per band) become shards whose pixels equal the
source bit for bit and whose per-band statistics equal a float64 reference. The data lives
in ``../shared/datasets/multispectral`` (PROVENANCE.md); a missing dataset fails.
"""

import io
import os
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.output import BuildError
from engine.data.build.statistics import BandAccumulator, tile_sums
from engine.data.shards.loader import eval_batches, read_split, train_batches
from engine.data.shards.manifest import load_manifest
from engine.data.shards.store import ShardReadError
from engine.data.sources.classes import ClassesError, load_classes
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.paths import REPO_ROOT, multispectral_dataset_dir

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
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
    # float32 display: percentiles of every ceil(N / 16384)-th of the N valid train pixels
    # of each tile (documented); 128² tiles: every pixel, so the exact percentiles.
    tiles = [_reference(source, label, [window]) for window in train_windows]
    sample = np.concatenate([t[:: -(-len(t) // 16384)] for t in tiles]).astype(np.float32)
    low, high = np.percentile(sample, [2, 98], axis=0, method="inverted_cdf")
    assert [b.display for b in norm.bands] == list(zip(low.tolist(), high.tolist()))


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


# Generated rasters: nodata, band selection, codecs, signed mask values, member checks.


def _write_tif(path: Path, array_hwc: np.ndarray, **profile) -> None:
    height, width, count = array_hwc.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", height=height, width=width, count=count,
            dtype=array_hwc.dtype, **profile,
        ) as dataset:  # fmt: skip
            dataset.write(np.moveaxis(array_hwc, -1, 0))


def _generated(tmp_path: Path, dtype=np.uint16, nodata=None, bands=4, mask_values=(0, 1)):
    """One 40x40 image of ``bands`` bands and an index mask, and its classes file."""
    rng = np.random.default_rng(0)
    image = rng.integers(1, 5000, (40, 40, bands)).astype(dtype)
    image[0, :5] = 0  # a row start of zeros in every band (nodata when nodata = 0)
    image[10, 10, 1] = 7  # one band of one pixel: 7
    names = ("nir", "red", "green", "blue", "swir")[:bands]
    profile = {"nodata": nodata} if nodata is not None else {}
    _write_tif(tmp_path / "img" / "a.tif", image, **profile)
    mask = rng.choice(np.array(mask_values, np.int16), (40, 40))
    _write_tif(tmp_path / "lbl" / "a.tif", mask[..., None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "img" / "a.tif", "r+") as dataset:
            for index, name in enumerate(names, 1):
                dataset.set_band_description(index, name)
    listed = [{"name": f"c{v}", "value": int(v)} for v in mask_values]
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump({"encoding": "index", "classes": listed}))
    return image, mask


def _build(tmp_path: Path, out: str = "out", **options) -> dict:
    pairs = pair_by_glob(str(tmp_path / "img" / "*.tif"), str(tmp_path / "lbl" / "*.tif"))
    settings = dict(tile=32, val=0, test=0) | options
    return build_shards(
        pairs, load_classes(tmp_path / "classes.yaml"), tmp_path / out, BuildOptions(**settings)
    )


def _train_pixels(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    manifest = load_manifest(folder)
    samples = sorted(read_split(manifest, "train"), key=lambda s: s.key)
    return (
        np.stack([s.image.permute(1, 2, 0).numpy() for s in samples]),
        np.stack([s.mask.numpy() for s in samples]),
    )


def test_nodata_pixels_become_ignore_and_leave_the_statistics(tmp_path):
    image, _ = _generated(tmp_path, nodata=0)
    manifest = _build(tmp_path)
    assert [b["nodata"] for b in manifest["bands"]] == [0.0] * 4
    assert manifest["ignore_pixels"]["train"] == 5  # the 5 pixels that are 0 in every band
    images, masks = _train_pixels(tmp_path / "out")  # tile r0 c0 first
    assert (masks[0, 0, :5] == 255).all() and (images[0, 0, :5] == 0).all()
    valid = ~(image == 0).any(-1)
    expected = image[valid].astype(np.float64)
    np.testing.assert_allclose([b["mean"] for b in manifest["bands"]], expected.mean(0), rtol=1e-12)
    np.testing.assert_allclose([b["std"] for b in manifest["bands"]], expected.std(0), rtol=1e-12)
    # --nodata overrides the raster's: pixels with a band equal to 7 are ignored, 0 is valid.
    manifest = _build(tmp_path, "out7", nodata=7.0)
    sevens = (image == 7).any(-1)
    assert manifest["bands"][0]["nodata"] == 7.0
    assert manifest["ignore_pixels"]["train"] == int(sevens.sum()) >= 1
    images, masks = _train_pixels(tmp_path / "out7")
    assert masks[0, 10, 10] == 255 and images[0, 10, 10, 1] == 7  # stored as it is
    expected = image[~sevens].astype(np.float64)
    np.testing.assert_allclose([b["mean"] for b in manifest["bands"]], expected.mean(0), rtol=1e-12)


def test_bands_by_name_or_index_and_rgb_bands(tmp_path):
    image, _ = _generated(tmp_path)
    manifest = _build(tmp_path, bands=("blue", 2, "GREEN"))
    assert [b["name"] for b in manifest["bands"]] == ["blue", "red", "green"]
    assert manifest["rgb_bands"] == [1, 2, 0]  # named red, green, blue
    images, masks = _train_pixels(tmp_path / "out")
    assert images.dtype == np.uint16 and images.shape[-1] == 3
    assert np.array_equal(images[0, :32, :32], image[:32, :32][..., [3, 1, 2]])
    assert _build(tmp_path, "none", rgb_bands="none")["rgb_bands"] is None
    assert _build(tmp_path, "chosen", rgb_bands=(4, 1, 2))["rgb_bands"] == [3, 0, 1]
    with pytest.raises(BuildError, match=r"a\.tif: no band named 'B9' \(available: 1:nir, 2:red"):
        _build(tmp_path, "bad", bands=("B9",))
    with pytest.raises(BuildError, match=r"a\.tif: no band 5 \(bands are 1-based; available"):
        _build(tmp_path, "bad", bands=(5,))
    assert not (tmp_path / "bad").exists()


def test_picture_codecs_refuse_other_than_3_band_uint8_naming_the_image(tmp_path):
    _generated(tmp_path)
    with pytest.raises(BuildError, match=r"img/a\.tif: 4-band uint16 image; .*use --image-c"):
        _build(tmp_path, image_codec="png")
    assert not list(tmp_path.rglob("*.tar"))


def test_signed_mask_values_can_be_classes_or_ignored(tmp_path):
    _, mask = _generated(tmp_path, mask_values=(-1, 0, 300))
    manifest = _build(tmp_path)  # -1 is a class here (index 0), not transparency
    assert [c["value"] for c in manifest["classes"]] == [-1, 0, 300]
    assert manifest["class_pixels"]["train"] == [int((mask == v).sum()) for v in (-1, 0, 300)]
    classes = yaml.safe_load((tmp_path / "classes.yaml").read_text())
    classes["classes"][0]["ignore"] = True
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    manifest = _build(tmp_path, "ignored")
    assert manifest["ignore_value"] == -1
    assert manifest["ignore_pixels"]["train"] == int((mask == -1).sum())
    classes["classes"][0]["value"] = -40000
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    with pytest.raises(ClassesError, match=r"classes\[0\]: index value -40000 is outside -32768"):
        load_classes(tmp_path / "classes.yaml")


def test_members_of_another_band_count_or_type_name_the_shard_and_sample(tmp_path):
    _generated(tmp_path, dtype=np.int16)
    _build(tmp_path, samples_per_shard=2)
    manifest = load_manifest(tmp_path / "out")
    shard = manifest.split("train").shards[0]
    for change, message in (
        (lambda a: a[..., :3], "image has 3 bands, but the manifest lists 4"),
        (lambda a: a.astype(np.uint16), "image is uint16, but the manifest's bands are int16"),
    ):
        whole = shard.read_bytes()
        _rewrite_images(shard, change)
        pattern = rf"train-000000\.tar: sample a/r000\d\d_c000\d\d: {message}"
        for direct in (True, False):
            with pytest.raises(ShardReadError, match=pattern):
                list(eval_batches(manifest, "train", 2, num_workers=0, pin_memory=False,
                                  direct=direct))  # fmt: skip
        shard.write_bytes(whole)


def _rewrite_images(shard: Path, change) -> None:
    """Rewrite a shard with each ``image.npy`` array passed through ``change``."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            if member.name.endswith("image.npy"):
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(change(np.load(io.BytesIO(data)))))
                data = buffer.getvalue()
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_alpha_band_is_the_valid_mask_not_a_band(tmp_path):
    from rasterio.enums import ColorInterp

    rgba = np.random.default_rng(1).integers(1, 255, (40, 40, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[20:, :4, 3] = 0  # 80 transparent pixels
    _write_tif(tmp_path / "img" / "a.tif", rgba, photometric="RGB")
    with rasterio.open(tmp_path / "img" / "a.tif", "r+") as dataset:
        dataset.colorinterp = [
            ColorInterp.red,
            ColorInterp.green,
            ColorInterp.blue,
            ColorInterp.alpha,
        ]
    _write_tif(tmp_path / "lbl" / "a.tif", np.zeros((40, 40, 1), np.uint8))
    classes = {"encoding": "index", "classes": [{"name": "all", "value": 0}]}
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    manifest = _build(tmp_path, image_codec="png")  # 3-band uint8 after the alpha: a picture
    assert [b["name"] for b in manifest["bands"]] == ["red", "green", "blue"]
    assert manifest["rgb_bands"] == [0, 1, 2] and manifest["ignore_pixels"]["train"] == 80
    images, masks = _train_pixels(tmp_path / "out")
    # Tiles r0 c0, r0 c8, r8 c0, r8 c8: the edge tiles end at the image's edge.
    assert images.shape[-1] == 3
    assert (masks[0, 20:32, :4] == 255).all() and (masks[2, 12:, :4] == 255).all()
    assert (masks[2, :12] == 0).all() and (masks[2, 12:, 4:] == 0).all()
    assert (masks[0, :20] == 0).all() and (masks[0, 20:32, 4:] == 0).all()
    expected = rgba[rgba[..., 3] == 255][:, :3].astype(np.float64)
    np.testing.assert_allclose([b["mean"] for b in manifest["bands"]], expected.mean(0), rtol=1e-12)


def test_band_statistics_merge_tiles_exactly_and_sample_floats_as_documented():
    rng = np.random.default_rng(3)
    tiles = [rng.normal(-12.0, 4.0, (n, 2)).astype(np.float32) for n in (40_000, 9, 20_000)]
    merged = BandAccumulator(2, "float32")
    for tile in tiles:
        merged.add(tile_sums(tile))
    total = BandAccumulator(2, "float32")
    total.add(merged.sums())  # an image's sums, as the build adds them
    (vv, vh) = total.finish(["VV", "VH"], None)
    everything = np.concatenate(tiles).astype(np.float64)
    np.testing.assert_allclose([vv.mean, vh.mean], everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose([vv.std, vh.std], everything.std(0), rtol=1e-12)
    sample = np.concatenate([tiles[0][::3], tiles[1], tiles[2][::2]])  # ceil(N / 16384)
    low, high = np.percentile(sample, [2, 98], axis=0, method="inverted_cdf")
    assert [vv.display, vh.display] == list(zip(low.tolist(), high.tolist()))
    signed = rng.integers(-32768, 32768, (5000, 1)).astype(np.int16)
    exact = BandAccumulator(1, "int16")
    exact.add(tile_sums(signed[:1000]))
    exact.add(tile_sums(signed[1000:]))
    (band,) = exact.finish(["b"], -32768.0)
    values = [int(v) for v in signed[:, 0]]
    mean = sum(values) / len(values)
    assert band.mean == mean and band.nodata == -32768.0
    assert band.std == pytest.approx(np.std(np.array(values, np.float64)), rel=1e-13)
    low, high = np.percentile(signed[:, 0], [2, 98], method="inverted_cdf")
    assert band.display == (float(low), float(high))
    with pytest.raises(BuildError, match="the train split is empty"):
        BandAccumulator(1, "uint16").finish(["b"], None)


def test_images_with_different_nodata_build_and_say_so(tmp_path):
    image, mask = _generated(tmp_path, nodata=0)
    _write_tif(tmp_path / "img" / "b.tif", image, nodata=7)
    _write_tif(tmp_path / "lbl" / "b.tif", mask[..., None])
    said = []  # b.tif has no band descriptions: its bands are matched by position (#24)
    pairs = pair_by_glob(str(tmp_path / "img" / "*.tif"), str(tmp_path / "lbl" / "*.tif"))
    build_shards(pairs, load_classes(tmp_path / "classes.yaml"), tmp_path / "out0",
                 BuildOptions(tile=32, val=0, test=0), warn=said.append)  # fmt: skip
    assert sum("matched by position" in line for line in said) == 1
    with rasterio.open(tmp_path / "img" / "b.tif", "r+") as dataset:
        for index, name in enumerate(("nir", "red", "green", "blue"), 1):
            dataset.set_band_description(index, name)
    warnings_seen = []
    pairs = pair_by_glob(str(tmp_path / "img" / "*.tif"), str(tmp_path / "lbl" / "*.tif"))
    manifest = build_shards(
        pairs, load_classes(tmp_path / "classes.yaml"), tmp_path / "out",
        BuildOptions(tile=32, val=0, test=0), warn=warnings_seen.append,
    )  # fmt: skip
    assert {b["nodata"] for b in manifest["bands"]} == {None}
    assert any("different nodata values" in w for w in warnings_seen)
    # Each image's own nodata pixels are ignore: 5 zero pixels in a, the 7s in b.
    assert manifest["ignore_pixels"]["train"] == 5 + int((image == 7).any(-1).sum())
