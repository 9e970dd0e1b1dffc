"""One table of raster formats: every glob, folder walk and reader takes its suffixes there."""

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from PIL import Image
from rasterio.transform import from_origin

from engine.data.sources.formats import RASTER_FORMATS, is_raster, read_by_gdal, reader_of
from engine.data.sources.imageio import read_image, read_mask_values
from engine.data.sources.pairing import expand_glob
from engine.data.sources.rasters import open_raster
from engine.evaluate.folder_eval import evaluate_folders
from engine.infer.run import expand_inputs

GDAL_WRITES = {
    ".tif": ("GTiff", {}),
    ".jp2": ("JP2OpenJPEG", {"REVERSIBLE": "YES", "QUALITY": "100"}),
    ".img": ("HFA", {}),
}


@pytest.fixture
def scenes(tmp_path):
    """One 3-band picture as GeoTIFF, lossless JPEG 2000, ERDAS Imagine, VRT and PNG."""
    array = np.random.default_rng(0).integers(0, 255, (3, 24, 32), dtype=np.uint8)
    for suffix, (driver, options) in GDAL_WRITES.items():
        profile = dict(
            driver=driver,
            width=32,
            height=24,
            count=3,
            dtype="uint8",
            crs="EPSG:32640",
            transform=from_origin(500000, 2800000, 1, 1),
        )
        with rasterio.open(
            tmp_path / f"scene_{suffix[1:]}{suffix}", "w", **profile, **options
        ) as dst:
            dst.write(array)
    rasterio.shutil.copy(tmp_path / "scene_tif.tif", tmp_path / "scene_vrt.vrt", driver="VRT")
    Image.fromarray(array.transpose(1, 2, 0)).save(tmp_path / "scene_png.png")
    (tmp_path / "notes.txt").write_text("not a raster")
    return tmp_path, array.transpose(1, 2, 0)


def test_the_table_names_a_reader_for_every_suffix():
    assert set(RASTER_FORMATS.values()) == {"rasterio", "pil"}
    assert reader_of("a/B.JP2") == "rasterio" and read_by_gdal("x.vrt") and read_by_gdal("x.img")
    assert reader_of("x.jpeg") == "pil" and not read_by_gdal("x.png")
    assert not is_raster("x.txt") and not is_raster("x")


def test_globs_and_folder_walks_find_every_format(scenes):
    folder, _ = scenes
    expected = sorted(f"scene_{s}.{s}" for s in ("img", "jp2", "png", "tif", "vrt"))
    assert [p.name for p in expand_glob(str(folder / "*"), "images")] == expected
    assert sorted(p.name for p in expand_inputs([str(folder)])) == expected  # predict's folder
    assert [p.name for p in expand_inputs([str(folder / "*.jp2")])] == ["scene_jp2.jp2"]


def test_every_format_reads_the_same_pixels_in_build_and_predict(scenes):
    folder, array = scenes
    for name in sorted(f"scene_{s}.{s}" for s in ("img", "jp2", "png", "tif", "vrt")):
        assert np.array_equal(read_image(folder / name), array), name  # the builder's reader
        reader = open_raster(folder / name)  # prediction's reader
        assert np.array_equal(reader.read(0, 24, 0, 32), array), name
        assert reader.is_gdal == (name != "scene_png.png")


def test_folder_evaluation_pairs_masks_of_any_format(tmp_path):
    truth, preds = tmp_path / "truth", tmp_path / "preds"
    truth.mkdir(), preds.mkdir()
    mask = np.random.default_rng(1).integers(0, 3, (16, 16), dtype=np.uint8)
    profile = dict(
        driver="JP2OpenJPEG",
        width=16,
        height=16,
        count=1,
        dtype="uint8",
        REVERSIBLE="YES",
        QUALITY="100",
    )
    with rasterio.open(truth / "a.jp2", "w", **profile) as dst:
        dst.write(mask[None])
    Image.fromarray(mask).save(preds / "a.png")
    assert np.array_equal(read_mask_values(truth / "a.jp2", "index"), mask)
    confusion = evaluate_folders(preds, truth, num_classes=3, require_all=True)
    assert confusion.sum() == mask.size and np.trace(confusion) == mask.size
