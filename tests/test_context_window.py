"""Networks whose output depends on their whole input (ResUNet-a) see their training crop."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from conftest import build_tiny, make_tiny_dataset
from PIL import Image

import archs
from engine.data.shards.manifest import load_manifest
from engine.evaluate import shard_eval
from engine.evaluate.shard_eval import (
    EvalSettings,
    context_window,
    evaluate_split,
    forward_logits,
)
from engine.train.export import save_exported


def _d6() -> torch.nn.Module:
    torch.manual_seed(0)
    return archs.create_model("resuneta_d6", 3, base_width=8).eval()


@torch.no_grad()
def test_resuneta_is_run_on_windows_of_its_training_crop():
    model = _d6()
    x = torch.randn(1, 3, 128, 96)
    whole = forward_logits(model, x, False)
    alone = forward_logits(model, x[..., :64, :64], False)
    assert not torch.allclose(whole[..., :64, :64], alone, atol=1e-3)  # the PSP's global max
    assert context_window(model, 64) == 64 and context_window(model, None) is None
    unet = archs.create_model("unet", 3, base_width=4, depth=2)
    assert context_window(unet, 64) is None  # a neighbourhood-only network: any size
    windows = forward_logits(model, x, False, window=64)
    # Rows 0 and 64, columns 0 and 32: the last window of a row ends at the image's edge.
    torch.testing.assert_close(windows[..., :64, :32], alone[..., :32])
    last = forward_logits(model, x[..., 64:, 32:], False)
    torch.testing.assert_close(windows[..., 64:, 32:], last)


def test_evaluation_and_prediction_use_the_training_crop(tmp_path, monkeypatch, capsys):
    root = make_tiny_dataset(tmp_path / "data", groups=2, per_group=1, size=(64, 64))
    build_tiny(root, tmp_path / "shards", tile=64, val=0.5, test=0)
    manifest = load_manifest(tmp_path / "shards")
    seen = []
    original = shard_eval.forward_logits
    monkeypatch.setattr(
        shard_eval,
        "forward_logits",
        lambda model, images, channels_last, window=None: (
            seen.append(window) or original(model, images, channels_last, window)
        ),
    )
    cpu = torch.device("cpu")
    common = EvalSettings(batch_size=2, device=cpu, num_workers=0)
    evaluate_split(_d6(), manifest, "val", common, train_crop=32)
    unet = archs.create_model("unet", 3, base_width=4, depth=2)
    evaluate_split(unet, manifest, "val", common, train_crop=32)
    assert seen == [32, None]

    script = Path(__file__).resolve().parents[1] / "launch" / "predict.py"
    spec = importlib.util.spec_from_file_location("predict", script)
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    raw = manifest.root.joinpath("dataset.json").read_text()
    for name, model, options, tile in (
        ("resuneta_d6", _d6(), {"base_width": 8}, 32),
        ("unet", unet, {"base_width": 4, "depth": 2}, 1024),
    ):
        model_spec = {"arch": name, "num_classes": 3, "in_channels": 3, "options": options}
        config = {"data": {"crop_size": 32}}
        best = save_exported(tmp_path / name / "best", model, model_spec, config, json.loads(raw))
        argv = ["--model", str(best), "--input", str(tmp_path / "a.png"), "--device", "cpu"]
        assert predict.main([*argv, "--out", str(tmp_path / f"out-{name}"), "--no-progress"]) == 0
        assert f"{tile}² windows" in capsys.readouterr().out
        assert (tmp_path / f"out-{name}" / "a_mask.png").is_file()
