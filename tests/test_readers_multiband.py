"""N-band readers at native precision: bands, nodata, masks, alpha, band files, real chips."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from engine.data.sources.paths import multispectral_dataset_dir
from engine.data.sources.raster_base import ArrayReader, RasterError
from engine.data.sources.rasters import open_raster

S2_NAMES = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4200000.0)


def write_geotiff(path, array, *, descriptions=None, nodata=None, transform=TRANSFORM, **options):
    """Write ``HxWxC`` as a georeferenced GeoTIFF (EPSG:32630) with rasterio."""
    height, width, count = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=array.dtype.name,
        crs="EPSG:32630",
        transform=transform,
        nodata=nodata,
        **options,
    ) as dst:
        dst.write(np.moveaxis(array, -1, 0))
        for band, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(band, text)
    return path


@pytest.fixture(scope="module")
def s2_like():
    return np.random.default_rng(7).integers(-2000, 12000, (61, 83, 13)).astype(np.int16)


def test_13_band_int16_bands_by_name_and_index_are_bit_exact(tmp_path, s2_like):
    path = write_geotiff(tmp_path / "s2.tif", s2_like, descriptions=S2_NAMES, tiled=True,
                         blockxsize=32, blockysize=32, compress="deflate")  # fmt: skip
    with open_raster(path) as reader:
        assert reader.shape == (61, 83, 13) and reader.dtype == np.int16
        assert reader.band_names == S2_NAMES and reader.nodata is None
        full = reader.read(0, 61, 0, 83)
        assert full.dtype == np.int16 and full.flags.c_contiguous
        np.testing.assert_array_equal(full, s2_like)
        assert reader.read_valid(0, 61, 0, 83).all()
        assert reader.georef == {"crs": rasterio.crs.CRS.from_epsg(32630), "transform": TRANSFORM}
    with open_raster(path, bands=["B8", "B4", "b3", "B8A"]) as reader:  # order kept
        assert reader.band_names == ["B8", "B4", "B3", "B8A"]
        np.testing.assert_array_equal(reader.read(3, 50, 7, 80), s2_like[3:50, 7:80, [7, 3, 2, 8]])
    with open_raster(path, bands=[13, 1, "9"]) as reader:  # "9": a command line's band 9
        assert reader.band_names == ["B12", "B1", "B8A"] and reader.shape == (61, 83, 3)
        np.testing.assert_array_equal(reader.read(0, 61, 0, 83), s2_like[..., [12, 0, 8]])
    with pytest.raises(RasterError, match=r"s2\.tif: no band named 'B13' \(available: 1:B1, "):
        open_raster(path, bands=["B2", "B13"])
    with pytest.raises(RasterError, match=r"s2\.tif: no band 14 .*13:B12"):
        open_raster(path, bands=[14])
    with pytest.raises(RasterError, match=r"s2\.tif: band 'B2' selected twice"):
        open_raster(path, bands=["B2", "B2"])


def test_windowed_reads_equal_the_full_read(tmp_path, s2_like):
    path = write_geotiff(tmp_path / "w.tif", s2_like, interleave="band", blockysize=8)
    with open_raster(path, bands=[2, 5, 11]) as reader:
        full = reader.read(0, 61, 0, 83)
        rng = np.random.default_rng(3)
        for _ in range(12):
            r0, c0 = rng.integers(0, 61), rng.integers(0, 83)
            r1, c1 = rng.integers(r0, 62), rng.integers(c0, 84)
            window = reader.read(r0, r1, c0, c1)
            assert window.shape == (r1 - r0, c1 - c0, 3) and window.dtype == np.int16
            np.testing.assert_array_equal(window, full[r0:r1, c0:c1])


def test_nodata_value_and_override_mark_pixels_invalid(tmp_path):
    image = np.random.default_rng(1).integers(1, 5000, (20, 30, 4)).astype(np.uint16)
    image[2, 3, 1] = 0  # one band at nodata: the pixel is invalid
    image[5, 6, :] = 0
    image[7, 8, 3] = 9999
    path = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    with open_raster(path) as reader:
        assert reader.nodata == 0.0 and reader.dtype == np.uint16
        valid = reader.read_valid(0, 20, 0, 30)
        assert sorted(zip(*np.nonzero(~valid))) == [(2, 3), (5, 6)]
        np.testing.assert_array_equal(reader.read(0, 20, 0, 30), image)  # values untouched
        np.testing.assert_array_equal(reader.read_valid(1, 6, 2, 7), valid[1:6, 2:7])
    with open_raster(path, bands=[1, 3]) as reader:  # only the selected bands count
        assert sorted(zip(*np.nonzero(~reader.read_valid(0, 20, 0, 30)))) == [(5, 6)]
    with open_raster(path, nodata=9999) as reader:  # the override replaces the file's value
        assert reader.nodata == 9999.0
        assert sorted(zip(*np.nonzero(~reader.read_valid(0, 20, 0, 30)))) == [(7, 8)]


def test_gdal_mask_marks_pixels_invalid(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (16, 24, 5)).astype(np.uint8)
    path = write_geotiff(tmp_path / "masked.tif", image)
    mask = np.full((16, 24), 255, np.uint8)
    mask[4:9, 10:20] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "r+") as dst:
            dst.write_mask(mask)
    with open_raster(path) as reader:
        assert reader.nodata is None and reader.shape == (16, 24, 5)
        np.testing.assert_array_equal(reader.read_valid(0, 16, 0, 24), mask > 0)
        np.testing.assert_array_equal(reader.read_valid(5, 7, 0, 12), mask[5:7, :12] > 0)
        np.testing.assert_array_equal(reader.read(0, 16, 0, 24), image)


def test_nan_nodata_for_float32(tmp_path):
    image = np.random.default_rng(4).normal(-12, 4, (10, 12, 2)).astype(np.float32)
    image[1, 1, 0] = np.nan
    image[3, 4, 1] = np.nan
    path = write_geotiff(
        tmp_path / "sar.tif", image, nodata=float("nan"), descriptions=["VV", "VH"]
    )
    with open_raster(path) as reader:
        assert reader.dtype == np.float32 and np.isnan(reader.nodata)
        assert reader.band_names == ["VV", "VH"]
        valid = reader.read_valid(0, 10, 0, 12)
        assert sorted(zip(*np.nonzero(~valid))) == [(1, 1), (3, 4)]
        np.testing.assert_array_equal(reader.read(0, 10, 0, 12), image)  # NaN == NaN here
    with open_raster(path, bands=["VH"]) as reader:
        assert sorted(zip(*np.nonzero(~reader.read_valid(0, 10, 0, 12)))) == [(3, 4)]
    int_path = write_geotiff(tmp_path / "int.tif", np.ones((4, 4, 1), np.int16))
    with pytest.raises(RasterError, match=r"int\.tif: nodata NaN for int16"):
        open_raster(int_path, nodata=float("nan"))


def test_alpha_band_is_dropped_and_alpha_zero_is_invalid(tmp_path):
    data = np.random.default_rng(5).integers(0, 4000, (12, 14, 4)).astype(np.uint16)
    alpha = np.full((12, 14, 1), 65535, np.uint16)
    alpha[:3] = 0
    path = write_geotiff(tmp_path / "a.tif", np.concatenate([data, alpha], -1))
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [rasterio.enums.ColorInterp.gray] + [
            rasterio.enums.ColorInterp.undefined
        ] * 3 + [rasterio.enums.ColorInterp.alpha]  # fmt: skip
    with open_raster(path) as reader:
        assert reader.shape == (12, 14, 4)
        assert reader.band_names == ["band1", "band2", "band3", "band4"]
        np.testing.assert_array_equal(reader.read(0, 12, 0, 14), data)
        valid = reader.read_valid(0, 12, 0, 14)
        assert not valid[:3].any() and valid[3:].all()


def test_band_files_are_stacked_and_checked(tmp_path):
    rng = np.random.default_rng(6)
    bands = {n: rng.integers(0, 30000, (9, 11, 1)).astype(np.uint16) for n in ("red", "nir")}
    for name, array in bands.items():
        write_geotiff(tmp_path / f"{name}_patch_1.TIF", array)
    first = tmp_path / "red_patch_1.TIF"
    with open_raster(first, band_files=["red", "nir"]) as reader:
        assert reader.shape == (9, 11, 2) and reader.band_names == ["red", "nir"]
        assert reader.dtype == np.uint16 and reader.georef["transform"] == TRANSFORM
        np.testing.assert_array_equal(
            reader.read(0, 9, 0, 11), np.concatenate([bands["red"], bands["nir"]], -1)
        )
    with open_raster(first, band_files=["red", "nir"], bands=["nir"]) as reader:
        np.testing.assert_array_equal(reader.read(2, 5, 1, 4), bands["nir"][2:5, 1:4])
    with pytest.raises(RasterError, match=r"green_patch_1\.TIF: band file for band 'green'"):
        open_raster(first, band_files=["red", "green"])
    write_geotiff(tmp_path / "small_patch_1.TIF", bands["nir"][:8])
    with pytest.raises(RasterError, match=r"small_patch_1\.TIF: size \(HxW\) \(8, 11\) differs"):
        open_raster(first, band_files=["red", "small"])
    write_geotiff(tmp_path / "wide_patch_1.TIF", bands["nir"].astype(np.int16))
    with pytest.raises(RasterError, match=r"wide_patch_1\.TIF: pixel type int16 differs"):
        open_raster(first, band_files=["red", "wide"])
    shifted = Affine(10.0, 0.0, 500010.0, 0.0, -10.0, 4200000.0)
    write_geotiff(tmp_path / "moved_patch_1.TIF", bands["nir"], transform=shifted)
    with pytest.raises(RasterError, match=r"moved_patch_1\.TIF: georeferencing"):
        open_raster(first, band_files=["red", "moved"])
    write_geotiff(tmp_path / "two_patch_1.TIF", np.concatenate([bands["red"]] * 2, -1))
    with pytest.raises(RasterError, match=r"two_patch_1\.TIF: 2 bands; a band file holds one"):
        open_raster(first, band_files=["red", "two"])
    with pytest.raises(RasterError, match="first band name 'blue' is not in the file name"):
        open_raster(first, band_files=["blue", "nir"])


def test_unsupported_pixel_types_name_the_file_and_type(tmp_path):
    for dtype in ("int8", "int32", "uint32", "float64"):
        path = write_geotiff(tmp_path / f"t_{dtype}.tif", np.zeros((4, 5, 2), dtype))
        hint = "convert to float32" if dtype == "float64" else "uint8, uint16, int16, float32"
        with pytest.raises(RasterError, match=rf"t_{dtype}\.tif: pixel type {dtype} .*{hint}"):
            open_raster(path)


def test_array_reader_follows_the_same_contract():
    image = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    reader = ArrayReader(image, nodata=5, band_names=list("abcd"))
    assert reader.shape == (2, 3, 4) and reader.dtype == np.int16 and reader.nodata == 5.0
    assert reader.band_names == ["a", "b", "c", "d"] and reader.georef is None
    np.testing.assert_array_equal(reader.read(0, 2, 1, 3), image[:, 1:3])
    np.testing.assert_array_equal(
        reader.read_valid(0, 2, 0, 3), [[True, False, True]] * 1 + [[True] * 3]
    )
    assert ArrayReader(np.zeros((2, 2, 3), np.uint8)).band_names == ["red", "green", "blue"]
    with pytest.raises(RasterError, match="float64"):
        ArrayReader(np.zeros((2, 2, 3)))


def _dataset_file(*parts: str, pattern: str):
    folder = multispectral_dataset_dir().joinpath(*parts)
    files = sorted(folder.glob(pattern))
    assert files, f"{folder}: the multispectral sample data is missing (see its PROVENANCE.md)"
    return files[0]


def test_real_sentinel2_chip_reads_exactly_as_rasterio():
    path = _dataset_file("sen1floods11", "S2", pattern="*_S2Hand.tif")
    with rasterio.open(path) as src:
        expected = np.moveaxis(src.read(), 0, -1)
        crs, transform, nodata = src.crs, src.transform, src.nodata
    with open_raster(path) as reader:
        assert reader.shape == expected.shape == (512, 512, 13)
        assert reader.dtype == np.int16 and reader.band_names == S2_NAMES
        assert reader.georef == {"crs": crs, "transform": transform} and reader.nodata == nodata
        np.testing.assert_array_equal(reader.read(0, 512, 0, 512), expected)
        np.testing.assert_array_equal(reader.read(100, 356, 300, 512), expected[100:356, 300:])
        invalid = (expected == nodata).any(-1)
        np.testing.assert_array_equal(reader.read_valid(0, 512, 0, 512), ~invalid)
    with open_raster(path, bands=["B4", "B3", "B2", "B8"]) as reader:
        np.testing.assert_array_equal(reader.read(0, 512, 0, 512), expected[..., [3, 2, 1, 7]])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_real_landsat_band_files_stack_in_the_given_order():
    red = _dataset_file("landsat8-38cloud", pattern="red_patch_*.TIF")
    order = ["nir", "red", "green", "blue"]
    with open_raster(red.with_name(red.name.replace("red", "nir", 1)), band_files=order) as reader:
        stacked = reader.read(0, reader.shape[0], 0, reader.shape[1])
    assert stacked.dtype == np.uint16 and stacked.shape[2] == 4
    for position, name in enumerate(order):
        with rasterio.open(red.with_name(red.name.replace("red", name, 1))) as src:
            np.testing.assert_array_equal(stacked[..., position], src.read(1))


def test_cloud_optimized_geotiff_reads_like_its_source(tmp_path, s2_like):
    from rasterio.shutil import copy as gdal_copy

    source = write_geotiff(tmp_path / "src.tif", s2_like, descriptions=S2_NAMES, nodata=-9999)
    gdal_copy(source, tmp_path / "cog.tif", driver="COG", blocksize=32, overview_levels=[2])
    with open_raster(tmp_path / "cog.tif", bands=["B2", "B11"]) as reader:
        assert reader.profile["driver"] == "GTiff" and reader.nodata == -9999.0
        assert reader.georef["transform"] == TRANSFORM
        np.testing.assert_array_equal(reader.read(10, 61, 40, 83), s2_like[10:, 40:, [1, 11]])
