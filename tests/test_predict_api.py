"""Prediction as a library: ``predict_file`` writes what ``launch/predict.py`` writes.

A tiny untrained UNet exported as a run folder, a generated GeoTIFF with a nodata corner,
and the three lines the README promises, run from the folder that holds them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import RGB_MANIFEST as MANIFEST

from engine.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """``runs/r34`` (a run folder with its export) and ``scene.tif`` in the current folder."""
    import archs
    from engine.train.export import save_exported

    torch.manual_seed(0)
    model = archs.create_model("unet", 3, 3, base_width=4, depth=2)
    spec = {"arch": "unet", "num_classes": 3, "in_channels": 3}
    spec["options"] = {"base_width": 4, "depth": 2}
    save_exported(tmp_path / "runs" / "r34" / "best", model, spec, {}, MANIFEST)
    coarse = np.random.default_rng(3).integers(1, 256, (3, 15, 35))  # 20x20-pixel blocks:
    data = np.kron(coarse, np.ones((1, 20, 20))).astype(np.uint8)  # few, large regions
    data[:, :40, :90] = 0  # nodata in every band
    profile = dict(driver="GTiff", height=300, width=700, count=3, dtype="uint8", nodata=0)
    profile |= {"crs": "EPSG:32633", "transform": rasterio.Affine(10, 0, 4e5, 0, -10, 5e6)}
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(data)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def launch_predict(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("launch_predict", REPO / "launch/predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_three_lines_write_the_mask_the_command_writes(workdir, capsys):
    from engine.infer.run import PredictOptions, predict_file

    result = predict_file("runs/r34", "scene.tif", "preds", PredictOptions(tile=512, overlap=0.25))

    argv = ["--model", "runs/r34", "--input", "scene.tif", "--out", "cli", "--tile", "512"]
    assert launch_predict([*argv, "--overlap", "0.25", "--no-progress"]) == 0
    mask = read_band(workdir / "preds" / "scene_mask.tif")
    np.testing.assert_array_equal(mask, read_band(workdir / "cli" / "scene_mask.tif"))
    assert sorted(p.name for p in (workdir / "preds").iterdir()) == [
        "scene_color.tif",
        "scene_mask.tif",
    ]
    assert result.paths == {
        "mask": Path("preds/scene_mask.tif"),
        "color": Path("preds/scene_color.tif"),
    }
    assert (result.height, result.width) == (300, 700)
    # pixels per class are those of the written mask; nodata (255) counts for none
    assert (mask[:40, :90] == 255).all()
    counts = np.bincount(mask[mask != 255].ravel(), minlength=3)
    assert result.class_pixels == {"water": counts[0], "land": counts[1], "road": counts[2]}
    assert sum(result.class_pixels.values()) == 300 * 700 - 40 * 90
    assert len([n for n in counts if n]) > 1  # the blocks make more than one class
    # the summary is the command's line for that input
    assert f"[1/1] {result.summary.replace('preds', 'cli')}" in capsys.readouterr().out


def test_a_loaded_model_and_polygons(workdir):
    from engine.infer.model import load_model
    from engine.infer.run import PredictOptions, predict_file

    model = load_model("runs/r34", "cpu")
    assert model.tile == 1024  # a neighbourhood-only network: the default window
    options = PredictOptions(tile=256, polygons="vectors/{stem}.gpkg", confidence=True)
    (workdir / "vectors").mkdir()
    first = predict_file(model, workdir / "scene.tif", workdir / "a", options)
    second = predict_file(model, "scene.tif", "b", options)
    assert sorted(first.paths) == ["color", "confidence", "mask", "polygons"]
    np.testing.assert_array_equal(read_band(first.paths["mask"]), read_band(second.paths["mask"]))
    assert first.paths["polygons"] == Path("vectors/scene.gpkg") and first.polygons > 0
    assert f"vectors/scene.gpkg ({first.polygons} polygons)" in first.summary


def test_a_missing_input_is_refused_before_anything_is_made(workdir):
    from engine.infer.run import predict_file

    with pytest.raises(UserError, match=r"^nothing\.tif: not a file$"):
        predict_file("runs/r34", "nothing.tif", "preds")
    assert not (workdir / "preds").exists()
