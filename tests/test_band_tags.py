"""Any band, any tags (issue #24): a band tagged alpha is a mask only when its values are one.

A 4-band B,G,R,NIR product often tags its NIR band as alpha; its reflectances are kept as a
data band (by default, by number, by name) with a one-line note, on every read path (build,
predict, show). A real 0/255 (0/65535) alpha still marks pixels invalid. Images whose band
names differ only by their tags build together, matched by position, with one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp

from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.output import BuildError
from engine.data.build.statistics import BuildBands, tile_sums
from engine.data.sources import raster_base, rasters
from engine.data.sources.classes import load_classes
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.raster_base import RasterError, alpha_is_mask
from engine.data.sources.rasters import open_raster

RGBA_TAGS = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
PLAIN_TAGS = [ColorInterp.gray, ColorInterp.undefined, ColorInterp.undefined]  # minisblack
TRANSFORM = Affine(2.0, 0.0, 300000.0, 0.0, -2.0, 5000000.0)


def write_tif(path: Path, array: np.ndarray, tags=None, descriptions=None, **profile) -> Path:
    """Write ``HxWxC`` as a GeoTIFF, then set its colour interpretation ``tags``."""
    height, width, count = array.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=count,
        dtype=array.dtype.name, crs="EPSG:32632", transform=TRANSFORM, **profile,
    ) as dst:  # fmt: skip
        dst.write(np.moveaxis(array, -1, 0))
        for band, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(band, text)
    if tags is not None:
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = tags
    with rasterio.open(path) as src:  # the tags are in the file, as a reader sees them
        assert tags is None or list(src.colorinterp) == tags
    return path


def bgrn(seed: int = 0, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    """uint16 B, G, R, NIR reflectances (×10000), no zero and no 65535 anywhere."""
    return np.random.default_rng(seed).integers(100, 9000, (*size, 4)).astype(np.uint16)


def test_nir_tagged_alpha_is_a_data_band_by_default_by_number_and_by_name(tmp_path):
    data = bgrn()
    path = write_tif(tmp_path / "bgrn.tif", data, RGBA_TAGS)
    with open_raster(path) as reader:
        assert reader.shape == (40, 48, 4)
        assert reader.band_names == ["band1", "band2", "band3", "band4"]
        np.testing.assert_array_equal(reader.read(0, 40, 0, 48), data)
        assert reader.read_valid(0, 40, 0, 48).all()
        assert len(reader.notes) == 1 and "\n" not in reader.notes[0]
        assert "bgrn.tif: band 4 ('band4') is tagged alpha but holds data" in reader.notes[0]
    for bands in ([4], ["4"], ["band4"], [4, 1]):
        with open_raster(path, bands=bands) as reader:
            expected = data[..., [int(str(b)[-1]) - 1 for b in bands]]
            np.testing.assert_array_equal(reader.read(5, 20, 3, 30), expected[5:20, 3:30])
    named = write_tif(tmp_path / "named.tif", data, RGBA_TAGS, ["B", "G", "R", "NIR"])
    with open_raster(named, bands=["nir", "R"]) as reader:
        assert reader.band_names == ["NIR", "R"]
        np.testing.assert_array_equal(reader.read(0, 40, 0, 48), data[..., [3, 2]])
    with pytest.raises(RasterError, match=r"no band named 'SWIR' \(available: .*4:NIR\)"):
        open_raster(named, bands=["SWIR"])


@pytest.mark.parametrize(
    ("dtype", "opaque"), [("uint8", 255), ("uint16", 65535), ("uint16", 255), ("int16", 32767)]
)
def test_a_real_alpha_still_marks_pixels_invalid(tmp_path, dtype, opaque):
    data = bgrn()[..., :3].astype(dtype)
    alpha = np.full((40, 48, 1), opaque, dtype)
    alpha[:7, :5] = 0
    path = write_tif(tmp_path / "rgba.tif", np.concatenate([data, alpha], -1), RGBA_TAGS)
    with open_raster(path) as reader:
        assert reader.shape == (40, 48, 3) and reader.notes == []
        np.testing.assert_array_equal(reader.read(0, 40, 0, 48), data)
        valid = reader.read_valid(0, 40, 0, 48)
        assert not valid[:7, :5].any() and valid.sum() == 40 * 48 - 35
    with open_raster(path, bands=[3, 4]) as reader:  # chosen, it is data (and no mask)
        np.testing.assert_array_equal(reader.read(0, 40, 0, 48)[..., 1:], alpha)
        assert reader.read_valid(0, 40, 0, 48).all()


@pytest.mark.parametrize(
    ("values", "dtype", "mask"),
    [
        ([0, 255, 255], "uint8", True),
        ([0, 0], "uint8", True),  # all transparent
        ([65535], "uint16", True),  # all opaque
        ([0, 255], "uint16", True),  # an 8-bit alpha in a 16-bit file
        ([0, 1000], "uint16", False),  # two values, but 1000 is no opaque value
        ([0, 255, 254], "uint8", False),  # feathered: a blend, not a mask
        ([0, 65535, 255], "uint16", False),  # two different opaque values
        ([0.0, 1.0], "float32", True),
        ([0.0, np.nan], "float32", False),
    ],
)
def test_alpha_mask_values(values, dtype, mask):
    blocks = [np.array(values[:1], dtype), np.array(values[1:], dtype)]
    assert alpha_is_mask(blocks, dtype) is mask


def test_large_rasters_judge_an_even_grid_of_blocks_within_the_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(raster_base, "ALPHA_CHECK_PIXELS", 16 * 16 * 6)
    data = bgrn(1, (160, 128))
    alpha = np.full((160, 128, 1), 65535, np.uint16)
    alpha[150:, 120:] = 0  # the corner block alone is partly transparent
    tiled = {"tiled": True, "blockxsize": 16, "blockysize": 16}
    nir = write_tif(tmp_path / "nir.tif", data, RGBA_TAGS, **tiled)
    mask = write_tif(tmp_path / "mask.tif", np.concatenate([data[..., :3], alpha], -1),
                     RGBA_TAGS, **tiled)  # fmt: skip
    read = []
    original = rasters.RasterioReader._window_read

    def counting(self, method, indexes, row0, row1, col0, col1):
        read.append((row0, col0, (row1 - row0) * (col1 - col0)))
        return original(self, method, indexes, row0, row1, col0, col1)

    monkeypatch.setattr(rasters.RasterioReader, "_window_read", counting)
    with open_raster(mask) as reader:
        assert reader.shape == (160, 128, 3)
    assert sum(pixels for *_, pixels in read) <= 16 * 16 * 6 and len(read) == 6
    assert (0, 0, 256) in read and (144, 112, 256) in read  # both corners, evenly between
    read.clear()
    with open_raster(nir) as reader:
        assert reader.shape == (160, 128, 4)
    assert len(read) == 1  # the first block of reflectances decides


def test_png_alpha_follows_the_same_rule(tmp_path):
    rgba = np.random.default_rng(2).integers(1, 255, (20, 30, 4)).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgbn.png")
    with open_raster(tmp_path / "rgbn.png") as reader:
        assert reader.band_names == ["red", "green", "blue", "band4"]
        np.testing.assert_array_equal(reader.read(0, 20, 0, 30), rgba)
        assert "band 4 ('band4') is tagged alpha" in reader.notes[0]
    rgba[..., 3] = 255
    rgba[:4, :4, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    with open_raster(tmp_path / "rgba.png") as reader:
        assert reader.shape == (20, 30, 3) and reader.notes == []
        assert reader.read_valid(0, 20, 0, 30).sum() == 600 - 16


def _build(root: Path, out: str = "out", **options) -> tuple[dict, list[str]]:
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"encoding": "index", "classes": [{"name": "a", "value": 0},
                                                         {"name": "b", "value": 1}]})
    )  # fmt: skip
    pairs = pair_by_glob(str(root / "img" / "*.tif"), str(root / "lbl" / "*.tif"))
    said: list[str] = []
    settings = {"tile": 32, "val": 0, "test": 0} | options
    classes = load_classes(root / "classes.yaml")
    manifest = build_shards(pairs, classes, root / out, BuildOptions(**settings), said.append)
    return manifest, said


def _label(root: Path, name: str, size=(40, 48)) -> None:
    labels = (np.arange(size[0] * size[1]).reshape(*size, 1) % 2).astype(np.uint8)
    write_tif(root / "lbl" / name, labels)


def test_build_keeps_the_nir_band_and_says_so_once(tmp_path):
    for n in range(3):
        write_tif(tmp_path / "img" / f"t{n}.tif", bgrn(n), RGBA_TAGS)
        _label(tmp_path, f"t{n}.tif")
    manifest, said = _build(tmp_path)
    assert [b["name"] for b in manifest["bands"]] == ["band1", "band2", "band3", "band4"]
    expected = np.concatenate([bgrn(n).reshape(-1, 4) for n in range(3)]).astype(np.float64)
    np.testing.assert_allclose([b["mean"] for b in manifest["bands"]], expected.mean(0))
    notes = [line for line in said if "tagged alpha" in line]
    assert len(notes) == 1 and notes[0].endswith("kept as a data band (and in 2 more image(s))")
    assert manifest["ignore_pixels"]["train"] == 0
    manifest, _ = _build(tmp_path, "out3", bands=(1, 2, 3))  # --bands leaves it out
    assert len(manifest["bands"]) == 3


def test_build_with_a_real_alpha_ignores_its_transparent_pixels(tmp_path):
    data = bgrn()
    data[..., 3] = 65535
    data[:10, :6, 3] = 0
    write_tif(tmp_path / "img" / "a.tif", data, RGBA_TAGS)
    _label(tmp_path, "a.tif")
    manifest, said = _build(tmp_path)
    assert len(manifest["bands"]) == 3 and manifest["ignore_pixels"]["train"] == 60
    assert not [line for line in said if "tagged alpha" in line]


def test_images_whose_tags_differ_build_together_matched_by_position(tmp_path):
    data = np.random.default_rng(4).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    write_tif(tmp_path / "img" / "rgb.tif", data, RGBA_TAGS[:3], photometric="RGB")
    write_tif(tmp_path / "img" / "plain.tif", data[::-1].copy(), PLAIN_TAGS)
    for name in ("rgb.tif", "plain.tif"):
        _label(tmp_path, name)
    manifest, said = _build(tmp_path)
    lines = [line for line in said if "matched by position" in line]
    assert len(lines) == 1, said
    names = tuple(b["name"] for b in manifest["bands"])
    both = {("red", "green", "blue"), ("band1", "band2", "band3")}
    assert names in both
    (other,) = both - {names}
    assert f"({', '.join(other)}) differ from" in lines[0] and f"({', '.join(names)})" in lines[0]
    np.testing.assert_allclose(
        [b["mean"] for b in manifest["bands"]], data.reshape(-1, 3).astype(np.float64).mean(0)
    )
    assert manifest["splits"]["train"]["num_samples"] == 8  # both images, 4 tiles each


def test_band_names_in_another_order_or_another_count_are_errors():
    sums = tile_sums(np.ones((4, 3), np.uint16))
    bands = BuildBands()
    bands.add("a.tif", ("B2", "B3", "B4"), "uint16", None, sums)
    with pytest.raises(BuildError, match=r"b\.tif: bands B4, B3, B2 are a\.tif's .* --bands"):
        bands.add("b.tif", ("B4", "B3", "B2"), "uint16", None, sums)
    with pytest.raises(BuildError, match=r"c\.tif: 2 uint16 bands .* differ from a\.tif's 3"):
        bands.add("c.tif", ("B2", "B3"), "uint16", None, tile_sums(np.ones((4, 2), np.uint16)))
    with pytest.raises(BuildError, match=r"d\.tif: 3 int16 bands"):
        bands.add("d.tif", ("B2", "B3", "B4"), "int16", None, tile_sums(np.ones((4, 3), np.int16)))
    with pytest.raises(BuildError, match=r"g\.tif: 4 uint16 .*; note: g\.tif: band 4 is"):
        four = tile_sums(np.ones((4, 4), np.uint16))
        bands.add("g.tif", ("B2", "B3", "B4", "b4"), "uint16", None, four, ["g.tif: band 4 is …"])
    bands.add("e.tif", ("band1", "band2", "band3"), "uint16", None, sums)
    bands.add("f.tif", ("x", "y", "z"), "uint16", None, sums)
    assert bands.notes() == [
        "e.tif: band names (band1, band2, band3) differ from a.tif's (B2, B3, B4), same count "
        "and type, as in 1 more image(s): matched by position; dataset.json records a.tif's names"
    ]


def test_predict_and_show_read_the_nir_band(tmp_path, capsys):
    import torch

    import archs
    from engine.commands.show import read_image
    from engine.data.shards.normalize import BandStats, Normalization
    from engine.infer.bands import open_model_raster
    from engine.infer.run import PredictOptions, predict_file
    from engine.train.export import save_exported

    data = bgrn()
    path = write_tif(tmp_path / "bgrn.tif", data, RGBA_TAGS)
    names = ["band1", "band2", "band3", "band4"]
    stats = [BandStats(n, "uint16", 3000.0, 1500.0, (200.0, 8800.0), None) for n in names]
    normalization = Normalization(tuple(stats), None)
    with open_model_raster(path, normalization) as reader:
        assert reader.shape == (40, 48, 4)
    manifest = {
        "version": 3,
        "classes": [{"name": "a", "color": "#000000", "value": 0},
                    {"name": "b", "color": "#FFFFFF", "value": 1}],
        **normalization.records(),
    }  # fmt: skip
    torch.manual_seed(0)
    model = archs.create_model("unet", 2, 4, base_width=4)
    spec = {"arch": "unet", "num_classes": 2, "in_channels": 4, "options": {"base_width": 4}}
    export = save_exported(tmp_path / "run" / "best", model, spec, {}, manifest)
    capsys.readouterr()
    options = PredictOptions(device="cpu", progress=False)
    result = predict_file(export, path, tmp_path / "pred", options)
    assert (result.height, result.width) == (40, 48) and result.paths["mask"].is_file()
    assert "note: " + str(path) + ": band 4 ('band4') is tagged alpha" in capsys.readouterr().err
    image, drawn = read_image(str(path), normalization)
    assert image.shape == (4, 40, 48) and drawn is normalization
    assert "band 4 ('band4') is tagged alpha but holds data" in capsys.readouterr().err


def test_read_image_drops_only_a_real_alpha(tmp_path):
    from engine.data.sources.imageio import read_image
    from engine.data.sources.pictures import ImageReadError

    rgbn = np.random.default_rng(6).integers(1, 255, (20, 30, 4)).astype(np.uint8)
    path = write_tif(tmp_path / "rgbn.tif", rgbn, RGBA_TAGS, photometric="RGB")
    with pytest.raises(ImageReadError, match=r"rgbn\.tif: 4-band image"):
        read_image(path)  # the NIR band is not dropped silently
    rgbn[..., 3] = 255
    rgbn[:2, :2, 3] = 0
    path = write_tif(tmp_path / "rgba.tif", rgbn, RGBA_TAGS, photometric="RGB")
    np.testing.assert_array_equal(read_image(path), rgbn[..., :3])
