"""Window readers (PIL, tifffile, rasterio), streamed writers, folder evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.data.raster_base import RasterError, rasterio_available
from engine.data.rasters import open_raster, read_index_mask
from engine.evaluate.folder_eval import FolderEvalError, evaluate_folders, pair_folders
from engine.infer.writer import PredictionWriter, prediction_writer

needs_rasterio = pytest.mark.skipif(not rasterio_available(), reason="rasterio not installed")
PALETTE = ["#FF0000", "#00FF00", "#0000FF", "#FFFF00"]


@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(0).integers(0, 256, (300, 470, 3), dtype=np.uint8)


TIFF_LAYOUTS = {
    "contiguous": {},
    "big_endian": {"byteorder": ">"},
    "strips_deflate": {"compression": "zlib", "rowsperstrip": 16},
    "tiles_deflate": {"compression": "zlib", "tile": (32, 48)},
    "tiles_raw": {"tile": (64, 64)},
    "planar_separate": {"planarconfig": "separate", "rowsperstrip": 16, "compression": "zlib"},
    "planar_separate_raw": {"planarconfig": "separate"},
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
@pytest.mark.parametrize("backend", ["tifffile", pytest.param("rasterio", marks=needs_rasterio)])
def test_tiff_windows_match_the_array(tmp_path, rgb, layout, backend):
    options = dict(TIFF_LAYOUTS[layout])
    data = np.moveaxis(rgb, -1, 0) if options.get("planarconfig") == "separate" else rgb
    path = tmp_path / f"{layout}.tif"
    tifffile.imwrite(path, data, photometric="rgb", **options)
    with open_raster(path, backend=backend) as reader:
        assert reader.shape == (300, 470, 3)
        assert reader.is_tiff
        np.testing.assert_array_equal(reader.read(17, 250, 33, 401), rgb[17:250, 33:401])
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), rgb)
        np.testing.assert_array_equal(reader.read(299, 300, 469, 470), rgb[299:, 469:])
        with pytest.raises(ValueError, match="outside"):
            reader.read(0, 301, 0, 10)


@pytest.mark.parametrize("backend", ["tifffile", pytest.param("rasterio", marks=needs_rasterio)])
def test_uint16_is_scaled_and_constant_alpha_dropped(tmp_path, rgb, backend):
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, rgb.astype(np.uint16) * 257, photometric="rgb")
    with open_raster(path, backend=backend) as reader:
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), rgb)
    twelve_bit = tmp_path / "u12.tif"
    tifffile.imwrite(twelve_bit, np.full((8, 8, 3), 4095, np.uint16), photometric="rgb")
    with open_raster(twelve_bit, backend=backend, uint16_max=4095) as reader:
        assert (reader.read(0, 8, 0, 8) == 255).all()
    rgba = np.concatenate([rgb, np.full((300, 470, 1), 255, np.uint8)], axis=-1)
    alpha = tmp_path / "rgba.tif"
    tifffile.imwrite(alpha, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_raster(alpha, backend=backend) as reader:
        assert reader.shape == (300, 470, 3)
        np.testing.assert_array_equal(reader.read(10, 20, 30, 40), rgb[10:20, 30:40])


@pytest.mark.parametrize("backend", ["tifffile", pytest.param("rasterio", marks=needs_rasterio)])
def test_unusable_bands_are_named_errors(tmp_path, rgb, backend):
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, rgb[..., 0])
    with pytest.raises(RasterError, match=r"gray\.tif.*1-band"):
        open_raster(gray, backend=backend)
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, rgb.astype(np.float32), photometric="rgb")
    with pytest.raises(RasterError, match=r"float\.tif.*float32"):
        open_raster(floats, backend=backend)
    rgba = np.concatenate([rgb, np.zeros((300, 470, 1), np.uint8)], axis=-1)
    rgba[200:, :, 3] = 255  # a real mask, not a constant alpha
    varying = tmp_path / "alpha.tif"
    tifffile.imwrite(varying, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_raster(varying, backend=backend) as reader:
        reader.read(0, 100, 0, 470)  # constant inside this window
        with pytest.raises(RasterError, match=r"alpha\.tif.*band 4 is not a constant alpha"):
            reader.read(150, 250, 0, 470)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_raster(tmp_path / "nope.tif")
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    with pytest.raises(RasterError, match="broken.tif"):
        open_raster(broken, backend="tifffile")
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(RasterError, match="bad.png"):
        open_raster(bad_png)


@needs_rasterio
def test_lzw_without_imagecodecs_is_a_clear_error(tmp_path, rgb):
    import rasterio
    from affine import Affine

    try:
        import imagecodecs  # noqa: F401

        pytest.skip("imagecodecs installed: LZW decodes")
    except ImportError:
        pass
    path = tmp_path / "lzw.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=300,
        width=470,
        count=3,
        dtype="uint8",
        compress="lzw",
        crs="EPSG:4326",
        transform=Affine(1e-5, 0, 55.0, 0, -1e-5, 25.0),
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    with open_raster(path, backend="tifffile") as reader:
        with pytest.raises(RasterError, match="lzw.tif.*imagecodecs"):
            reader.read(0, 10, 0, 10)
    with open_raster(path, backend="rasterio") as reader:
        np.testing.assert_array_equal(reader.read(0, 10, 0, 10), rgb[:10, :10])


def test_pil_formats(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with open_raster(tmp_path / "a.png") as reader:
        assert reader.profile["backend"] == "pil" and not reader.is_tiff
        np.testing.assert_array_equal(reader.read(5, 50, 7, 70), rgb[5:50, 7:70])
    rgba = np.concatenate([rgb, np.full((300, 470, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with open_raster(tmp_path / "rgba.png") as reader:
        np.testing.assert_array_equal(reader.read(0, 300, 0, 470), rgb)
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "holey.png")
    with pytest.raises(RasterError, match="holey.png.*alpha"):
        open_raster(tmp_path / "holey.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(RasterError, match="gray.png.*1-band"):
        open_raster(tmp_path / "gray.png")
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
            fmt=fmt,
            confidence=True,
            overlay=True,
            overlay_alpha=0.4,
        )
        paths = _write_all(writer, probs, 97)
    assert sorted(paths) == ["color", "confidence", "mask", "overlay"]
    assert paths["mask"].name == f"scene_mask.{fmt}"
    mask = read_index_mask(paths["mask"])
    np.testing.assert_array_equal(mask, expected)
    read = tifffile.imread if fmt == "tif" else (lambda p: np.asarray(Image.open(p)))
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
    writer = PredictionWriter(tmp_path, "x", 300, 200, PALETTE, fmt="tif")
    with pytest.raises(ValueError, match="in order"):
        writer.write(10, probs[:, 10:20])
    writer.write(0, probs[:, :100])
    with pytest.raises(RuntimeError, match="100 of 300 rows"):
        writer.close()
    assert not list(tmp_path.iterdir())  # partial outputs removed
    with pytest.raises(KeyError):
        with PredictionWriter(tmp_path, "y", 300, 200, PALETTE, fmt="tif") as writer:
            writer.write(0, probs[:, :100])
            raise KeyError("boom")
    assert not list(tmp_path.iterdir())


@needs_rasterio
@pytest.mark.parametrize("backend", ["rasterio", "tifffile"])
def test_geotiff_crs_and_transform_are_kept(tmp_path, rgb, backend):
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
    with open_raster(source, backend=backend) as reader:
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

    from engine.infer.sliding import predict_raster

    image = np.random.default_rng(2).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    source = tmp_path / "scene.tif"
    tifffile.imwrite(source, image, photometric="rgb", compression="zlib", tile=(64, 64))
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    with open_raster(source, backend="tifffile") as reader:
        writer = prediction_writer(reader, tmp_path / "out", PALETTE)
        with writer:
            predict_raster(
                model,
                reader,
                writer,
                num_classes=4,
                mean=[0.5] * 3,
                std=[0.25] * 3,
                tile=128,
                progress=False,
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
        tifffile.imwrite(path, mask)
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
