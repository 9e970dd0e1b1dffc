"""bench_peers without TorchGeo: the scores, the result keys, the data makers, the weight
mapping, terraseg's side, and the one-line message when TorchGeo is missing."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import peers_data as data  # noqa: E402


def test_confusion_miou_by_hand_and_against_sklearn():
    truth = np.array([[0, 0], [1, 255]], np.uint8)
    pred = np.array([[0, 1], [1, 0]], np.uint8)
    scores = data.confusion_miou([truth], [pred], 2)
    assert scores["iou"] == pytest.approx([0.5, 0.5])  # 1 hit / union 2, each class
    assert scores["oa"] == pytest.approx(2 / 3)  # the ignored pixel is left out

    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(3)
    truths = [rng.integers(0, 4, (9, 7)).astype(np.uint8) for _ in range(3)]
    truths[0][:2] = 255
    preds = [rng.integers(0, 5, t.shape).astype(np.uint8) % 4 for t in truths]
    t, p = np.concatenate([x.ravel() for x in truths]), np.concatenate([x.ravel() for x in preds])
    keep = t != 255
    expected = jaccard_score(t[keep], p[keep], labels=[0, 1, 2, 3], average=None)
    assert data.confusion_miou(truths, preds, 4)["iou"] == pytest.approx(expected.tolist())


def test_absent_class_scores_zero():
    truth = np.zeros((4, 4), np.uint8)
    scores = data.confusion_miou([truth], [truth.copy()], 3)
    assert scores["iou"] == [1.0, 0.0, 0.0] and scores["miou"] == pytest.approx(1 / 3)


def test_label_agreement():
    first = np.zeros((4, 5), np.uint8)
    second = first.copy()
    second[0, :3] = 1
    assert data.label_agreement(first, second) == pytest.approx(17 / 20)
    with pytest.raises(ValueError, match="shape"):
        data.label_agreement(first, second[:, :4])


def _parts(ours_rate: float, ours_cpu: float):
    train = {"terraseg": {"samples_per_s": ours_rate, "cpu_s_per_sample": ours_cpu},
             "torchgeo": {"samples_per_s": 2.0, "cpu_s_per_sample": 0.5}}  # fmt: skip
    learn = {"terraseg": {"miou_mean": 0.6}, "torchgeo": {"miou_mean": 0.5}}
    predict = {"terraseg": {"pixels_per_s": 300.0, "peak_rss_mb": 100.0},
               "torchgeo": {"pixels_per_s": 100.0, "peak_rss_mb": 400.0},
               "label_agreement": 0.99}  # fmt: skip
    return train, learn, predict


def test_summary_has_the_issue_keys_as_ratios():
    values = data.summary(*_parts(5.0, 0.25))
    data.check_summary(values)
    assert set(values) == set(data.REQUIRED_KEYS)
    assert values["train_samples_per_s_ratio"] == pytest.approx(2.5)
    assert values["host_cpu_per_sample_ratio"] == pytest.approx(0.5)
    assert values["predict_pixels_per_s_ratio"] == pytest.approx(3.0)
    assert values["predict_peak_memory_ratio"] == pytest.approx(0.25)
    assert (values["miou_terraseg"], values["miou_torchgeo"]) == (0.6, 0.5)
    del values["label_agreement"]
    with pytest.raises(KeyError, match="label_agreement"):
        data.check_summary(values)


def test_generated_scenes_are_13_band_uint16_side_by_side_and_learnable(tmp_path):
    names = data.make_scenes(tmp_path, 2, 128, classes=3, seed=5)
    bounds = []
    for name in names:
        with rasterio.open(tmp_path / "images" / f"{name}.tif") as image:
            assert (image.count, image.dtypes[0], image.crs.to_string()) == (
                13,
                "uint16",
                data.SCENE_CRS,
            )
            pixels = image.read()
            bounds.append(image.bounds)
        with rasterio.open(tmp_path / "masks" / f"{name}.tif") as mask:
            assert mask.transform == image.transform
            label = mask.read(1)
        assert set(np.unique(label)) <= {0, 1, 2} and len(np.unique(label)) >= 2
        means = [pixels[:, label == c].mean(1) for c in np.unique(label)]
        assert np.abs(means[0] - means[1]).max() > 100  # classes differ in their spectrum
    assert bounds[0].right < bounds[1].left  # no overlap: one file per place
    before = (tmp_path / "images" / f"{names[0]}.tif").stat().st_mtime_ns
    data.make_scenes(tmp_path, 2, 128, classes=3, seed=5)
    assert (tmp_path / "images" / f"{names[0]}.tif").stat().st_mtime_ns == before


def test_split_chip_on_the_real_sentinel2_chip(tmp_path):
    from engine.data.sources.paths import multispectral_dataset_dir

    root = multispectral_dataset_dir() / "sen1floods11"
    image_path = root / "S2" / "Spain_7370579_S2Hand.tif"
    label_path = root / "Labels" / "Spain_7370579_LabelHand.tif"
    if not image_path.is_file():
        pytest.fail(f"multispectral data not found at {root}; set TERRASEG_MULTISPECTRAL_DIR")
    folders = data.split_chip(image_path, label_path, tmp_path, 128)
    train_images, train_masks = data.read_split(folders["train"])
    val_images, val_masks = data.read_split(folders["val"])
    assert train_images[0].shape == (13, 384, 512) and val_images[0].shape == (13, 128, 512)
    with rasterio.open(label_path) as src:
        original = src.read(1)
    with rasterio.open(image_path) as src:
        np.testing.assert_array_equal(
            np.concatenate([train_images[0], val_images[0]], 1), src.read()
        )
    joined = np.concatenate([train_masks[0], val_masks[0]])
    assert (joined == 255).sum() == (original < 0).sum() > 0
    np.testing.assert_array_equal(joined[original >= 0], original[original >= 0])


def test_band_statistics_leave_out_ignored_pixels():
    image = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    mask = np.zeros((3, 4), np.uint8)
    mask[0] = 255
    stats = data.band_statistics([image], [mask])
    kept = image[:, 1:].reshape(2, -1).astype(np.float64)
    assert stats["mean"] == pytest.approx(kept.mean(1).tolist())
    assert stats["std"] == pytest.approx(kept.std(1).tolist())


def test_resunet34_weights_load_into_smp_unet_exactly():
    from peers_predict import smp_from_terraseg

    import archs

    torch.manual_seed(0)
    model = archs.create_model("resunet34", 3, 13)
    with torch.no_grad():  # not the initial state: the mapping must carry trained numbers
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor))
    reference, gap = smp_from_terraseg(model, 13, 3)
    assert gap == 0.0
    with pytest.raises(ValueError):
        smp_from_terraseg(archs.create_model("resunet34", 4, 13), 13, 3)


def test_terraseg_side_builds_shards_and_streams_batches(tmp_path):
    import peers_terraseg

    data.make_scenes(tmp_path / "scenes", 2, 96, classes=2, seed=1)
    classes = data.write_classes(tmp_path / "classes.yaml", ["a", "b"])
    build = peers_terraseg.build(tmp_path / "scenes", classes, tmp_path / "shards", 64)
    assert build["build_s"] > 0 and (tmp_path / "shards" / "dataset.json").is_file()
    cfg = {"batch": 2, "crop": 32, "lr": 1e-3, "steps": 3, "workers": 0, "log_every": 1,
           "device": "cpu"}  # fmt: skip
    measured = peers_terraseg.loader_only(tmp_path / "shards", cfg, 3)
    assert measured["samples"] == 6 and measured["cpu_s"] > 0


def test_missing_torchgeo_is_one_line_naming_the_peers_extra():
    code = (
        "import sys, runpy; sys.modules['torchgeo'] = None; "
        "sys.argv = ['bench_peers.py', '--quick']; "
        "runpy.run_path('bench/bench_peers.py', run_name='__main__')"
    )
    env = os.environ | {"PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "peers" in lines[0] and "torchgeo" in lines[0].lower()
