"""End to end on real data: a small model trained on CPU learns the Dubai aerial imagery."""

import torch
from accelerate.utils import set_seed
from conftest import REPO

from engine.data.shards.manifest import load_manifest
from engine.evaluate.shard_eval import EvalSettings, evaluate_split
from engine.train.config import load_config
from engine.train.export import load_exported
from engine.train.loop import train
from engine.train.setup import build_model

DATASET_MAJORITY = 0.524  # land, the largest class over all masks (PROVENANCE.md)


def test_small_unet_learns_dubai_on_cpu(dubai_shards, tmp_path, capsys, record_property):
    config = load_config(
        REPO / "launch/configs/dubai/unet-cpu.yaml",
        [f"data.shards={dubai_shards}", "data.test_split="],
    )
    manifest = load_manifest(dubai_shards)
    cpu = torch.device("cpu")
    set_seed(config.seed)
    untrained, _ = build_model(config, manifest)
    settings = EvalSettings(batch_size=4, device=cpu, num_workers=1)
    before = evaluate_split(untrained, manifest, "val", settings).metrics

    metrics = train(config, tmp_path / "run").metrics
    after = evaluate_split(load_exported(tmp_path / "run").model, manifest, "val", settings).metrics

    val_pixels = manifest.data["class_pixels"]["val"]
    majority_share = max(val_pixels) / sum(val_pixels)
    majority_miou = majority_share / manifest.num_classes  # IoU of the majority class, 0 elsewhere
    rows = [
        ("majority class (val)", majority_share, majority_miou),
        ("untrained model", before.overall_accuracy, before.miou),
        (
            f"trained {config.train.epochs * config.train.steps_per_epoch} steps",
            after.overall_accuracy,
            after.miou,
        ),
    ]
    with capsys.disabled():
        groups = ", ".join(manifest.split("val").groups)
        print(f"\nDubai val split ({groups}); dataset majority class {DATASET_MAJORITY:.1%}:")
        for name, accuracy, miou in rows:
            print(f"  {name:<24} pixel accuracy {accuracy:6.1%}   mIoU {miou:6.1%}")
            record_property(name, f"OA {accuracy:.4f} mIoU {miou:.4f}")
        print("  per-class IoU:", {n: round(v, 3) for n, v in zip(after.class_names, after.iou)})
    assert after.miou == metrics["miou"]  # the run's own final report agrees
    # Tile 2 alone is val: its own majority share (61 %) is above the dataset's 52 %.
    assert after.overall_accuracy > max(DATASET_MAJORITY, majority_share) + 0.03
    assert after.overall_accuracy > before.overall_accuracy + 0.1
    assert after.miou > max(before.miou, majority_miou) + 0.15
