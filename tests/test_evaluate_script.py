"""launch/evaluate.py as a user runs it: on shards with a trained model, and on folders."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, tiny_config
from PIL import Image
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, jaccard_score

from engine.train.loop import train


def evaluate_in_process(capsys, *args: str) -> tuple[int, str]:
    """Run launch/evaluate.py's main() here (no subprocess); its exit code and stderr."""
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "launch/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(list(args))
    return code, capsys.readouterr().err.strip()


def evaluate(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "launch/evaluate.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_shard_mode_reproduces_the_training_report(synthetic_shards, tmp_path):
    train(tiny_config(synthetic_shards), tmp_path / "run")
    evaluate(
        "--model",
        str(tmp_path / "run"),
        "--shards",
        str(synthetic_shards),
        "--split",
        "test",
        "--out",
        str(tmp_path / "eval"),
        "--workers",
        "0",
    )
    ours = json.loads((tmp_path / "eval/metrics.json").read_text())
    trained = json.loads((tmp_path / "run/metrics.json").read_text())
    for key in ("miou", "overall_accuracy", "kappa", "mean_f1"):
        assert ours[key] == trained[key], key
    assert ours["per_class"] == trained["per_class"]
    assert (tmp_path / "eval/confusion.png").stat().st_size > 10_000
    assert "| class | IoU |" in (tmp_path / "eval/metrics.md").read_text()


def test_folder_mode_matches_scikit_learn(synthetic_shards, tmp_path):
    rng = np.random.default_rng(0)
    truths, preds = [], []
    for number in range(4):
        truth = rng.integers(0, 7, (48, 40)).astype(np.uint8)
        truth[rng.random(truth.shape) < 0.1] = 255
        pred = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, 7, truth.shape))
        pred = np.where(truth == 255, rng.integers(0, 7, truth.shape), pred).astype(np.uint8)
        (tmp_path / "masks").mkdir(exist_ok=True)
        (tmp_path / "preds").mkdir(exist_ok=True)
        Image.fromarray(truth).save(tmp_path / "masks" / f"tile_{number}.png")
        Image.fromarray(pred).save(tmp_path / "preds" / f"tile_{number}_mask.png")
        truths.append(truth.ravel())
        preds.append(pred.ravel())
    evaluate(
        "--predictions",
        str(tmp_path / "preds"),
        "--masks",
        str(tmp_path / "masks"),
        "--manifest",
        str(synthetic_shards / "dataset.json"),
        "--out",
        str(tmp_path / "eval"),
    )
    ours = json.loads((tmp_path / "eval/metrics.json").read_text())
    truth, pred = np.concatenate(truths), np.concatenate(preds)
    valid = truth != 255
    truth, pred = truth[valid], pred[valid]
    labels = list(range(7))
    np.testing.assert_allclose(
        [c["iou"] for c in ours["per_class"]],
        jaccard_score(truth, pred, labels=labels, average=None),
    )
    np.testing.assert_allclose(
        [c["f1"] for c in ours["per_class"]], f1_score(truth, pred, labels=labels, average=None)
    )
    assert ours["overall_accuracy"] == accuracy_score(truth, pred)
    np.testing.assert_allclose(ours["kappa"], cohen_kappa_score(truth, pred))


def test_a_model_with_another_class_count_is_refused(synthetic_shards, tmp_path, capsys):
    import archs
    from engine.data.shards.manifest import load_manifest
    from engine.train.export import save_exported

    manifest = load_manifest(synthetic_shards)
    spec = {"arch": "unet", "num_classes": 3, "in_channels": 3, "options": {"base_width": 4}}
    model = archs.create_model("unet", 3, 3, base_width=4)
    save_exported(tmp_path / "best", model, spec, {}, dict(manifest.data))
    code, err = evaluate_in_process(
        capsys, "--model", str(tmp_path / "best"), "--shards", str(synthetic_shards),
        "--out", str(tmp_path / "eval"), "--workers", "0",
    )  # fmt: skip
    assert code == 2 and "\n" not in err
    assert err.startswith("error: model ") and "predicts 3 classes" in err
    assert f"lists {manifest.num_classes}" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("where", ["truth", "prediction"])
def test_folder_values_out_of_range_are_named(synthetic_shards, tmp_path, capsys, where):
    (tmp_path / "masks").mkdir()
    (tmp_path / "preds").mkdir()
    truth = np.zeros((8, 8), np.uint8)
    pred = np.ones((8, 8), np.uint8)
    (truth if where == "truth" else pred)[0, :2] = 40
    Image.fromarray(truth).save(tmp_path / "masks" / "t.png")
    Image.fromarray(pred).save(tmp_path / "preds" / "t_mask.png")
    code, err = evaluate_in_process(
        capsys, "--predictions", str(tmp_path / "preds"), "--masks", str(tmp_path / "masks"),
        "--manifest", str(synthetic_shards), "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert code == 2 and "\n" not in err
    named = tmp_path / ("masks/t.png" if where == "truth" else "preds/t_mask.png")
    assert err.startswith(f"error: {named}: ") and "[40]" in err
    (tmp_path / "file").write_text("x")
    code, err = evaluate_in_process(
        capsys, "--predictions", str(tmp_path / "preds"), "--masks", str(tmp_path / "masks"),
        "--manifest", str(synthetic_shards), "--out", str(tmp_path / "file"),
    )  # fmt: skip
    assert code == 2 and err == f"error: --out {tmp_path / 'file'}: is a file, not a folder"
