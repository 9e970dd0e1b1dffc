"""Pictures of multispectral images: rgb_bands, per-band display stretch, single bands, nodata."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.shards.normalize import BandStats, Normalization
from engine.data.sources.paths import multispectral_dataset_dir
from engine.errors import UserError
from engine.render.colors import RenderError, display_rgb, image_normalization
from engine.render.figures import Display, mask_figure, panel

REPO = Path(__file__).resolve().parents[1]
S2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
NAMES = ["water", "land"]
PALETTE = ["#1F77B4", "#FF7F0E"]

# Offsets from a band's display low (its span is 510 = 2 x 255) and the stretched value each
# must give: clipped below, exact, a half rounded up, a half rounded up, exact, top, clipped.
OFFSETS = np.array([-50, 0, 1, 254, 255, 508, 510, 900])
STRETCHED = np.array([0, 0, 1, 127, 128, 254, 255, 255], np.uint8)


def sentinel2_like(nodata: float | None = None) -> tuple[np.ndarray, Normalization]:
    """A 13-band int16 ``[13, 1, 8]`` image; band ``i`` shows OFFSETS rolled by ``i``."""
    bands, rows = [], []
    for i, name in enumerate(S2):
        low = 100 * i - 233  # negative for the first bands (int16 is signed); never 0
        bands.append(BandStats(name, "int16", 1000.0, 300.0, (low, low + 510), nodata))
        rows.append(low + np.roll(OFFSETS, i))
    image = np.stack(rows)[:, None, :].astype(np.int16)
    return image, Normalization(tuple(bands), (3, 2, 1))


def expected(band: int) -> np.ndarray:
    """What band ``band`` of :func:`sentinel2_like` must look like, ``[1, 8]``."""
    return np.roll(STRETCHED, band)[None, :]


def test_int16_bands_are_stretched_by_their_display_range_exactly():
    image, normalization = sentinel2_like()
    picture = display_rgb(image, normalization)  # rgb_bands (3, 2, 1) = B4, B3, B2
    assert picture.dtype == np.uint8 and picture.shape == (1, 8, 3)
    for position, band in enumerate((3, 2, 1)):
        np.testing.assert_array_equal(picture[..., position], expected(band))
    # a tensor (as batches and samples hold them) and channels-last (as readers return) agree
    np.testing.assert_array_equal(display_rgb(torch.from_numpy(image), normalization), picture)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    np.testing.assert_array_equal(display_rgb(hwc, normalization, channels_last=True), picture)


def test_a_single_band_in_grey_by_name_or_number_and_a_false_colour_view():
    image, normalization = sentinel2_like()
    grey = display_rgb(image, normalization, band="B8")
    for position in range(3):
        np.testing.assert_array_equal(grey[..., position], expected(7))
    np.testing.assert_array_equal(display_rgb(image, normalization, band=8), grey)  # 1-based
    np.testing.assert_array_equal(display_rgb(image, normalization, band="b8"), grey)
    cir = display_rgb(image, normalization, rgb=["B8", "B4", "3"])
    for position, band in enumerate((7, 3, 2)):
        np.testing.assert_array_equal(cir[..., position], expected(band))


def test_data_without_rgb_bands_shows_the_first_band_in_grey():
    image, normalization = sentinel2_like()
    picture = display_rgb(image, Normalization(normalization.bands, None))
    for position in range(3):
        np.testing.assert_array_equal(picture[..., position], expected(0))


def test_nodata_pixels_are_black_whichever_band_holds_them():
    image, normalization = sentinel2_like(nodata=0)
    image = np.repeat(image, 3, axis=1)  # [13, 3, 8]: rows 1 and 2 get nodata
    image[12, 1, 5] = 0  # B12, a band not shown: the pixel is still nodata
    image[3, 2, 0] = 0  # B4, shown as red
    picture = display_rgb(image, normalization)
    flagged = normalization.nodata_mask(torch.from_numpy(image)[None]).any(1)[0].numpy()
    assert flagged.sum() == 2 and flagged[1, 5] and flagged[2, 0]
    np.testing.assert_array_equal(picture[flagged], np.zeros((2, 3), np.uint8))
    for position, band in enumerate((3, 2, 1)):  # the other pixels are stretched as before
        np.testing.assert_array_equal(
            picture[~flagged][:, position], np.repeat(expected(band), 3, axis=0)[~flagged]
        )
    magenta = display_rgb(image, normalization, nodata_color="#FF00FF")
    assert (magenta[flagged] == (255, 0, 255)).all() and (
        magenta[~flagged] == picture[~flagged]
    ).all()


def test_float32_db_bands_with_nan_nodata():
    bands = tuple(BandStats(n, "float32", -15.0, 5.0, (-25.0, 0.0), math.nan) for n in ("VV", "VH"))
    normalization = Normalization(bands, None)
    image = np.array([[[-30.0, -25.0, -12.5, 0.0, 3.0]], [[-20.0, np.nan, -20.0, -20.0, -20.0]]])
    picture = display_rgb(image.astype(np.float32), normalization)  # VV in grey
    np.testing.assert_array_equal(picture[0, :, 0], [0, 0, 128, 255, 255])
    assert (picture[0, 1] == 0).all()  # NaN in VH (not shown) is nodata: black
    assert (picture[..., 0] == picture[..., 2]).all()


def test_version2_uint8_pictures_are_the_stored_pixels(tmp_path):
    normalization = Normalization.from_manifest({"mean": [0.4, 0.5, 0.3], "std": [0.2] * 3})
    rng = np.random.default_rng(0)
    image = np.stack([rng.permutation(256).reshape(16, 16) for _ in range(3)]).astype(np.uint8)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    np.testing.assert_array_equal(display_rgb(image, normalization), hwc)
    np.testing.assert_array_equal(display_rgb(image), hwc)  # no manifest: uint8 RGB as it is
    truth = (np.arange(256).reshape(16, 16) % 2).astype(np.uint8)
    display = Display(normalization=normalization)
    native = panel(torch.from_numpy(image), truth, 1 - truth, NAMES, PALETTE, display=display)
    np.testing.assert_array_equal(native, panel(hwc, truth, 1 - truth, NAMES, PALETTE))
    overlaid = mask_figure(truth, NAMES, PALETTE, image=image, display=display)
    np.testing.assert_array_equal(overlaid, mask_figure(truth, NAMES, PALETTE, image=hwc))


def test_pictures_refuse_other_bands_with_one_line_errors():
    image, normalization = sentinel2_like()
    cases = [
        (lambda: display_rgb(image[:4], normalization), "image has 4 bands"),
        (lambda: display_rgb(image, normalization, band="B13"), "no band named 'B13'"),
        (lambda: display_rgb(image, normalization, band=14), "no band 14 .*13:B12"),
        (lambda: display_rgb(image, normalization, band=0), "no band 0 .*1-based"),
        (lambda: display_rgb(image, normalization, rgb=["B4", "B3"]), "3 bands"),
        (lambda: panel(image, None, None, NAMES, PALETTE), "pass normalization="),
    ]
    for call, message in cases:
        with pytest.raises(RenderError, match=message) as caught:
            call()
        assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_the_real_sentinel2_chip_is_stretched_by_its_own_percentiles():
    import rasterio

    path = multispectral_dataset_dir() / "sen1floods11" / "S2" / "Spain_7370579_S2Hand.tif"
    with rasterio.open(path) as source:
        image, nodata, names = source.read(), source.nodata, list(source.descriptions)
    assert image.shape == (13, 512, 512) and image.dtype == np.int16 and nodata == 0
    normalization = image_normalization(image, nodata, names)
    b8 = names.index("B8")
    low, high = np.percentile(image[b8].astype(np.float64), (2, 98))
    assert normalization.bands[b8].display == (low, high) and normalization.rgb_bands is None
    grey = display_rgb(image, normalization, band="B8")[..., 0]
    assert 0.015 < (grey == 0).mean() < 0.03 and 0.015 < (grey == 255).mean() < 0.03
    edge = image.copy()
    edge[:, :, :40] = 0  # a swath edge: nodata in every band
    picture = display_rgb(edge, normalization, rgb=["B4", "B3", "B2"])
    assert (picture[:, :40] == 0).all()
    assert (picture[:, 40:].max(-1) > 0).mean() > 0.95


def _run_show(monkeypatch, argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("show", REPO / "launch" / "show.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["show", *argv])
    return module.main(argv)


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.slow
def test_show_draws_shards_with_the_manifests_bands(tmp_path, monkeypatch, capsys):
    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.shards.loader import read_sample
    from engine.data.shards.manifest import load_manifest
    from engine.data.sources.classes import load_classes
    from engine.data.sources.pairing import pair_by_glob
    from engine.data.synthetic.scenes import write_dataset

    data = write_dataset(
        tmp_path / "data", num_groups=2, scenes_per_group=1, size=(64, 64), nodata_fraction=0.0
    )
    pairs = pair_by_glob(str(data / "*/images/*.jpg"), str(data / "*/masks/*.png"), r"^(Scene \d+)")
    classes = load_classes(data / "classes.yaml")
    shards = tmp_path / "shards"
    build_shards(pairs, classes, shards, BuildOptions(tile=32, val=0.5, test=0.0))
    record = json.loads((shards / "dataset.json").read_text())
    names, palette = [c["name"] for c in record["classes"]], [c["color"] for c in record["classes"]]
    sample = read_sample(load_manifest(shards), "val", 1)
    common = ["--shards", str(shards), "--split", "val", "--index", "1", "--title", "t"]

    def show(out: str, *extra: str) -> np.ndarray:
        assert _run_show(monkeypatch, [*common, "--out", str(tmp_path / out), *extra]) == 0
        return _pixels(tmp_path / out)

    def drawn(picture: np.ndarray) -> np.ndarray:
        panel(picture, sample.mask.numpy(), None, names, palette, tmp_path / "want.png", title="t")
        return _pixels(tmp_path / "want.png")

    # As built (uint8, display 0..255) and as a version 2 manifest: the stored pixels.
    stored = sample.image.permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(show("built.png"), drawn(stored))
    version2 = {k: v for k, v in record.items() if k not in ("bands", "rgb_bands")}
    version2 |= {"version": 2, "mean": [0.5] * 3, "std": [0.25] * 3}
    (shards / "dataset.json").write_text(json.dumps(version2))
    np.testing.assert_array_equal(show("v2.png"), drawn(stored))

    # Display ranges and rgb_bands of the manifest; --band and --rgb by name or number.
    record["bands"][0]["display"] = [50, 200]
    record["bands"][1]["display"] = [0, 100]
    record["bands"][2]["display"] = [100, 255]
    record["rgb_bands"] = [2, 0, 1]
    (shards / "dataset.json").write_text(json.dumps(record))
    normalization = Normalization.from_manifest(record)
    default = show("rgb.png")
    np.testing.assert_array_equal(default, drawn(display_rgb(sample.image, normalization)))
    assert not np.array_equal(default, drawn(stored))
    want = drawn(display_rgb(sample.image, normalization, band="green"))
    np.testing.assert_array_equal(show("green.png", "--band", "green"), want)
    np.testing.assert_array_equal(show("two.png", "--band", "2"), want)
    want = drawn(display_rgb(sample.image, normalization, rgb=["blue", "green", "red"]))
    np.testing.assert_array_equal(show("bgr.png", "--rgb", "blue,2,1"), want)
    capsys.readouterr()
    assert _run_show(monkeypatch, [*common, "--out", str(tmp_path / "x.png"), "--band", "nir"]) == 2
    assert "no band named 'nir'" in capsys.readouterr().err and not (tmp_path / "x.png").exists()

    # A model exported with this version 3 record predicts the sample on the fly.
    import archs
    from engine.train.export import save_exported

    spec = {"arch": "unet", "num_classes": len(names), "in_channels": 3}
    spec["options"] = {"base_width": 4}
    model = archs.create_model("unet", len(names), 3, base_width=4)
    save_exported(tmp_path / "run" / "best", model, spec, {}, record)
    pixels = show("predicted.png", "--model", str(tmp_path / "run"), "--device", "cpu")
    assert pixels.shape[1] == 1600  # image | truth | prediction | errors
