"""Window readers (PIL, rasterio), streamed writers, folder evaluation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from engine.data.sources.raster_base import RasterError
from engine.data.sources.rasters import open_raster, read_index_mask
from engine.evaluate.folder_eval import FolderEvalError, evaluate_folders, pair_folders
from engine.infer.outputs import OutputSpec
from engine.infer.writer import PredictionWriter, prediction_writer

PALETTE = ["#FF0000", "#00FF00", "#0000FF", "#FFFF00"]


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (300, 470, 3), dtype=np.uint8)


def write_tiff(path, array, **options):
    """Write ``HxWxC`` (or ``HxW``) with rasterio; ``options`` go to the GTiff profile."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    array = array[..., None] if array.ndim == 2 else array
    profile = {
        "driver": "GTiff",
        "height": array.shape[0],
        "width": array.shape[1],
        "count": array.shape[2],
        "dtype": array.dtype.name,
        **options,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.moveaxis(array, -1, 0))
    return path


def read_tiff(path):
    """A TIFF's bands as ``HxW`` (one band) or ``HxWxC``."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data = np.moveaxis(src.read(), 0, -1)
    return data[..., 0] if data.shape[2] == 1 else data


TIFF_LAYOUTS = {
    "contiguous": {},
    "strips_deflate": {"compress": "deflate", "blockysize": 16},
    "tiles_deflate": {"compress": "deflate", "tiled": True, "blockxsize": 32, "blockysize": 48},
    "tiles_lzw": {"compress": "lzw", "tiled": True, "blockxsize": 64, "blockysize": 64},
    "planar_separate": {"interleave": "band", "blockysize": 16, "compress": "deflate"},
    "planar_separate_raw": {"interleave": "band"},
    "bigtiff_zstd": {"BIGTIFF": "YES", "compress": "zstd"},
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
def test_tiff_windows_match_the_array(tmp_path, rgb, layout):
    path = write_tiff(tmp_path / f"{layout}.tif", rgb, photometric="RGB", **TIFF_LAYOUTS[layout])
    with open_raster(path) as reader:
        assert reader.shape == (300, 470, 3)
        assert reader.is_gdal and reader.profile["backend"] == "rasterio"
        assert reader.band_names == ["red", "green", "blue"]
        np.testing.assert_array_equal(reader.read(17, 250, 33, 401), rgb[17:250, 33:401])
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), rgb)
        np.testing.assert_array_equal(reader.read(299, 300, 469, 470), rgb[299:, 469:])
        assert reader.read(5, 5, 0, 10).shape == (0, 10, 3)
        with pytest.raises(ValueError, match="outside"):
            reader.read(0, 301, 0, 10)


def test_uint16_is_native_and_alpha_marks_pixels_invalid(tmp_path, rgb):
    """No rescaling (uint16 stays uint16); a 0/255 alpha band is a mask, alpha 0 is invalid."""
    u16 = rgb.astype(np.uint16) * 257
    path = write_tiff(tmp_path / "u16.tif", u16, photometric="RGB")
    with open_raster(path) as reader:
        assert reader.dtype == np.uint16 and reader.band_names == ["band1", "band2", "band3"]
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), u16)
    rgba = np.concatenate([rgb, np.full((300, 470, 1), 255, np.uint8)], axis=-1)
    rgba[200:, :, 3] = 0
    alpha = write_tiff(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    with open_raster(alpha) as reader:
        assert reader.shape == (300, 470, 3) and reader.band_names == ["red", "green", "blue"]
        np.testing.assert_array_equal(reader.read(150, 250, 30, 40), rgb[150:250, 30:40])
        valid = reader.read_valid(150, 250, 30, 40)
        assert valid[:50].all() and not valid[50:].any()
    with open_raster(alpha, bands=[1, 4]) as reader:  # chosen, the alpha band is data
        assert reader.band_names == ["red", "band4"]
        np.testing.assert_array_equal(reader.read(150, 250, 30, 40), rgba[150:250, 30:40, [0, 3]])
        assert reader.read_valid(150, 250, 30, 40).all()


def test_unusable_pixel_types_are_named_errors(tmp_path, rgb):
    gray = write_tiff(tmp_path / "gray.tif", rgb[..., 0])
    with open_raster(gray) as reader:  # one band is an image like any other
        assert reader.shape == (300, 470, 1) and reader.band_names == ["band1"]
    for dtype in ("int8", "int32", "uint32", "float64"):
        path = write_tiff(tmp_path / f"{dtype}.tif", rgb.astype(dtype))
        with pytest.raises(RasterError, match=rf"{dtype}\.tif: pixel type {dtype} is not"):
            open_raster(path)
    with pytest.raises(RasterError, match="convert to float32"):
        open_raster(tmp_path / "float64.tif")


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_raster(tmp_path / "nope.tif")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(RasterError, match="broken.tif"):
        open_raster(broken)
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(RasterError, match="bad.png"):
        open_raster(bad_png)
    with pytest.raises(ValueError, match="tifffile"):
        open_raster(bad_png, backend="tifffile")


def test_truncated_tiff_is_a_named_error_at_read(tmp_path, rgb):
    path = write_tiff(tmp_path / "cut.tif", rgb, compress="deflate", tiled=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match="cut.tif"):
        with open_raster(path) as reader:
            reader.read(0, 300, 0, 470)


def test_pil_formats(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with open_raster(tmp_path / "a.png") as reader:
        assert reader.profile["backend"] == "pil" and not reader.is_gdal
        np.testing.assert_array_equal(reader.read(5, 50, 7, 70), rgb[5:50, 7:70])
    rgba = np.concatenate([rgb, np.full((300, 470, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with open_raster(tmp_path / "rgba.png") as reader:
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), rgb)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "holey.png")
    with open_raster(tmp_path / "holey.png") as reader:  # alpha 0: invalid, not an error
        assert reader.shape == (300, 470, 3)
        valid = reader.read_valid(0, 2, 0, 2)
        np.testing.assert_array_equal(valid, [[False, True], [True, True]])
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with open_raster(tmp_path / "gray.png") as reader:
        assert reader.shape == (300, 470, 1) and reader.band_names == ["band1"]
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470)[..., 0], rgb[..., 0])
    deep = (rgb[..., 0].astype(np.uint16) * 251).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with open_raster(tmp_path / "deep.png") as reader:  # 16-bit PNG: 1-band uint16, as is
        assert reader.shape == (300, 470, 1) and reader.dtype == np.uint16
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470)[..., 0], deep)
    with open_raster(tmp_path / "a.png", bands=["blue", 1]) as reader:
        np.testing.assert_array_equal(reader.read(0, 3, 0, 3), rgb[:3, :3, [2, 0]])
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    with open_raster(tmp_path / "palette.png") as reader:
        assert reader.shape == (300, 470, 3)


def _probs(height: int, width: int, classes: int = 4, seed: int = 0) -> np.ndarray:
    probs = np.random.default_rng(seed).random((classes, height, width)).astype(np.float32)
    return probs / probs.sum(0)


def _write_all(writer, probs, step):
    with writer:
        for row0 in range(0, probs.shape[1], step):
            writer.write(row0, probs[:, row0 : row0 + step])
    return writer.paths


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_writer_outputs_are_exact(tmp_path, rgb, fmt):
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    probs = _probs(300, 470)
    expected = probs.argmax(0)
    with open_raster(tmp_path / "scene.png") as reader:
        writer = prediction_writer(
            reader,
            tmp_path / "out",
            PALETTE,
            OutputSpec(fmt=fmt, confidence=True, overlay=True, overlay_alpha=0.4),
        )
        paths = _write_all(writer, probs, 97)
    assert sorted(paths) == ["color", "confidence", "mask", "overlay"]
    assert paths["mask"].name == f"scene_mask.{fmt}"
    mask = read_index_mask(paths["mask"])
    np.testing.assert_array_equal(mask, expected)
    read = read_tiff if fmt == "tif" else (lambda p: np.asarray(Image.open(p)))
    color = read(paths["color"])
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    np.testing.assert_array_equal(color, palette[expected])
    confidence = read(paths["confidence"])
    np.testing.assert_array_equal(confidence, np.rint(probs.max(0) * 255).astype(np.uint8))
    overlay = read(paths["overlay"]).astype(int)
    blend = np.rint(rgb * 0.6 + palette[expected] * 0.4)
    assert np.abs(overlay - blend).max() <= 1
    assert not list((tmp_path / "out").glob("*.partial"))


def test_writer_order_and_completeness_are_checked(tmp_path):
    probs = _probs(300, 200)
    writer = PredictionWriter(tmp_path, "x", 300, 200, PALETTE, OutputSpec("tif"))
    with pytest.raises(ValueError, match="in order"):
        writer.write(10, probs[:, 10:20])
    writer.write(0, probs[:, :100])
    with pytest.raises(RuntimeError, match="100 of 300 rows"):
        writer.close()
    assert not list(tmp_path.iterdir())  # partial outputs removed
    with pytest.raises(KeyError):
        with PredictionWriter(tmp_path, "y", 300, 200, PALETTE, OutputSpec("tif")) as writer:
            writer.write(0, probs[:, :100])
            raise KeyError("boom")
    assert not list(tmp_path.iterdir())


def test_geotiff_crs_and_transform_are_kept(tmp_path, rgb):
    import rasterio
    from affine import Affine

    transform = Affine(0.5, 0.0, 300000.0, 0.0, -0.5, 2800000.0)
    source = tmp_path / "geo.tif"
    with rasterio.open(
        source,
        "w",
        driver="GTiff",
        height=300,
        width=470,
        count=3,
        dtype="uint8",
        crs="EPSG:32640",
        transform=transform,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    probs = _probs(300, 470)
    with open_raster(source) as reader:
        paths = _write_all(prediction_writer(reader, tmp_path / "out", PALETTE), probs, 128)
    for path in paths.values():
        assert path.suffix == ".tif"
        with rasterio.open(path) as out:
            assert out.crs.to_epsg() == 32640
            assert out.transform == transform
            assert (out.height, out.width) == (300, 470)
    np.testing.assert_array_equal(read_index_mask(paths["mask"]), probs.argmax(0))


def test_end_to_end_tiff_prediction_keeps_size(tmp_path):
    import torch

    from engine.infer.sliding import SlidingOptions, predict_raster, rgb_normalization

    image = np.random.default_rng(2).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    source = tmp_path / "scene.tif"
    write_tiff(source, image, photometric="RGB", compress="deflate", tiled=True)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    with open_raster(source) as reader:
        writer = prediction_writer(reader, tmp_path / "out", PALETTE)
        with writer:
            predict_raster(
                model,
                reader,
                writer,
                num_classes=4,
                normalization=rgb_normalization([0.5] * 3, [0.25] * 3),
                options=SlidingOptions(tile=128),
            )
    mask = read_index_mask(writer.paths["mask"])
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        expected = model((x - 0.5) / 0.25).argmax(1)[0].numpy()
    assert mask.shape == (333, 517)
    assert (mask == expected).mean() > 0.9999


def _save_mask(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        write_tiff(path, mask)
    else:
        Image.fromarray(mask).save(path)


def test_folder_evaluation_pairs_by_stem_and_counts(tmp_path):
    rng = np.random.default_rng(4)
    expected = np.zeros((3, 3), np.int64)
    for number in range(3):
        truth = rng.integers(0, 3, (40, 50)).astype(np.uint8)
        truth[:5] = 255
        pred = np.where(rng.random((40, 50)) < 0.7, truth, rng.integers(0, 3, (40, 50)))
        pred = np.where(truth == 255, 0, pred).astype(np.uint8)
        _save_mask(tmp_path / "truth" / f"tile_{number}.png", truth)
        suffix = ".tif" if number == 1 else ".png"
        _save_mask(tmp_path / "pred" / f"tile_{number}_mask{suffix}", pred)
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(
            tmp_path / "pred" / f"tile_{number}_color.png"
        )
        valid = truth != 255
        expected += np.bincount(truth[valid] * 3 + pred[valid], minlength=9).reshape(3, 3)
    _save_mask(tmp_path / "truth" / "unpredicted.png", np.zeros((40, 50), np.uint8))
    pairing = pair_folders(tmp_path / "pred", tmp_path / "truth")
    assert [key for key, _, _ in pairing.pairs] == ["tile_0", "tile_1", "tile_2"]
    assert [p.name for p in pairing.missing_prediction] == ["unpredicted.png"]
    matrix = evaluate_folders(tmp_path / "pred", tmp_path / "truth", 3)
    np.testing.assert_array_equal(matrix, expected)
    manifest = {"classes": [{"name": n, "color": "#000000"} for n in "abc"]}
    np.testing.assert_array_equal(
        evaluate_folders(tmp_path / "pred", tmp_path / "truth", manifest=manifest), expected
    )
    with pytest.raises(FolderEvalError, match="no prediction"):
        evaluate_folders(tmp_path / "pred", tmp_path / "truth", 3, require_all=True)
    with pytest.raises(FolderEvalError, match="neither a class"):
        evaluate_folders(tmp_path / "pred", tmp_path / "truth", 2)


def test_folder_evaluation_decodes_colour_masks_and_checks_sizes(tmp_path):
    import yaml

    classes = {
        "encoding": "rgb",
        "classes": [
            {"name": "water", "value": "#0000FF"},
            {"name": "land", "value": "#00FF00"},
            {"name": "nodata", "value": "#000000", "ignore": True},
        ],
    }
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    truth = np.zeros((10, 12, 3), np.uint8)
    truth[:, :6] = (0, 0, 255)
    truth[:, 6:] = (0, 255, 0)
    truth[0] = 0
    (tmp_path / "truth").mkdir()
    Image.fromarray(truth).save(tmp_path / "truth" / "a.png")
    pred = np.zeros((10, 12), np.uint8)
    pred[:, 4:] = 1
    _save_mask(tmp_path / "pred" / "a_mask.png", pred)
    matrix = evaluate_folders(
        tmp_path / "pred", tmp_path / "truth", classes=tmp_path / "classes.yaml"
    )
    np.testing.assert_array_equal(matrix, [[36, 18], [0, 54]])
    _save_mask(tmp_path / "pred" / "a_mask.png", pred[:, :11])
    with pytest.raises(FolderEvalError, match="a_mask.png is 11x10 but .*a.png is 12x10"):
        evaluate_folders(tmp_path / "pred", tmp_path / "truth", classes=tmp_path / "classes.yaml")
    _save_mask(tmp_path / "pred" / "orphan_mask.png", pred)
    with pytest.raises(FolderEvalError, match="without a true mask.*orphan_mask.png"):
        evaluate_folders(tmp_path / "pred", tmp_path / "truth", 2)
