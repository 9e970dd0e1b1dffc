"""Acceptance (#25): a model trained on real Dubai imagery, exported to ONNX, predicts a real
scene with ``predict --model model.onnx`` as the PyTorch model does (≥ 99.9 % of pixels).
"""

from __future__ import annotations

import numpy as np
import yaml
from accelerate.utils import set_seed
from conftest import dubai_dir, tiny_config  # noqa: F401  (dubai_dir is a fixture)

from engine.commands.main import main as terraseg
from engine.data.build.builder import BuildOptions, build_shards
from engine.data.sources.classes import classes_from_dict
from engine.data.sources.mask_inspect import draft_classes_yaml, inspect_masks
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.rasters import read_index_mask
from engine.infer.run import PredictOptions, predict_file
from engine.train.loop import train


def test_trained_dubai_model_predicts_the_same_on_onnxruntime(
    dubai_dir,  # noqa: F811
    tmp_path,
    capsys,
    record_property,
):
    masks = sorted(dubai_dir.glob("Tile [12]/masks/*.png"))
    draft = yaml.safe_load(draft_classes_yaml(inspect_masks(masks, workers=1)))
    pairs = pair_by_glob(
        str(dubai_dir / "Tile [12]/images/*.jpg"), str(dubai_dir / "Tile [12]/masks/*.png")
    )
    shards = tmp_path / "shards"
    options = BuildOptions(tile=128, val=0.5, test=0.0, samples_per_shard=64)
    build_shards(pairs, classes_from_dict(draft, "draft.yaml"), shards, options)
    set_seed(0)
    config = tiny_config(shards, "train.epochs=1", "train.steps_per_epoch=8")
    train(config, tmp_path / "run")
    model = tmp_path / "model.onnx"
    assert terraseg(["export", "--model", str(tmp_path / "run"), "--out", str(model)]) == 0

    scene = sorted((dubai_dir / "Tile 5/images").glob("*.jpg"))[0]
    settings = PredictOptions(tile=256, device="cpu", progress=False, confidence=True)
    ours = predict_file(model, scene, tmp_path / "onnx", settings)
    ref = predict_file(tmp_path / "run", scene, tmp_path / "torch", settings)
    a, b = (read_index_mask(r.paths["mask"]) for r in (ours, ref))
    agreement = float((a == b).mean())
    classes = len(np.unique(b))
    with capsys.disabled():
        print(
            f"\n{scene.parent.parent.name}/{scene.name} ({ref.width}x{ref.height}): ONNX vs "
            f"PyTorch masks agree on {agreement:.5%} of pixels ({classes} classes predicted)"
        )
    record_property("agreement", agreement)
    assert a.shape == (ref.height, ref.width) and classes >= 2  # a model, not a constant
    assert agreement >= 0.999
