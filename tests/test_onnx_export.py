"""ONNX export (#25): onnxruntime against PyTorch for every architecture, Deepness metadata,
band selection, untrusted metadata, and ``terraseg export`` / ``predict --model x.onnx``.

Parity compares the exported file on onnxruntime with terraseg's own PyTorch pipeline
(:class:`Normalization` → network → softmax of the segmentation logits), on random native
inputs with nodata pixels and on real rasters (a Dubai tile, a 13-band Sentinel-2 chip).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch
from conftest import dubai_dir  # noqa: F401  (the fixture)

import archs
from engine.data.shards.normalize import BandStats, Normalization
from engine.errors import UserError
from engine.export.onnx import ExportOnnxError, export_onnx
from engine.infer.model import load_model
from engine.infer.strips import _softmax_
from engine.train.export import save_exported

TOLERANCE = 1e-4
CLASSES = [
    {"name": "water", "color": "#1E64E6", "value": 1},
    {"name": "land", "color": "#A88C64", "value": 2},
    {"name": "road", "color": "#E632C8", "value": 3},
]
# tiny but structurally complete variants (an arch added later gets its defaults, shrunk
# where it has the usual width options)
TINY: dict[str, dict] = {
    "fcn8s": {"fc_width": 64, "backbone": "vgg11"},
    "fcn32s": {"fc_width": 64, "backbone": "vgg11"},
    "unet": {"base_width": 4},
    "resunet34": {"encoder": "resnet10t", "decoder_channels": (32, 16, 16, 8, 8)},
}


def tiny_options(name: str) -> dict:
    """Small options for ``name``: :data:`TINY`, else its width options made small."""
    if name in TINY:
        return TINY[name]
    defaults = archs.model_options(name)
    small: dict = {k: 4 for k in ("base_width",) if k in defaults}
    if "fc_width" in defaults:
        small["fc_width"] = 64
    if isinstance(defaults.get("decoder_channels"), (tuple, list)):
        small["decoder_channels"] = tuple(max(8, c // 16) for c in defaults["decoder_channels"])
    return small


def int16_bands(count: int, nodata: float | None = -9999.0) -> Normalization:
    bands = tuple(
        BandStats(f"B{i + 1:02d}", "int16", 1200.0 + 50 * i, 400.0 + 10 * i, (100.0, 3000.0),
                  nodata)
        for i in range(count)
    )  # fmt: skip
    return Normalization(bands, (2, 1, 0) if count >= 3 else None)


def write_export(
    folder: Path, name: str, normalization: Normalization, crop: int = 64, seed: int = 0,
    split: dict | None = None,
) -> torch.nn.Module:
    """Save a tiny random ``name`` model with ``normalization``'s bands as an export folder."""
    torch.manual_seed(seed)
    options = tiny_options(name)
    model = archs.create_model(name, len(CLASSES), normalization.in_channels, **options)
    with torch.no_grad():  # random batch-norm statistics, so they matter in the graph
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    spec = {"arch": name, "num_classes": len(CLASSES),
            "in_channels": normalization.in_channels, "options": options}  # fmt: skip
    manifest = {"classes": CLASSES, "ignore_index": 255, **normalization.records()}
    if split is not None:
        manifest["split"] = split
    save_exported(folder, model, spec, {"data": {"crop_size": crop}}, manifest)
    return model


def torch_probabilities(model, normalization: Normalization, bands: np.ndarray) -> np.ndarray:
    """terraseg's PyTorch pipeline on native NCHW bands (as the sliding window runs it)."""
    with torch.no_grad():
        x = normalization(torch.from_numpy(bands))
        return _softmax_(archs.segmentation_logits(model(x)).float()).numpy()


def run_onnx(path: Path, bands: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"bands": bands.astype(np.float32)})[0]


def random_bands(rng, shape, nodata=-9999.0) -> np.ndarray:
    bands = rng.integers(0, 3000, shape).astype(np.float32)
    bands[:, 0, :5, :7] = nodata  # a nodata corner in one band
    return bands


@pytest.mark.parametrize("name", archs.list_models())
def test_onnxruntime_matches_pytorch_for_every_architecture(name, tmp_path, record_property):
    normalization = int16_bands(4)
    model = write_export(tmp_path / "best", name, normalization)
    path = export_onnx(tmp_path / "best", tmp_path / "model.onnx")
    extent = getattr(model, "input_extent_matters", False)
    shapes = [(2, 4, 64, 64)] if extent else [(2, 4, 64, 64), (1, 4, 96, 128)]
    rng = np.random.default_rng(1)
    errors = []
    for shape in shapes:  # dynamic H/W: a size other than the traced one
        bands = random_bands(rng, shape)
        expected = torch_probabilities(model, normalization, bands)
        got = run_onnx(path, bands)
        assert got.shape == expected.shape
        errors.append(float(np.abs(got - expected).max()))
    record_property("max_abs_error", max(errors))
    print(f"{name}: max |onnx - torch| = {max(errors):.2e}")
    assert max(errors) < TOLERANCE
    fixed = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert bool(fixed[2].dim_value) == extent  # ResUNet-a: fixed to its crop; others dynamic


def test_the_input_stage_of_card_weights_is_in_the_graph(tmp_path):
    from archs.cards import list_cards

    normalization = int16_bands(4)
    torch.manual_seed(0)
    options = {**tiny_options("unet_resnet18"), "input_card": list_cards()[0]}
    model = archs.create_model("unet_resnet18", len(CLASSES), 4, **options).eval()
    stages = [m for m in model.modules() if type(m).__name__ == "InputAffine"]
    assert stages  # the scaling the card's weights expect, applied inside the network
    with torch.no_grad():
        stages[0].scale.uniform_(0.5, 2.0)
        stages[0].shift.uniform_(-1.0, 1.0)
    spec = {"arch": "unet_resnet18", "num_classes": 3, "in_channels": 4, "options": options}
    manifest = {"classes": CLASSES, **normalization.records()}
    save_exported(tmp_path / "best", model, spec, {}, manifest)
    path = export_onnx(tmp_path / "best", tmp_path / "m.onnx")
    bands = random_bands(np.random.default_rng(6), (2, 4, 64, 64))
    error = np.abs(run_onnx(path, bands) - torch_probabilities(model, normalization, bands)).max()
    assert error < TOLERANCE


def test_labels_output_and_fixed_size(tmp_path):
    normalization = int16_bands(4)
    model = write_export(tmp_path / "best", "unet", normalization)
    path = export_onnx(tmp_path / "best", tmp_path / "labels.onnx", output="labels",
                       tile=64, fixed_size=True)  # fmt: skip
    bands = random_bands(np.random.default_rng(2), (3, 4, 64, 64))
    labels = run_onnx(path, bands)
    expected = torch_probabilities(model, normalization, bands).argmax(1)
    assert labels.dtype == np.int64 and labels.shape == (3, 64, 64)
    assert (labels == expected).mean() > 0.999
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [4, 64, 64] and dims[0].dim_param == "batch"
    with pytest.raises(UserError, match="labels"):
        load_model(path, "cpu")  # prediction needs probabilities
    fixed = export_onnx(tmp_path / "best", tmp_path / "fixed.onnx", tile=64, fixed_size=True)
    loaded = load_model(fixed, "cpu")
    assert loaded.tile == 64
    with pytest.raises(UserError, match="64x64 windows only"):
        loaded.exported.model(torch.zeros(1, 4, 32, 32))
    dynamic = load_model(export_onnx(tmp_path / "best", tmp_path / "d.onnx"), "cpu")
    with pytest.raises(UserError, match="size_divisor 16"):
        dynamic.exported.model(torch.zeros(1, 4, 40, 48))


def test_real_dubai_tile_and_sentinel2_chip_with_band_selection(tmp_path, dubai_dir):  # noqa: F811
    from PIL import Image

    image = np.asarray(Image.open(next(iter(sorted((dubai_dir / "Tile 1/images").glob("*.jpg"))))))
    stats = (("red", 110.0, 50.0), ("green", 115.0, 48.0), ("blue", 105.0, 52.0))
    rgb = Normalization(tuple(BandStats(n, "uint8", m, s, (0.0, 255.0)) for n, m, s in stats))
    model = write_export(tmp_path / "rgb", "unet", rgb)
    path = export_onnx(tmp_path / "rgb", tmp_path / "rgb.onnx")
    bands = np.moveaxis(image[:256, :320], -1, 0)[None].astype(np.float32)
    error = np.abs(run_onnx(path, bands) - torch_probabilities(model, rgb, bands)).max()
    print(f"Dubai tile: max |onnx - torch| = {error:.2e}")
    assert error < TOLERANCE

    chip = Path(__import__("os").environ["TERRASEG_MULTISPECTRAL_DIR"]) / "sen1floods11/S2"
    with rasterio.open(next(chip.glob("*.tif"))) as dataset:
        s2 = dataset.read()[:, :256, :256]
        names = list(dataset.descriptions)
    assert s2.dtype == np.int16 and len(names) == 13
    s2[:, :9, :9] = 0  # the chip's nodata value (0), in every band
    picked = ["B4", "B3", "B2", "B8"]  # the model's bands, not in the layer's order
    stats = [(float(s2[names.index(n)].mean()), float(s2[names.index(n)].std())) for n in picked]
    four = Normalization(tuple(BandStats(n, "int16", m, s, (0.0, 3000.0), 0.0)
                               for n, (m, s) in zip(picked, stats)), (0, 1, 2))  # fmt: skip
    model = write_export(tmp_path / "s2", "unet", four)
    path = export_onnx(tmp_path / "s2", tmp_path / "s2.onnx", input_bands=names)
    gathered = s2[[names.index(n) for n in picked]][None].astype(np.float32)
    expected = torch_probabilities(model, four, gathered)
    error = np.abs(run_onnx(path, s2[None].astype(np.float32)) - expected).max()
    print(f"Sentinel-2 13-band chip, 4 bands gathered: max |onnx - torch| = {error:.2e}")
    assert error < TOLERANCE
    with pytest.raises(ExportOnnxError, match="B8"):
        export_onnx(tmp_path / "s2", tmp_path / "bad.onnx", input_bands=names[:7])

    # predict on the 13-band file itself: the ONNX file reads all 13 bands and gathers 4,
    # the PyTorch export reads its 4 by name
    from engine.data.sources.rasters import read_index_mask
    from engine.infer.run import PredictOptions, predict_file

    options = PredictOptions(tile=128, device="cpu", progress=False)
    scene = next(chip.glob("*.tif"))
    ours = predict_file(path, scene, tmp_path / "onnx", options)
    ref = predict_file(tmp_path / "s2", scene, tmp_path / "torch", options)
    a, b = (read_index_mask(r.paths["mask"]) for r in (ours, ref))
    assert a.shape == (512, 512) and (a == b).mean() >= 0.999


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_float_bands_with_nan_nodata_and_both_exporters(tmp_path, exporter):
    bands = tuple(
        BandStats(f"VV{i}", "float32", -12.0 + i, 4.0, (-25.0, 0.0), math.nan) for i in range(2)
    )
    normalization = Normalization(bands, None)
    model = write_export(tmp_path / "best", "unet", normalization)
    path = export_onnx(tmp_path / "best", tmp_path / "m.onnx", exporter=exporter)
    x = np.random.default_rng(5).normal(-12.0, 4.0, (2, 2, 64, 96)).astype(np.float32)
    x[0, 1, 10:20, 30:40] = np.nan
    expected = torch_probabilities(model, normalization, x)
    got = run_onnx(path, x)
    assert np.isfinite(got).all() and np.abs(got - expected).max() < TOLERANCE


def deepness_value(props: dict[str, str], key: str):
    """A metadata value the way Deepness's ModelBase reads it (json.loads, then its cast)."""
    casts = {"model_type": lambda v: str(v).capitalize(), "resolution": float, "tile_size": int,
             "tiles_size": int, "tiles_overlap": int, "seg_thresh": float,
             "seg_small_segment": int,
             "standardization_mean": lambda v: [float(x) for x in v],
             "standardization_std": lambda v: [float(x) for x in v]}  # fmt: skip
    value = json.loads(props[key])
    return casts[key](value) if key in casts else value


def export_props(folder: Path, out: Path, **options) -> dict[str, str]:
    proto = onnx.load(str(export_onnx(folder, out, **options)))
    return {p.key: p.value for p in proto.metadata_props}


def test_resolution_defaults_to_what_the_shards_recorded(tmp_path):
    """Georeferenced shards record their median ground pixel (metres): the file says cm/px."""
    footprints = {"crs": "EPSG:32633", "area_unit": "metre²", "images": 3, "resolution_m": 10.0}
    write_export(tmp_path / "geo", "unet", int16_bands(4), split={"footprints": footprints})
    props = export_props(tmp_path / "geo", tmp_path / "geo.onnx")
    assert deepness_value(props, "resolution") == 1000.0
    props = export_props(tmp_path / "geo", tmp_path / "given.onnx", resolution_cm=50.0)
    assert deepness_value(props, "resolution") == 50.0
    write_export(tmp_path / "plain", "unet", int16_bands(4))
    assert "resolution" not in export_props(tmp_path / "plain", tmp_path / "plain.onnx")


def test_metadata_reads_as_deepness_reads_it(tmp_path):
    normalization = int16_bands(4)
    model = write_export(tmp_path / "best", "unet", normalization)
    path = export_onnx(tmp_path / "best", tmp_path / "m.onnx", tile=128, overlap=0.2,
                       fixed_size=True, resolution_cm=1000.0)  # fmt: skip
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert deepness_value(props, "model_type") == "Segmentor"
    names = deepness_value(props, "class_names")
    assert [names[k] for k in sorted(names, key=int)] == [c["name"] for c in CLASSES]
    assert [int(k) for k in sorted(names, key=int)] == list(range(len(CLASSES)))
    assert deepness_value(props, "resolution") == 1000.0
    assert deepness_value(props, "tile_size") == deepness_value(props, "tiles_size") == 128
    assert deepness_value(props, "tiles_overlap") == 20
    assert deepness_value(props, "seg_thresh") == 0.0
    assert deepness_value(props, "seg_small_segment") == 0
    mean = np.float32(deepness_value(props, "standardization_mean"))
    std = np.float32(deepness_value(props, "standardization_std"))
    assert mean.shape == std.shape == (4,)
    info = json.loads(props["terraseg_input"])
    assert [b["name"] for b in info["bands"]] == normalization.names
    assert [b["nodata"] for b in info["bands"]] == [-9999.0] * 4
    assert json.loads(props["terraseg_version"]) == __import__("engine").__version__
    assert [c["color"] for c in json.loads(props["terraseg_dataset"])["classes"]] == [
        c["color"] for c in CLASSES
    ]
    # Deepness's preprocessing (x / 255, standardised, NHWC → NCHW) then our graph gives
    # what our graph gives the native bands: the standardisation undoes the / 255
    rng = np.random.default_rng(3)
    tiles = rng.integers(-200, 3000, (2, 128, 128, 4)).astype(np.int16)
    tiles[:, :6, :6, 1] = -9999
    deepness = (np.float32(tiles * 1.0 / 255.0) - mean) / std
    deepness = np.transpose(deepness, (0, 3, 1, 2))
    native = np.transpose(tiles, (0, 3, 1, 2)).astype(np.float32)
    assert np.abs(deepness - native).max() > 0  # not exact before the graph's rounding
    got = run_onnx(path, deepness.astype(np.float32))
    expected = torch_probabilities(model, normalization, native)
    assert np.abs(got - expected).max() < TOLERANCE


def _tampered(path: Path, out: Path, key: str, value: str) -> Path:
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("terraseg_model", '{"num_classes": 100000}', "num_classes"),
        ("terraseg_input", "NaN", "not valid JSON"),
        ("terraseg_dataset", '{"classes": []}', "classes"),
        ("terraseg_window", '{"tile": -4, "overlap": 0.25}', "tile"),
        ("terraseg_input", '{"bands": "x"}', "input bands"),
    ],
)
def test_untrusted_metadata_is_a_one_line_error_naming_the_file(tmp_path, key, value, message):
    write_export(tmp_path / "best", "unet", int16_bands(2))
    good = export_onnx(tmp_path / "best", tmp_path / "m.onnx")
    bad = _tampered(good, tmp_path / "bad.onnx", key, value)
    with pytest.raises(UserError, match=message) as info:
        load_model(bad, "cpu")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_export_command_and_predict_on_onnx(tmp_path, capsys):
    from engine.commands.main import main
    from engine.data.sources.rasters import read_index_mask
    from engine.infer.run import PredictOptions, predict_file

    normalization = int16_bands(3, nodata=None)
    write_export(tmp_path / "run" / "best", "unet", normalization)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "x.onnx"),
                 "--input-bands", "B01,B02"]) == 2  # fmt: skip
    assert "lacks the model's band(s) B03" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not list(tmp_path.glob(".x.onnx*"))
    image = np.random.default_rng(4).integers(0, 3000, (3, 150, 170)).astype(np.int16)
    profile = dict(driver="GTiff", height=150, width=170, count=3, dtype="int16")
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dataset:
        dataset.write(image)
        dataset.descriptions = tuple(normalization.names)
    options = PredictOptions(tile=64, tta="flip", device="cpu", progress=False, confidence=True)
    ours = predict_file(out, tmp_path / "scene.tif", tmp_path / "onnx", options)
    ref = predict_file(tmp_path / "run", tmp_path / "scene.tif", tmp_path / "torch", options)
    assert set(ours.paths) == set(ref.paths)
    a, b = (read_index_mask(r.paths["mask"]) for r in (ours, ref))
    assert (a == b).mean() >= 0.999
    with rasterio.open(ours.paths["confidence"]) as x, rasterio.open(ref.paths["confidence"]) as y:
        assert np.abs(x.read().astype(float) - y.read().astype(float)).max() <= 1


def test_missing_onnx_extra_is_named(monkeypatch):
    import importlib

    from engine.export import deps

    real = importlib.import_module

    def refuse(name, *args):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args)

    monkeypatch.setattr(deps.importlib, "import_module", refuse)
    with pytest.raises(deps.MissingExtraError, match=r"pip install terraseg\[onnx\]"):
        load_model("model.onnx", "cpu")


def test_execution_providers_follow_the_device():
    from types import SimpleNamespace

    from engine.infer.onnx_model import _providers

    cpu_only = SimpleNamespace(get_available_providers=lambda: ["CPUExecutionProvider"])
    with_cuda = SimpleNamespace(
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert _providers(cpu_only, "auto") == ["CPUExecutionProvider"]
    assert _providers(with_cuda, "cpu") == ["CPUExecutionProvider"]
    assert _providers(with_cuda, "auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _providers(with_cuda, "cuda:0")[0] == "CUDAExecutionProvider"
    with pytest.raises(UserError, match="no CUDA provider"):
        _providers(cpu_only, "cuda")
