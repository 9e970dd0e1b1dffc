"""What build or predict can do, their counterparts can too (issue #24, "Counterparts").

``predict --band-files`` reads one file per band with the builder's reader; ``show --values
original`` reads masks written in the dataset's own values; text class values are refused
by ``predict --values original`` in one line that says why; folder evaluation pairs files
with the builder's ``--image-key``/``--mask-key``/``--mask-from``. Tiny untrained models,
generated GeoTIFFs of a few thousand pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import RGB_MANIFEST
from PIL import Image

from engine.commands.evaluate import main as evaluate_main
from engine.commands.predict import main as predict_main
from engine.commands.show import main as show_main

BANDS = ("red", "green", "blue", "nir")
PROFILE = {
    "driver": "GTiff", "height": 60, "width": 80, "crs": "EPSG:32633",
    "transform": rasterio.Affine(10, 0, 4e5, 0, -10, 5e6),
}  # fmt: skip


def _export(folder: Path, manifest: dict, in_channels: int) -> Path:
    """A tiny untrained UNet of three classes exported into ``folder/best``."""
    import archs
    from engine.train.export import save_exported

    torch.manual_seed(0)
    model = archs.create_model("unet", 3, in_channels, base_width=4, depth=2)
    spec = {"arch": "unet", "num_classes": 3, "in_channels": in_channels}
    spec["options"] = {"base_width": 4, "depth": 2}
    return save_exported(folder / "best", model, spec, {}, manifest).parent


def _blocks(bands: int, dtype: str, seed: int) -> np.ndarray:
    """``bands x 60 x 80`` pixels in 10-pixel blocks (a few large regions per class)."""
    high = 4000 if dtype == "uint16" else 256
    coarse = np.random.default_rng(seed).integers(1, high, (bands, 6, 8))
    return np.kron(coarse, np.ones((1, 10, 10))).astype(dtype)


def _four_band_model(tmp_path: Path) -> Path:
    from engine.data.shards.normalize import BandStats, Normalization

    stats = Normalization(
        tuple(BandStats(name, "uint16", 2000.0, 900.0, (100.0, 3900.0)) for name in BANDS),
        (0, 1, 2),
    )
    return _export(tmp_path / "rgbn", {"classes": RGB_MANIFEST["classes"]} | stats.records(), 4)


def _predict(capsys, *args: str) -> tuple[int, str]:
    code = predict_main([*args, "--no-progress", "--tile", "64"])
    return code, capsys.readouterr().err.strip()


def test_predict_band_files_reads_one_file_per_band_by_name(tmp_path, capsys):
    model = _four_band_model(tmp_path)
    data = _blocks(4, "uint16", seed=1)
    with rasterio.open(tmp_path / "stack.tif", "w", count=4, dtype="uint16", **PROFILE) as dst:
        dst.write(data)
        dst.descriptions = BANDS
    (tmp_path / "bands").mkdir()
    for name, band in zip(BANDS, data):
        with rasterio.open(
            tmp_path / "bands" / f"{name}_s.tif", "w", count=1, dtype="uint16", **PROFILE
        ) as dst:
            dst.write(band[None])
    assert _predict(capsys, "--model", str(model), "--input", str(tmp_path / "stack.tif"),
                    "--out", str(tmp_path / "stack"))[0] == 0  # fmt: skip
    # the folder holds every band's file; the first band's (nir here) are the inputs, and
    # the bands are matched to the model's red,green,blue,nir by these names, not position
    by_files = ("--model", str(model), "--input", str(tmp_path / "bands"),
                "--band-files", "nir,red,green,blue")  # fmt: skip
    code, err = _predict(capsys, *by_files, "--out", str(tmp_path / "files"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [
        "nir_s_color.tif", "nir_s_mask.tif"
    ]  # fmt: skip
    with rasterio.open(tmp_path / "stack" / "stack_mask.tif") as a:
        with rasterio.open(tmp_path / "files" / "nir_s_mask.tif") as b:
            assert b.crs == a.crs and b.transform == a.transform
            np.testing.assert_array_equal(b.read(1), a.read(1))
    (tmp_path / "bands" / "blue_s.tif").unlink()
    code, err = _predict(capsys, *by_files, "--out", str(tmp_path / "again"))
    assert code == 2 and "\n" not in err
    assert err == f"error: {tmp_path / 'bands' / 'blue_s.tif'}: band file for band 'blue' not found"


def test_predict_band_files_names_the_bands_the_model_lacks(tmp_path, capsys):
    model = _four_band_model(tmp_path)
    for name, band in zip(("B4", "B3", "B2", "B8"), _blocks(4, "uint16", seed=2)):
        with rasterio.open(tmp_path / f"{name}_s.tif", "w", count=1, dtype="uint16",
                           **PROFILE) as dst:  # fmt: skip
            dst.write(band[None])
    args = ("--model", str(model), "--input", str(tmp_path / "B4_s.tif"), "--out",
            str(tmp_path / "out"), "--band-files", "B4,B3,B2,B8")  # fmt: skip
    code, err = _predict(capsys, *args)
    assert code == 2 and "\n" not in err
    assert "lacks band(s) red, green, blue, nir of the model" in err
    assert "the file has 4 band(s): B4, B3, B2, B8" in err
    assert _predict(capsys, *args, "--bands", "1,2,3,4")[0] == 0  # by position, as asked
    assert (tmp_path / "out" / "B4_s_mask.tif").is_file()
    with pytest.raises(SystemExit):
        predict_main([*args[:-1], "red,2"])  # a number names no file


def _rgb_model(tmp_path: Path, values: list, **extra) -> Path:
    classes = [entry | {"value": value} for entry, value in zip(RGB_MANIFEST["classes"], values)]
    return _export(tmp_path / "rgb", RGB_MANIFEST | {"classes": classes} | extra, 3)


def _rgb_scene(path: Path) -> Path:
    with rasterio.open(path, "w", count=3, dtype="uint8", **PROFILE) as dst:
        dst.write(_blocks(3, "uint8", seed=3))
    return path


def _figure(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "values", [[10, 20, 30], [1000, 2000, 3000], ["#FF0000", "#00FF00", "#0000FF"]]
)
def test_show_reads_masks_written_in_original_values(tmp_path, capsys, values):
    model = _rgb_model(tmp_path, values)
    scene = _rgb_scene(tmp_path / "scene.tif")
    for mode in ("index", "original"):
        code, err = _predict(capsys, "--model", str(model), "--input", str(scene),
                             "--out", str(tmp_path / mode), "--values", mode)  # fmt: skip
        assert code == 0, err
    index = tmp_path / "index" / "scene_mask.tif"
    original = tmp_path / "original" / "scene_mask.tif"
    with rasterio.open(index) as src:
        classes = src.read(1)
    with rasterio.open(original) as src:
        assert src.count == (3 if isinstance(values[0], str) else 1)
    assert len(np.unique(classes)) >= 2  # the figures below differ where classes do
    common = ["--manifest", str(model / "best" / "dataset.json"), "--title", "scene"]
    assert show_main([str(index), *common, "--out", str(tmp_path / "a.png")]) == 0
    assert show_main([str(original), *common, "--values", "original",
                      "--out", str(tmp_path / "b.png")]) == 0  # fmt: skip
    np.testing.assert_array_equal(_figure(tmp_path / "b.png"), _figure(tmp_path / "a.png"))
    from engine.commands.show import build_parser, read_shown_mask

    args = build_parser().parse_args([str(original), "--values", "original", "--out", "x.png"])
    manifest = json.loads((model / "best" / "dataset.json").read_text())
    np.testing.assert_array_equal(read_shown_mask(str(original), args, manifest, None), classes)


def test_show_names_values_that_are_no_class(tmp_path, capsys):
    model = _rgb_model(tmp_path, [10, 20, 30])
    mask = np.full((6, 8), 20, np.uint8)
    mask[0, :3] = (10, 99, 7)
    Image.fromarray(mask).save(tmp_path / "odd_mask.png")
    capsys.readouterr()
    code = show_main([str(tmp_path / "odd_mask.png"), "--values", "original", "--manifest",
                      str(model / "best"), "--out", str(tmp_path / "odd.png")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {tmp_path / 'odd_mask.png'}: values [7, 99] are no class's")
    assert not (tmp_path / "odd.png").exists()


def test_text_class_values_are_refused_in_one_line_that_says_why(tmp_path, capsys):
    model = _rgb_model(tmp_path, ["forest", "water", "road"], ignore_value="unlabelled")
    scene = _rgb_scene(tmp_path / "scene.tif")
    code, err = _predict(capsys, "--model", str(model), "--input", str(scene),
                         "--out", str(tmp_path / "out"), "--values", "original")  # fmt: skip
    assert code == 2 and "\n" not in err
    assert err == (
        f"error: {model / 'best'}/dataset.json: class values are texts (0 = 'forest', "
        "1 = 'water', 2 = 'road'), which a raster mask cannot hold, so --values original "
        "cannot be written; use --values index (the mask holds these class indices) and "
        "--polygons for vectors that name each polygon's class"
    )
    assert not (tmp_path / "out").exists()


def _labelled_folders(tmp_path: Path, mask_name: str) -> np.ndarray:
    """Predictions ``scene_img_N_mask.png`` and true masks ``mask_name.format(n=N)``."""
    rng = np.random.default_rng(5)
    expected = np.zeros((3, 3), np.int64)
    for folder in ("preds", "labels"):
        (tmp_path / folder).mkdir()
    for number in (3, 4):
        truth = rng.integers(0, 3, (12, 16)).astype(np.uint8)
        pred = np.where(rng.random((12, 16)) < 0.6, truth, rng.integers(0, 3, (12, 16)))
        pred = pred.astype(np.uint8)
        Image.fromarray(pred).save(tmp_path / "preds" / f"scene_img_{number}_mask.png")
        Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(
            tmp_path / "preds" / f"scene_img_{number}_color.png"
        )
        target = tmp_path / "labels" / mask_name.format(n=number)
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(truth).save(target)
        expected += np.bincount(truth.ravel() * 3 + pred.ravel(), minlength=9).reshape(3, 3)
    classes = {"encoding": "index", "classes": [{"name": n, "value": v} for v, n in
                                                enumerate(("water", "land", "road"))]}  # fmt: skip
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))
    return expected


def test_folder_evaluation_pairs_names_with_the_builders_key_options(tmp_path, capsys):
    expected = _labelled_folders(tmp_path, "scene_lbl_{n}.png")
    common = ["--predictions", str(tmp_path / "preds"), "--masks", str(tmp_path / "labels"),
              "--classes", str(tmp_path / "classes.yaml")]  # fmt: skip
    code = evaluate_main([*common, "--out", str(tmp_path / "plain")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not (tmp_path / "plain").exists()
    assert "2 prediction(s) without a true mask" in err
    assert "scene_img_3_mask.png (key 'scene_img_3')" in err
    assert "unpaired true mask keys: ['scene_lbl_3', 'scene_lbl_4']" in err
    assert "--image-key/--mask-key REGEX" in err and "--mask-from TEMPLATE" in err
    code = evaluate_main([*common, "--image-key", r"(.*)_img(_\d+)", "--mask-key",
                          r"(.*)_lbl(_\d+)", "--out", str(tmp_path / "keys")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "keys" / "metrics.json").read_text())
    np.testing.assert_array_equal(metrics["confusion"], expected)


def test_folder_evaluation_pairs_with_a_mask_template(tmp_path):
    from engine.data.sources.pairing import PairingError
    from engine.evaluate.folder_eval import FolderEvalError, KeyRules, evaluate_folders

    expected = _labelled_folders(tmp_path, "gt/scene_img_{n}_lbl.png")
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    rules = KeyRules(mask_from="{key}_lbl")
    got = evaluate_folders(preds, labels, 3, rules=rules, recursive=True)
    np.testing.assert_array_equal(got, expected)  # gt/ is a role folder: keys drop it
    with pytest.raises(FolderEvalError, match="the same mask key"):
        evaluate_folders(preds, labels, 3, rules=KeyRules(mask_from="all"), recursive=True)
    with pytest.raises(PairingError, match=r"--image-key 'tile_\(\.\*\)' does not match"):
        evaluate_folders(preds, labels, 3, rules=KeyRules(image_key="tile_(.*)"))
