"""Acceptance: predicting the real Sentinel-2 chip gives georeferenced outputs and polygons.

The chip (``sen1floods11/S2``, 13 bands int16, nodata 0, EPSG:4326) is read from the shared
dataset folder (a missing folder fails). It has no nodata pixel of its own, so the tests
predict a copy (in the test's temporary folder) where the hand label's no-data pixels and a
rectangle of band B11 are set to 0. The model is a tiny untrained UNet exported with a
version 3 ``bands`` record computed from the chip; what it predicts does not matter, only
that the outputs describe the same pixels in the same place.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import shapely
import torch
from rasterio.features import rasterize

from engine.data.shards.normalize import BandStats, Normalization
from engine.data.sources.paths import multispectral_dataset_dir

REPO = Path(__file__).resolve().parents[1]
CHIP = "sen1floods11/S2/Spain_7370579_S2Hand.tif"
LABEL = "sen1floods11/Labels/Spain_7370579_LabelHand.tif"
CLASSES = [("land", "#00AA00"), ("water", "#0000FF")]


def predict_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("launch_predict", REPO / "launch/predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def chip_bands(data: np.ndarray, names: list[str], nodata: float) -> list[BandStats]:
    """Per-band statistics over valid pixels, native units (float64), as a manifest has."""
    bands = []
    for band, name in zip(data, names, strict=True):
        valid = band[band != nodata].astype(np.float64)
        low, high = np.percentile(valid, [2, 98])
        bands.append(BandStats(name, "int16", valid.mean(), valid.std(), (low, high), nodata))
    return bands


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """``(folder, export, chip copy with nodata, its invalid pixels)``."""
    import archs
    from engine.train.export import save_exported

    root = multispectral_dataset_dir()
    source = root / CHIP
    assert source.is_file(), f"{source}: the multispectral sample data is missing"
    folder = tmp_path_factory.mktemp("geo")
    with rasterio.open(source) as src, rasterio.open(root / LABEL) as label:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
        hole = label.read(1) == -1
    assert data.shape == (13, 512, 512) and hole.sum() == 99
    data[:, hole] = 0
    data[10, 300:340, 20:90] = 0  # B11 alone missing: the pixel is still nodata
    invalid = (data == 0).any(axis=0)
    chip = folder / "chip.tif"
    with rasterio.open(chip, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(names)
    normalization = Normalization(tuple(chip_bands(data, names, 0.0)), (3, 2, 1))
    manifest = {
        "version": 3,
        "classes": [{"name": n, "color": c, "value": i} for i, (n, c) in enumerate(CLASSES)],
        **normalization.records(),
    }
    torch.manual_seed(0)
    model = archs.create_model("unet", len(CLASSES), 13, base_width=4)
    spec = {"arch": "unet", "num_classes": 2, "in_channels": 13, "options": {"base_width": 4}}
    export = save_exported(folder / "run" / "best", model, spec, {}, manifest)
    return folder, export, chip, invalid


@pytest.fixture(scope="module")
def predicted(scene):
    folder, export, chip, _ = scene
    out = folder / "tif"
    argv = ["--model", str(export), "--input", str(chip), "--out", str(out), "--tile", "256"]
    argv += ["--confidence", "--polygons", str(out / "chip.gpkg"), "--no-progress"]
    argv += ["--min-area", "0", "--polygon-classes", "all"]  # the raster as it is
    assert predict_main(argv + ["--device", "cpu"]) == 0
    return out


def test_geotiff_keeps_the_inputs_grid_and_its_nodata(scene, predicted):
    _, _, chip, invalid = scene
    with rasterio.open(chip) as src:
        crs, transform = src.crs, src.transform
    assert 0 < invalid.sum() < invalid.size
    for kind, nodata in (("mask", 255), ("confidence", 0), ("color", None)):
        with rasterio.open(predicted / f"chip_{kind}.tif") as out:
            assert out.crs == crs and out.transform == transform, kind
            assert (out.height, out.width) == (512, 512)
            assert out.nodata == nodata, kind
            np.testing.assert_array_equal(out.dataset_mask() == 0, invalid, err_msg=kind)
            if nodata is not None:
                band = out.read(1)
                assert (band[invalid] == nodata).all() and (band[~invalid] != nodata).all()
    with rasterio.open(predicted / "chip_mask.tif") as out:
        mask = out.read(1)
    classes = set(np.unique(mask[~invalid]).tolist())
    assert classes == {0, 1}, "the test needs both classes in the prediction"


def test_polygons_match_the_raster_in_wgs84(scene, predicted):
    from engine.infer.polygons import write_polygons

    _, _, chip, invalid = scene
    gpkg = predicted / "chip.gpkg"
    meta, _, wkb, fields = pyogrio.raw.read(gpkg)
    assert meta["crs"] == "EPSG:4326"
    polygons = shapely.from_wkb(wkb)
    names, indices = fields
    assert {(str(n), int(i)) for n, i in zip(names, indices)} <= {(n, i) for i, (n, _) in
                                                                 enumerate(CLASSES)}  # fmt: skip
    with rasterio.open(predicted / "chip_mask.tif") as out:
        mask, transform = out.read(1), out.transform
    # every valid pixel is covered by exactly the polygon of its class; nodata by none
    burned = rasterize(zip(polygons, indices), out_shape=mask.shape, transform=transform,
                       fill=255, dtype="uint8")  # fmt: skip
    np.testing.assert_array_equal(burned, mask)
    assert (burned[invalid] == 255).all()
    pixel = abs(transform.a * transform.e)
    width = abs(transform.a)
    simplified = predicted / "simple.gpkg"
    write_polygons(predicted / "chip_mask.tif", simplified, [n for n, _ in CLASSES], simplify=1,
                   min_area=0, classes="all")  # fmt: skip
    _, _, wkb_s, (_, indices_s) = pyogrio.raw.read(simplified)
    for result, classes in ((polygons, indices), (shapely.from_wkb(wkb_s), indices_s)):
        for index in range(len(CLASSES)):
            mine = result[classes == index]
            area = shapely.area(mine).sum()
            expected = (mask == index).sum() * pixel
            tolerance = shapely.length(mine).sum() * width  # one pixel per polygon edge
            assert abs(area - expected) <= tolerance, (index, area, expected, tolerance)
    assert len(shapely.from_wkb(wkb_s)) == len(polygons)


def test_cog_output_is_a_valid_cog_of_the_same_pixels(scene, predicted):
    folder, export, chip, _ = scene
    out = folder / "cog"
    argv = ["--model", str(export), "--input", str(chip), "--out", str(out), "--tile", "256"]
    assert predict_main(argv + ["--format", "cog", "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["chip_color.tif", "chip_mask.tif"]
    with (
        rasterio.open(out / "chip_mask.tif") as cog,
        rasterio.open(predicted / "chip_mask.tif") as tif,
    ):
        assert cog.profile["tiled"] and cog.overviews(1), cog.profile
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert cog.crs == tif.crs and cog.transform == tif.transform and cog.nodata == 255
        np.testing.assert_array_equal(cog.read(1), tif.read(1))


def test_rasters_without_the_models_bands_are_refused(scene, capsys):
    folder, export, chip, _ = scene
    with rasterio.open(chip) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
    four = folder / "four.tif"
    with rasterio.open(four, "w", **{**profile, "count": 4}) as dst:
        dst.write(data[:4])
        dst.descriptions = tuple(names[:4])
    anonymous = folder / "anonymous.tif"
    with rasterio.open(anonymous, "w", **{**profile, "count": 4}) as dst:
        dst.write(data[:4])
    base = ["--model", str(export), "--out", str(folder / "refused"), "--device", "cpu"]
    for raster, expected in (
        (four, "four.tif: lacks band(s) B5, B6, B7, B8, B8A, B9, B10, B11, B12 of the model "
               "(13: B1, B2"),
        (anonymous, "anonymous.tif: lacks band(s) B1, B2"),
    ):  # fmt: skip
        assert predict_main(base + ["--input", str(raster)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert "4 band(s) without descriptions" in err
    assert "the file has 4 band(s): B1, B2, B3, B4" in predict_main_error(capsys, base, four)
    assert not (folder / "refused").exists() or not any((folder / "refused").iterdir())


def predict_main_error(capsys, base: list[str], raster: Path) -> str:
    assert predict_main(base + ["--input", str(raster)]) == 2
    return capsys.readouterr().err


def test_the_models_bands_are_found_by_name_position_or_bands(scene):
    from engine.infer.bands import BandMismatchError, model_normalization, open_model_raster
    from engine.train.export import load_exported

    folder, export, chip, _ = scene
    normalization = model_normalization(load_exported(export).manifest, 13, export)
    with rasterio.open(chip) as src:
        data, profile, names = src.read(), src.profile, list(src.descriptions)
    expected = np.moveaxis(data[:, 100:140, 200:260], 0, -1)
    shuffled = folder / "shuffled.tif"  # band descriptions in reverse order
    with rasterio.open(shuffled, "w", **profile) as dst:
        dst.write(data[::-1])
        dst.descriptions = tuple(names[::-1])
    anonymous = folder / "anonymous13.tif"
    with rasterio.open(anonymous, "w", **profile) as dst:
        dst.write(data)
    reverse = ["13,12", *"11 10 9 8 7 6 5 4 3 2 1".split()]  # numbers of the file, as typed
    for raster, bands in ((shuffled, None), (anonymous, None), (shuffled, reverse)):
        with open_model_raster(raster, normalization, bands=bands) as reader:
            np.testing.assert_array_equal(reader.read(100, 140, 200, 260), expected)
    with pytest.raises(BandMismatchError, match=r"anonymous13\.tif: --bands selects 2 band"):
        open_model_raster(anonymous, normalization, bands=["1", "2"])
    rgb_model = Normalization.from_manifest({"mean": [0.5] * 3, "std": [0.2] * 3})
    uint16 = folder / "rgb16.tif"
    with rasterio.open(uint16, "w", **{**profile, "count": 3, "dtype": "uint16"}) as dst:
        dst.write(data[1:4].astype(np.uint16))
    with pytest.raises(BandMismatchError, match=r"rgb16\.tif: uint16 pixels, but the model was "
                       "trained on uint8 bands; values are never rescaled"):  # fmt: skip
        open_model_raster(uint16, rgb_model)
    record = dict(load_exported(export).manifest)
    for rgb in ([2, 1], [3, 2, 1, 0], [13, 2, 1], [-1, 2, 1]):
        with pytest.raises(BandMismatchError, match=r"usable band statistics .*rgb_bands"):
            model_normalization(record | {"rgb_bands": rgb}, 13, export)


def test_polygon_requests_are_checked_before_predicting(scene, capsys):
    folder, export, chip, _ = scene
    base = ["--model", str(export), "--out", str(folder / "early"), "--device", "cpu"]
    twin = folder / "twin.tif"
    twin.write_bytes(chip.read_bytes())
    for extra, expected in (
        (["--polygons", str(folder / "x.shp")], "x.shp: polygons are written as"),
        (["--polygons", str(folder / "no" / "x.gpkg")], "does not exist or is not writable"),
        (["--polygons", str(folder / "x.gpkg"), "--min-area", "-1"], "must be >= 0"),
        ([str(twin), "--polygons", str(folder / "x.gpkg")], "put {stem} in the name"),
        (
            ["--polygons", str(folder / "x.gpkg"), "--polygon-classes", "lake"],
            "--polygon-classes 'lake': give foreground, all or class names of the model (land, ",
        ),
    ):
        assert predict_main(base + ["--input", str(chip), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not list((folder / "early").glob("chip_*"))


def test_png_outputs_of_a_georeferenced_input_still_give_placed_polygons(scene, predicted):
    folder, export, chip, _ = scene
    out = folder / "png"
    argv = ["--model", str(export), "--input", str(chip), "--out", str(out), "--tile", "256"]
    argv += ["--format", "png", "--polygons", str(out / "chip.gpkg"), "--device", "cpu"]
    argv += ["--min-area", "0", "--polygon-classes", "all"]  # as the GeoTIFF's above
    assert predict_main(argv + ["--no-progress"]) == 0
    assert (out / "chip_mask.png").is_file()
    meta, _, wkb, fields = pyogrio.raw.read(out / "chip.gpkg")
    meta_tif, _, wkb_tif, fields_tif = pyogrio.raw.read(predicted / "chip.gpkg")
    assert meta["crs"] == meta_tif["crs"] == "EPSG:4326"
    assert fields[1].tolist() == fields_tif[1].tolist()
    png, tif = shapely.from_wkb(wkb), shapely.from_wkb(wkb_tif)
    assert shapely.equals_exact(shapely.normalize(png), shapely.normalize(tif), 1e-9).all()
