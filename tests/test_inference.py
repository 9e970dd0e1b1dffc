"""Sliding-window inference: exactness against whole-image passes, TTA, sizes, streaming."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from engine.data.shards.normalize import BandStats, Normalization
from engine.data.sources.raster_base import ArrayReader
from engine.infer.outputs import OutputSpec
from engine.infer.sliding import (
    InferenceError,
    SlidingOptions,
    iter_probability_blocks,
    predict_mask,
    predict_probabilities,
    predict_raster,
    rgb_normalization,
)
from engine.infer.windows import column_bands, plan_axis, tile_weights, tta_transforms
from engine.infer.writer import PredictionWriter

MEAN = (0.42, 0.47, 0.51)
STD = (0.21, 0.23, 0.26)
RGB = rgb_normalization(MEAN, STD)
REPO = Path(__file__).resolve().parents[1]


def read_output(path: Path) -> np.ndarray:
    """An output image as ``HxW`` or ``HxWxC``: GeoTIFF through rasterio, PNG through PIL."""
    if path.suffix == ".png":
        from PIL import Image

        return np.array(Image.open(path))
    import rasterio

    with rasterio.open(path) as src:
        data = src.read()
    return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)


def pointwise_model(num_classes: int = 5, seed: int = 0) -> nn.Module:
    """1x1 convolutions only: each output pixel depends on its own input pixel alone."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1)).eval()


class SymmetricConv(nn.Module):
    """Two 3x3 zero-padded convs with D4-symmetric kernels (receptive-field radius 2).

    Symmetric kernels make the network equivariant to flips and 90-degree rotations, so
    TTA must reproduce a plain pass; zero padding makes it differ from a whole-image pass
    within 2 pixels of any tile edge, which the test excludes.
    """

    radius = 2

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, num_classes, 3, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                w = conv.weight
                w.copy_(w + w.flip(-1))
                w.copy_(w + w.flip(-2))
                w.copy_(w + w.transpose(-1, -2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)))


class Multi(NamedTuple):
    segmentation: torch.Tensor
    boundary: torch.Tensor


class MultitaskWrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Multi:
        seg = self.inner(x)
        return Multi(seg, torch.zeros_like(seg))


def whole_image(model: nn.Module, image: np.ndarray) -> np.ndarray:
    """Reference: one forward pass over the whole image, softmax."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).softmax(1)[0].numpy()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def predict(model, image, num_classes=5, **options):
    return predict_probabilities(
        model, image, num_classes=num_classes, normalization=RGB, options=SlidingOptions(**options)
    )


@pytest.mark.parametrize("length", [1, 100, 512, 513, 2048, 2049, 5000])
def test_axis_plan_uses_the_fewest_windows_and_centres_them(length):
    tile, stride = 512, 384
    plan = plan_axis(length, tile, stride)
    count = len(plan.starts)
    assert plan.starts == tuple(i * stride for i in range(count))
    assert plan.padded == (count - 1) * stride + tile >= length
    assert count == 1 or (count - 2) * stride + tile < length  # one window fewer leaves a gap
    slack = plan.padded - length
    assert plan.pad_before == slack // 2  # the border context is split evenly
    if length == 2048:
        assert count == 5  # 5 x 5 windows for a 2048² image, not 6 x 6


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    image = random_image(2000, 3000)
    model = pointwise_model()
    expected = whole_image(model, image)
    probs = predict(model, image, tile=512, overlap=0.25, batch_size=4)
    assert probs.shape == (5, 2000, 3000)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("weighting", ["uniform", "gaussian"])
@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_and_weighting_keep_exactness(tta, weighting):
    image = random_image(500, 700, seed=3)
    model = pointwise_model()
    probs = predict(model, image, tile=256, overlap=0.3, tta=tta, weighting=weighting)
    np.testing.assert_allclose(probs, whole_image(model, image), atol=1e-5, rtol=0)


def _clean(plan, radius: int) -> np.ndarray:
    """Real positions at least ``radius`` from every edge of every window covering them."""
    position = np.arange(plan.length) + plan.pad_before
    clean = (np.arange(plan.length) >= radius) & (np.arange(plan.length) < plan.length - radius)
    for start in plan.starts:
        inside = (position >= start) & (position < start + plan.tile)
        distance = np.minimum(position - start, start + plan.tile - 1 - position)
        clean &= ~inside | (distance >= radius)
    return clean


@pytest.mark.parametrize("tta", ["none", "d4"])
def test_3x3_model_matches_away_from_tile_edges(tta):
    height, width, tile, overlap = 700, 900, 256, 0.25
    image = random_image(height, width, seed=5)
    model = SymmetricConv().eval()
    expected = whole_image(model, image)
    probs = predict(model, image, num_classes=4, tile=tile, overlap=overlap, tta=tta)
    stride = tile - round(tile * overlap)
    rows = _clean(plan_axis(height, tile, stride), model.radius)
    cols = _clean(plan_axis(width, tile, stride), model.radius)
    clean = rows[:, None] & cols[None, :]
    assert clean.mean() > 0.85
    np.testing.assert_allclose(probs[:, clean], expected[:, clean], atol=1e-5, rtol=0)
    # near tile edges the zero padding does change the 3x3 model's output a little
    assert np.abs(probs[:, ~clean] - expected[:, ~clean]).max() > 1e-4


@pytest.mark.parametrize(
    ("height", "width", "tile"),
    [(37, 1001, 256), (1001, 37, 256), (1, 1, 64), (5, 7, 64), (300, 257, 256), (64, 64, 64)],
)
def test_any_size_works_and_keeps_shape(height, width, tile):
    image = random_image(height, width, seed=height + width)
    model = pointwise_model()
    probs = predict(model, image, tile=tile, overlap=0.25, batch_size=3)
    assert probs.shape == (5, height, width)
    np.testing.assert_allclose(probs, whole_image(model, image), atol=1e-5, rtol=0)
    mask = predict_mask(
        model, image, num_classes=5, normalization=RGB, options=SlidingOptions(tile=tile)
    )
    assert mask.shape == (height, width) and mask.dtype == np.uint8


def test_batch_size_and_input_kind_do_not_change_the_result():
    image = random_image(400, 650, seed=7)
    model = pointwise_model()
    one = predict(model, image, tile=128, batch_size=1)
    many = predict(model, torch.from_numpy(image), tile=128, batch_size=7)
    reader = predict(model, ArrayReader(image), tile=128, batch_size=64)
    np.testing.assert_allclose(one, many, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one, reader, atol=1e-6, rtol=0)


def test_multitask_output_uses_segmentation_and_mode_is_restored():
    image = random_image(200, 300, seed=8)
    inner = pointwise_model()
    model = MultitaskWrapper(inner).train()
    probs = predict(model, image, tile=128)
    np.testing.assert_allclose(probs, whole_image(inner, image), atol=1e-5, rtol=0)
    assert model.training


def test_wrong_logits_shape_is_a_clear_error():
    model = pointwise_model(num_classes=3)
    with pytest.raises(ValueError, match="expected \\[B, 5, 64, 64\\]"):
        predict(model, random_image(80, 80), tile=64)


def test_bad_inputs_are_rejected():
    model = pointwise_model()
    with pytest.raises(InferenceError, match=r"1 band\(s\) \(band1\), but the model takes 3"):
        predict(model, np.zeros((10, 10), np.uint8), tile=64)
    with pytest.raises(ValueError, match="overlap"):
        predict(model, random_image(10, 10), tile=64, overlap=1.0)
    with pytest.raises(ValueError, match="tta"):
        predict(model, random_image(10, 10), tile=64, tta="rot")


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_native_bands_are_normalised_per_band_with_nodata_as_zero(dtype):
    """5 bands at native precision: the sliding window feeds the model (x - mean) / std per
    band and 0 where a band is nodata, as the contract's Normalization does."""
    rng = np.random.default_rng(31)
    image = rng.integers(100, 9000, (90, 130, 5)).astype(dtype)
    nodata = 0
    image[10:20, 5:60, 2] = nodata  # one band missing
    image[70:, 100:] = nodata  # every band missing
    bands = tuple(
        BandStats(f"b{i}", dtype, 4000.0 + 100 * i, 2500.0 - 50 * i, (300.0, 8800.0), nodata)
        for i in range(5)
    )
    normalization = Normalization(bands, None)
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(5, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    probs = predict_probabilities(
        model, image, num_classes=4, normalization=normalization,
        options=SlidingOptions(tile=64, overlap=0.25),
    )  # fmt: skip
    native = torch.from_numpy(image.astype(np.float64)).permute(2, 0, 1)[None]
    mean = torch.tensor([b.mean for b in bands], dtype=torch.float64).view(1, 5, 1, 1)
    std = torch.tensor([b.std for b in bands], dtype=torch.float64).view(1, 5, 1, 1)
    x = torch.where(native == nodata, 0.0, (native - mean) / std).float()
    with torch.no_grad():
        expected = model(x).softmax(1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        zero = model(torch.zeros(1, 5, 1, 1)).softmax(1)[0, :, 0, 0].numpy()
    np.testing.assert_allclose(probs[:, 80, 120], zero, atol=1e-5)
    native = torch.from_numpy(image).permute(2, 0, 1)[None]
    native = native.to(torch.int32) if dtype == "uint16" else native  # as sliding does
    unit = normalization.to_unit(native)  # the two-step path augmentation takes
    assert torch.equal(normalization(native), normalization.standardize_unit(unit))
    with pytest.raises(InferenceError, match=r"4 band\(s\).*model takes 5 \(b0, b1"):
        predict_probabilities(
            model, image[..., :4], num_classes=4, normalization=normalization,
            options=SlidingOptions(tile=64),
        )  # fmt: skip


def test_bf16_autocast_runs_on_cpu():
    image = random_image(100, 120, seed=9)
    model = pointwise_model()
    probs = predict(model, image, tile=64, amp_dtype="bf16")
    np.testing.assert_allclose(probs, whole_image(model, image), atol=0.03)


def test_tta_transforms_are_inverted():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    for mode, count in (("none", 1), ("flip", 3), ("d4", 8)):
        pairs = tta_transforms(mode)
        assert len(pairs) == count
        outputs = {tuple(fwd(x).flatten().tolist()) for fwd, _ in pairs}
        assert len(outputs) == count  # all distinct
        for fwd, inv in pairs:
            assert torch.equal(inv(fwd(x)), x)


def test_weights_are_positive_and_peak_in_the_centre():
    weights = tile_weights(64)
    assert weights.shape == (64, 64)
    assert weights.min() > 0
    assert weights[31:33, 31:33].min() == weights.max()
    assert torch.equal(tile_weights(8, "uniform"), torch.ones(8, 8))


class CountingReader(ArrayReader):
    def __init__(self, array):
        super().__init__(array)
        self.windows = []

    def read(self, row0, row1, col0, col1):
        self.windows.append((row0, row1, col0, col1))
        return super().read(row0, row1, col0, col1)


class RecordingWriter:
    def __init__(self, width):
        self.width = width
        self.blocks = []

    def write(self, row0, probs, col0=0):
        assert col0 == 0 and probs.shape[2] == self.width
        self.blocks.append((row0, probs.copy()))


def test_streaming_reads_strips_and_writes_rows_in_order():
    height, width, tile = 1000, 600, 128
    image = random_image(height, width, seed=11)
    model = pointwise_model()
    reader, writer = CountingReader(image), RecordingWriter(width)
    predict_raster(
        model,
        reader,
        writer,
        num_classes=5,
        normalization=RGB,
        options=SlidingOptions(tile=tile, batch_size=3, rows_per_block=50),
    )
    assert all(r1 - r0 <= tile for r0, r1, _, _ in reader.windows)  # never more than a strip
    rows = [row0 for row0, _ in writer.blocks]
    sizes = [probs.shape[1] for _, probs in writer.blocks]
    assert rows[0] == 0 and max(sizes) <= 50
    assert all(a + n == b for a, n, b in zip(rows, sizes, rows[1:]))  # consecutive, no gaps
    assert rows[-1] + sizes[-1] == height
    streamed = np.concatenate([probs for _, probs in writer.blocks], axis=1)
    np.testing.assert_allclose(streamed, whole_image(model, image), atol=1e-5, rtol=0)


def test_rows_are_emitted_before_the_image_is_finished():
    image = random_image(2000, 64, seed=12)
    blocks = iter_probability_blocks(
        pointwise_model(), image, num_classes=5, normalization=RGB,
        options=SlidingOptions(tile=64, overlap=0.25),
    )  # fmt: skip
    row0, col0, probs = next(blocks)
    assert row0 == col0 == 0 and probs.shape[1] <= 64 and probs.shape[2] == 64
    blocks.close()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_column_bands_cover_every_window_each_owned_column_needs(overlap):
    tile = 64
    stride = tile - round(tile * overlap)
    cols = plan_axis(1000, tile, stride)
    for band_width in (1, stride, 200, 600):
        bands = column_bands(cols, stride, band_width)
        assert len(bands) > 1
        assert bands[0].own0 == 0 and bands[-1].own1 == cols.padded
        assert all(a.own1 == b.own0 for a, b in zip(bands, bands[1:]))  # a partition
        for band in bands:
            computed = set(range(band.first, band.stop))
            for x in range(band.own0, band.own1):
                covering = {j for j, start in enumerate(cols.starts) if start <= x < start + tile}
                assert covering <= computed, (band_width, band, x)
            assert band.stop - band.first <= max(1, band_width // stride) + math.ceil(
                (tile - stride) / stride
            )
    assert column_bands(cols, stride, None) == column_bands(cols, stride, cols.padded)
    assert len(column_bands(cols, stride, None)) == 1


@pytest.mark.parametrize("overlap", [0.25, 0.6])
def test_column_bands_give_the_one_band_result_and_read_only_their_columns(overlap):
    """A model with a receptive field (so windows disagree near their edges and blending
    matters): any band width gives the one-band probabilities."""
    image = random_image(300, 1100, seed=21)
    model = SymmetricConv(num_classes=4)
    options = dict(num_classes=4, tile=96, overlap=overlap, batch_size=5, tta="flip")
    one_band = predict(model, image, band_width=None, **options)
    for band_width in (100, 333):
        reader = CountingReader(image)
        banded = predict(model, reader, band_width=band_width, **options)
        np.testing.assert_allclose(banded, one_band, atol=1e-6, rtol=0)
        # the widest read: the owned columns plus the windows reaching in from the left
        assert max(c1 - c0 for _, _, c0, c1 in reader.windows) <= band_width + 2 * 96


def test_banded_prediction_writes_the_same_files(tmp_path):
    """Column bands reach the writer out of row order; it stages them and writes the same
    outputs (values, nodata, GDAL masks) as a streamed pass, leaving no staging file behind."""
    import rasterio

    image = random_image(200, 700, seed=22)
    image[50:90, 100:400] = 0  # nodata: every band 0 (and any random pixel with a 0)
    valid = image.all(-1)
    model = SymmetricConv(num_classes=4)
    palette = ["#000000", "#FF0000", "#00FF00", "#0000FF"]
    kinds = ("mask", "color", "confidence", "probabilities", "overlay")
    outputs = {}
    for name, band_width in (("one", None), ("banded", 150)):
        for fmt in ("png", "tif", "cog"):
            out = tmp_path / f"{name}-{fmt}"
            reader = ArrayReader(image, nodata=0)
            spec = OutputSpec(fmt=fmt, confidence=True, probabilities=fmt != "png", overlay=True)
            with PredictionWriter(out, "x", 200, 700, palette, spec, source=reader) as writer:
                predict_raster(
                    model, reader, writer, num_classes=4, normalization=RGB,
                    options=SlidingOptions(tile=64, overlap=0.25, band_width=band_width),
                )  # fmt: skip
            ext = "png" if fmt == "png" else "tif"
            written = [k for k in kinds if fmt != "png" or k != "probabilities"]
            assert sorted(p.name for p in out.iterdir()) == sorted(f"x_{k}.{ext}" for k in written)
            for path in out.iterdir():
                outputs[name, fmt, path.name] = read_output(path)
                if fmt != "png":
                    with rasterio.open(path) as src:
                        outputs[name, fmt, path.name + "/mask"] = src.dataset_mask()
    assert outputs["one", "png", "x_mask.png"][~valid].tolist() == [255] * (~valid).sum()
    for fmt in ("tif", "cog"):
        for kind in kinds:
            assert np.array_equal(outputs["one", fmt, f"x_{kind}.tif/mask"] > 0, valid), kind
        probs = outputs["one", fmt, "x_probabilities.tif"]
        assert np.isnan(probs[~valid]).all() and np.allclose(probs[valid].sum(-1), 1, atol=1e-5)
    for (name, fmt, file), array in outputs.items():
        if name == "banded":
            other = outputs["one", fmt, file]
            assert np.array_equal(array, other, equal_nan=array.dtype.kind == "f"), (fmt, file)


def test_original_values_are_written_as_uint16_or_rgb_streamed_or_banded(tmp_path):
    """--values original: the mask holds the dataset's values (uint16 above 255, RGB for
    colour classes) in PNG and TIFF, streamed or staged in column bands."""
    from engine.infer.values import ValuesError, original_values

    image = random_image(70, 200, seed=23)
    model = SymmetricConv(num_classes=3)
    palette = ["#000000", "#FF0000", "#00FF00"]
    index_values = (("a", 0), ("b", 1000), ("c", [65535, 7]))
    rgb_values = (("a", "#010203"), ("b", "#FFFFFF"), ("c", "#0A0B0C"))
    index_manifest = {"classes": [{"name": n, "value": v} for n, v in index_values]}
    rgb_manifest = {"classes": [{"name": n, "value": v} for n, v in rgb_values]}
    written = {}
    for label, manifest in (("index", index_manifest), ("rgb", rgb_manifest)):
        lut = original_values(manifest)
        for band_width in (None, 80):
            for fmt in ("png", "tif"):
                out = tmp_path / f"{label}-{band_width}-{fmt}"
                spec = OutputSpec(fmt=fmt, mask_values=lut)
                with PredictionWriter(out, "x", 70, 200, palette, spec) as w:
                    predict_raster(
                        model, ArrayReader(image), w, num_classes=3, normalization=RGB,
                        options=SlidingOptions(tile=64, band_width=band_width),
                    )  # fmt: skip
                path = out / f"x_mask.{fmt}"
                written[label, band_width, fmt] = read_output(path)
                assert sorted(p.name for p in out.iterdir()) == [f"x_color.{fmt}", f"x_mask.{fmt}"]
    index = predict(model, image, tile=64, num_classes=3).argmax(axis=0)
    expected = {
        "index": np.array([0, 1000, 65535], np.uint16)[index],
        "rgb": np.array([(1, 2, 3), (255, 255, 255), (10, 11, 12)], np.uint8)[index],
    }
    for (label, _, _), array in written.items():
        assert array.dtype == expected[label].dtype
        np.testing.assert_array_equal(array, expected[label])
    assert original_values(index_manifest)[255] == 255
    assert original_values({"classes": [{"name": "a", "value": 3}]}).dtype == np.uint8
    with pytest.raises(ValuesError, match="class 'a' has no 'value'"):
        original_values({"classes": [{"name": "a", "color": "#000000"}]})
    with pytest.raises(ValuesError, match="mix colours and integers"):
        original_values({"classes": [{"name": "a", "value": 1}, {"name": "b", "value": "#000000"}]})


def test_incomplete_banded_writes_are_an_error_and_leave_nothing(tmp_path):
    writer = PredictionWriter(tmp_path, "x", 10, 20, ["#000000", "#FFFFFF"], OutputSpec("tif"))
    probs = np.full((2, 10, 12), 0.5, np.float32)
    writer.write(0, probs, col0=0)
    assert any(p.name.endswith(".bands") for p in tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="120 of 200 pixels"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="outside the 10x20 image"):
        writer = PredictionWriter(tmp_path, "y", 10, 20, ["#000000"], OutputSpec("png"))
        writer.write(0, probs, col0=12)


MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from engine.data.sources.rasters import open_raster
    from engine.infer.outputs import OutputSpec
    from engine.infer.sliding import SlidingOptions, predict_raster, rgb_normalization
    from engine.infer.writer import prediction_writer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1))
    def high_water_mb():
        # VmHWM is this process's own peak; ru_maxrss would include the parent's RSS at
        # fork time, which Linux keeps across exec (a big pytest process reads as ours).
        with open("/proc/self/status") as status:
            line = next(l for l in status if l.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    base = high_water_mb()
    src, out = sys.argv[1], sys.argv[2]
    tile, band_width = (json.loads(sys.argv[3]) if len(sys.argv) > 3 else [1024, 16384])
    with open_raster(src) as reader:
        with prediction_writer(reader, out, ["#000000", "#FF0000", "#00FF00", "#0000FF"],
                               OutputSpec("tif", color=False)) as writer:
            predict_raster(model, reader, writer, num_classes=4,
                           normalization=rgb_normalization([0.5] * 3, [0.25] * 3),
                           options=SlidingOptions(tile=tile, overlap=0.25, batch_size=4,
                                                  band_width=band_width))
    torch.save(model.state_dict(), out + "/model.pt")
    peak = high_water_mb()
    print(json.dumps({"peak_mb": peak, "base_mb": base,
                      "paths": {k: str(v) for k, v in writer.paths.items()}}))
    """
)


def write_random_tiff(path: Path, height: int, width: int) -> None:
    """An uncompressed RGB GeoTIFF written 500 rows at a time, never whole in memory."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    options = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8")
    with rasterio.open(path, "w", photometric="RGB", **options) as dst:
        for row in range(0, height, 500):
            rows = min(500, height - row)
            block = rng.integers(0, 256, (3, rows, width), dtype=np.uint8)
            dst.write(block, window=Window(0, row, width, rows))


def predict_in_child(source: Path, out: Path, *options) -> dict:
    """Run MEMORY_CHILD on ``source`` in a fresh interpreter; its JSON report."""
    out.mkdir()
    extra = [json.dumps(list(options))] if options else []
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(source), str(out), *extra],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_column_bands_keep_memory_flat_in_the_width(tmp_path):
    """512 x 4096 and 512 x 32768 rasters, bands of 2048 columns: the same peak memory
    (one band would need ~350 MB more for the wide one's accumulators alone)."""
    peaks = {}
    for width in (4096, 32768):
        source = tmp_path / f"wide-{width}.tif"
        write_random_tiff(source, 512, width)
        report = predict_in_child(source, tmp_path / f"out-{width}", 512, 2048)
        peaks[width] = report["peak_mb"]
    assert peaks[32768] - peaks[4096] < 100, peaks


@pytest.mark.slow
def test_large_raster_streams_with_bounded_memory(tmp_path):
    """8000x8000 TIFF (183 MB): peak RSS of a fresh process stays under 2 GB.

    The 20000x20000 measurement is ``bench/bench_inference_memory.py``.
    """
    import rasterio
    from rasterio.windows import Window

    size = 8000
    source = tmp_path / "big.tif"
    write_random_tiff(source, size, size)
    report = predict_in_child(source, tmp_path / "out")
    assert report["peak_mb"] < 2048, report
    assert sorted(report["paths"]) == ["mask"]
    # spot-check windows against a direct pass of the same pointwise model
    model = pointwise_model(num_classes=4)
    model.load_state_dict(torch.load(tmp_path / "out" / "model.pt"))
    with rasterio.open(report["paths"]["mask"]) as out, rasterio.open(source) as src:
        assert (out.height, out.width, out.count) == (size, size, 1)
        for row, col in ((0, 0), (3999, 5123), (7900, 7800)):
            window = Window(col, row, 200, 100)
            image = np.moveaxis(src.read(window=window), 0, -1)
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
            with torch.no_grad():
                expected = model((x - 0.5) / 0.25).argmax(1)[0].numpy()
            agree = (out.read(1, window=window) == expected).mean()
            assert agree > 0.999
