"""Export round trip (safetensors + json + yaml), loading errors, and predict.py end to end."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import RGB_MANIFEST as MANIFEST
from PIL import Image
from torch import nn

from engine.data.shards.normalize import BandStats, Normalization
from engine.train.export import ExportError, load_exported, save_exported

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model": {"arch": "unet"}, "optim": {"lr": 1e-3}, "data": Path("/data/shards")}
# What an export records of a version 2 manifest: three uint8 bands with its 0-1 statistics.
RGB_RECORDS = Normalization.from_manifest(MANIFEST).records()


class TinyNet(nn.Module):
    """Stand-in for an archs model: conv + BN (has buffers) + 1x1 head."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def model_factory(monkeypatch):
    """A tiny model through the real ``archs`` registry when it exists, else a stand-in."""
    try:
        import archs

        if archs.is_model("unet"):
            spec = {
                "arch": "unet",
                "num_classes": 3,
                "in_channels": 3,
                "options": {"base_width": 4, "depth": 2},
            }
            return spec, lambda: archs.create_model("unet", 3, 3, base_width=4, depth=2)
    except ImportError:
        pass
    fake = types.ModuleType("archs")
    fake.create_model = lambda name, num_classes, in_channels=3, **options: TinyNet(
        num_classes, in_channels, **options
    )
    monkeypatch.setitem(sys.modules, "archs", fake)
    spec = {"arch": "tiny", "num_classes": 3, "in_channels": 3, "options": {"width": 4}}
    return spec, lambda: TinyNet(3, 3, width=4)


def _trained(make) -> nn.Module:
    torch.manual_seed(0)
    model = make()
    model.train()
    with torch.no_grad():  # move BN running stats away from their defaults
        for _ in range(3):
            model(torch.randn(2, 3, 64, 64) * 2 + 1)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def test_round_trip_gives_identical_outputs(tmp_path, model_factory):
    spec, make = model_factory
    model = _trained(make)
    run = tmp_path / "run"
    best = save_exported(run / "best", model, spec, CONFIG, MANIFEST)
    assert sorted(p.name for p in best.iterdir()) == [
        "config.yaml",
        "dataset.json",
        "model.json",
        "model.safetensors",
    ]
    assert json.loads((best / "model.json").read_text()) == spec | RGB_RECORDS
    assert yaml.safe_load((best / "config.yaml").read_text())["data"] == "/data/shards"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    for where in (run, best, best / "model.safetensors"):
        loaded = load_exported(where)
        assert not loaded.model.training
        assert loaded.spec == spec | RGB_RECORDS and loaded.manifest == MANIFEST
        assert loaded.normalization == Normalization.from_manifest(MANIFEST)
        assert loaded.config["optim"] == {"lr": 1e-3}
        with torch.no_grad():
            assert torch.equal(loaded.model(x), expected)
    # saving again replaces the export atomically, leaving no staging folders behind
    save_exported(run / "best", model, spec, CONFIG, MANIFEST)
    assert sorted(p.name for p in run.iterdir()) == ["best"]


def test_checkpoint_weights_take_the_runs_spec(tmp_path, model_factory):
    from safetensors.torch import save_file

    spec, make = model_factory
    save_exported(tmp_path / "run" / "best", _trained(make), spec, CONFIG, MANIFEST)
    later = _trained(make)
    with torch.no_grad():
        for parameter in later.parameters():
            parameter.mul_(1.5)
    step = tmp_path / "run" / "checkpoints" / "step-00000100"
    step.mkdir(parents=True)
    save_file(
        {f"_orig_mod.{k}": v.contiguous() for k, v in later.state_dict().items()},
        str(step / "model.safetensors"),
    )
    x = torch.randn(1, 3, 32, 32)
    for where in (step, step / "model.safetensors"):
        loaded = load_exported(where)
        assert loaded.spec == spec | RGB_RECORDS
        with torch.no_grad():
            assert torch.equal(loaded.model(x), later(x))


def test_compiled_or_wrapped_models_save_plain_names(tmp_path, model_factory):
    spec, make = model_factory
    model = _trained(make)
    wrapped = nn.DataParallel(model)
    save_exported(tmp_path / "best", wrapped, spec, {}, MANIFEST)
    loaded = load_exported(tmp_path / "best")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_missing_files_are_named(tmp_path, model_factory):
    spec, make = model_factory
    with pytest.raises(ExportError, match="nothing"):
        load_exported(tmp_path / "nothing")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ExportError, match="best/model.safetensors"):
        load_exported(empty)
    best = save_exported(tmp_path / "best", _trained(make), spec, CONFIG, MANIFEST)
    for name, message in (
        ("dataset.json", "dataset.json: dataset manifest not found"),
        ("config.yaml", "config.yaml: run config not found"),
        ("model.json", "model.json: model spec not found"),
    ):
        (best / name).rename(best / f"{name}.bak")
        with pytest.raises(ExportError, match=message):
            load_exported(best)
        (best / f"{name}.bak").rename(best / name)
    (best / "model.safetensors").unlink()
    with pytest.raises(ExportError, match="model.safetensors: weights file not found"):
        load_exported(best)
    with pytest.raises(ExportError, match="arch"):
        save_exported(tmp_path / "bad", _trained(make), {"num_classes": 3}, {}, {})


def test_mismatched_weights_are_a_clear_error(tmp_path, model_factory):
    spec, make = model_factory
    best = save_exported(tmp_path / "best", _trained(make), spec, CONFIG, MANIFEST)
    other = dict(spec, num_classes=5)
    (best / "model.json").write_text(json.dumps(other))
    with pytest.raises(ExportError, match="weights do not match"):
        load_exported(best)


def test_export_records_the_bands_and_older_exports_load_as_rgb(tmp_path):
    import archs

    bands = tuple(
        BandStats(f"B{i}", "uint16", 1500.0 + i, 300.0 + i, (200.0, 4000.0 + i), 0.0)
        for i in range(5)
    )
    normalization = Normalization(bands, None)
    spec = {"arch": "unet", "num_classes": 3, "in_channels": 5, "options": {"base_width": 4}}
    spec |= normalization.records()
    torch.manual_seed(0)
    model = archs.create_model("unet", 3, 5, base_width=4).eval()
    manifest = {**MANIFEST, "version": 3, **normalization.records()}
    del manifest["mean"], manifest["std"]
    best = save_exported(tmp_path / "multi" / "best", model, spec, CONFIG, manifest)
    written = json.loads((best / "model.json").read_text())
    assert written["in_channels"] == 5 and written["rgb_bands"] is None
    assert [b["name"] for b in written["bands"]] == ["B0", "B1", "B2", "B3", "B4"]
    assert {b["dtype"] for b in written["bands"]} == {"uint16"} and written["bands"][4][
        "nodata"
    ] == 0
    loaded = load_exported(best)
    assert loaded.normalization == normalization and loaded.in_channels == 5
    x = torch.randn(1, 5, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    # An export written before bands were recorded: model.json without them, a 0-1 manifest.
    old_spec = {"arch": "unet", "num_classes": 3, "options": {"base_width": 4, "depth": 2}}
    rgb_model = _trained(lambda: archs.create_model("unet", 3, 3, base_width=4, depth=2))
    old = save_exported(tmp_path / "old" / "best", rgb_model, old_spec, CONFIG, MANIFEST)
    (old / "model.json").write_text(json.dumps(old_spec))
    loaded = load_exported(old)
    assert loaded.in_channels == 3 and loaded.normalization.rgb_bands == (0, 1, 2)
    assert [b.dtype for b in loaded.normalization.bands] == ["uint8"] * 3
    assert loaded.normalization.unit_mean_std()[0] == pytest.approx(MANIFEST["mean"])
    with pytest.raises(ExportError, match="in_channels 3 but 5 bands"):
        save_exported(tmp_path / "bad", model, {**spec, "in_channels": 3}, CONFIG, manifest)


@pytest.mark.slow
def test_predict_script_end_to_end(tmp_path, model_factory, monkeypatch):
    import importlib.util

    import rasterio

    spec, make = model_factory
    model = _trained(make)
    save_exported(tmp_path / "run" / "best", model, spec, CONFIG, MANIFEST)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    png = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(png).save(images / "a.png")
    tif = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    profile = dict(driver="GTiff", height=150, width=130, count=3, dtype="uint8")
    with rasterio.open(images / "b.tif", "w", **profile) as dataset:
        dataset.write(np.moveaxis(tif, -1, 0))
    script = importlib.util.spec_from_file_location("predict", REPO / "launch" / "predict.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    out = tmp_path / "out"
    argv = [
        "--model",
        str(tmp_path / "run"),
        "--input",
        str(images / "*"),
        "--out",
        str(out),
        "--tile",
        "64",
        "--tta",
        "flip",
        "--device",
        "cpu",
        "--confidence",
        "--overlay",
        "--no-progress",
    ]
    assert module.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"a_{k}.png" for k in ("mask", "color", "confidence", "overlay")]
        + [f"b_{k}.tif" for k in ("mask", "color", "confidence", "overlay")]
    )
    from engine.data.sources.rasters import read_index_mask
    from engine.infer.sliding import SlidingOptions, predict_mask, rgb_normalization

    for stem, image, ext in (("a", png, "png"), ("b", tif, "tif")):
        mask = read_index_mask(out / f"{stem}_mask.{ext}")
        expected = predict_mask(
            model,
            image,
            num_classes=3,
            normalization=rgb_normalization(MANIFEST["mean"], MANIFEST["std"]),
            options=SlidingOptions(tile=64, tta="flip"),
        )
        np.testing.assert_array_equal(mask, expected)
    assert (
        module.main(
            ["--model", str(tmp_path / "nope"), "--input", str(images / "*"), "--out", str(out)]
        )
        == 2
    )


def _predict_module():
    import importlib.util

    script = importlib.util.spec_from_file_location("predict", REPO / "launch" / "predict.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    return module


def _export_with(tmp_path, make, spec, manifest) -> Path:
    return save_exported(tmp_path / "run" / "best", _trained(make), spec, CONFIG, manifest)


def _images(folder: Path, *names: str) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for name in names:
        out[name] = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(out[name]).save(folder / name)
    return out


def test_predict_folder_input_writes_original_values(tmp_path, model_factory, capsys):
    spec, make = model_factory
    manifest = json.loads(json.dumps(MANIFEST))
    for entry, value in zip(manifest["classes"], (10, [20, 21], 200)):
        entry["value"] = value
    best = _export_with(tmp_path, make, spec, manifest)
    images = _images(tmp_path / "in", "a.png", "b.jpg")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    module = _predict_module()
    common = ["--model", str(best), "--input", str(tmp_path / "in"), "--tile", "32"]
    common += ["--device", "cpu", "--no-progress"]
    assert module.main(common + ["--out", str(tmp_path / "idx")]) == 0
    assert module.main(common + ["--out", str(tmp_path / "orig"), "--values", "original"]) == 0
    assert "2 input(s)" in capsys.readouterr().out
    for stem in ("a", "b"):
        index = np.array(Image.open(tmp_path / "idx" / f"{stem}_mask.png"))
        original = np.array(Image.open(tmp_path / "orig" / f"{stem}_mask.png"))
        np.testing.assert_array_equal(original, np.array([10, 20, 200], np.uint8)[index])
    assert set(images) == {"a.png", "b.jpg"}

    # Colour-coded classes write their colour.
    for entry, value in zip(manifest["classes"], ("#0000FF", "#00FF00", "#FF0000")):
        entry["value"] = value
    best = _export_with(tmp_path / "rgb", make, spec, manifest)
    argv = ["--model", str(best), "--input", str(tmp_path / "in" / "a.png"), "--tile", "32"]
    argv += ["--device", "cpu", "--no-progress", "--values", "original"]
    assert module.main(argv + ["--out", str(tmp_path / "rgb_out")]) == 0
    index = np.array(Image.open(tmp_path / "idx" / "a_mask.png"))
    rgb = np.array(Image.open(tmp_path / "rgb_out" / "a_mask.png"))
    colours = np.array([(0, 0, 255), (0, 255, 0), (255, 0, 0)], np.uint8)
    np.testing.assert_array_equal(rgb, colours[index])


def test_predict_refuses_bad_inputs_outputs_and_class_counts(tmp_path, model_factory, capsys):
    spec, make = model_factory
    best = _export_with(tmp_path, make, spec, MANIFEST)
    module = _predict_module()
    folder = tmp_path / "in"
    _images(folder, "a.png", "a_mask.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    base = ["--model", str(best), "--tile", "32", "--device", "cpu", "--no-progress"]

    def run(*argv: str) -> str:
        assert module.main(base + list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err

    (tmp_path / "empty").mkdir()
    assert "holds no raster files" in run("--input", str(tmp_path / "empty"), "--out", "o")
    assert "no raster file matches" in run("--input", str(tmp_path / "*.png"), "--out", "o")
    (tmp_path / "file").write_text("x")
    assert "is a file" in run("--input", str(folder), "--out", str(tmp_path / "file"))
    # a.png's mask output would be the input a_mask.png: refused before anything is written.
    assert "would overwrite the input" in run("--input", str(folder), "--out", str(folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # The input folder as --out is fine when no output name is an input.
    other = tmp_path / "other"
    _images(other, "c.png")
    assert module.main(base + ["--input", str(other), "--out", str(other)]) == 0
    assert sorted(p.name for p in other.iterdir()) == ["c.png", "c_color.png", "c_mask.png"]
    capsys.readouterr()
    # --values original without values in dataset.json, and a class-count mismatch.
    err = run("--input", str(folder / "a_mask.png"), "--out", str(tmp_path / "o"), "--values",
              "original")  # fmt: skip
    assert "has no 'value'" in err
    two = dict(MANIFEST, classes=MANIFEST["classes"][:2])
    (best / "dataset.json").write_text(json.dumps(two))
    assert "the model has 3 classes but dataset.json lists 2" in run(
        "--input", str(folder / "a_mask.png"), "--out", str(tmp_path / "o")
    )
