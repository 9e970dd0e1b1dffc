"""Every bench script runs with ``--quick`` and writes JSON with its keys (no timing checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# script -> {top-level key: keys it must contain}
EXPECTED = {
    "bench_data": {
        "results": {
            "folder-pil",
            "shards-png",
            "shards-jpg",
            "shards-webp",
            "shards-npy",
            "shards-npy, host only",
            "read floor (npy)",
            "shards-npy 13xint16, host only",  # 13-band int16 GeoTIFFs → npy shards
            "read floor (npy 13xint16)",
        },
    },
    "bench_train_step": {
        "results": {"resunet34"},
        "nonfinite_skip": {"fused (default), NonFiniteSkip: found_inf on the device (trainer)"},
    },
    "bench_end_to_end": {"results": {"terraseg-shards", "original-folder"}},
    "bench_inference": {
        "speed": {"single pass, tta none", "sliding 0.25, tta none"},
        "memory": {"1024"},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_quick_run_writes_its_json(script, tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / f"{script}.json").read_text())
    assert data["name"] == script
    assert {"date", "versions", "cpu_model", "loadavg_start", "loadavg_end"} <= set(data["env"])
    assert data["config"]["quick"] is True
    for key, inner in EXPECTED[script].items():
        assert inner <= set(data[key]), (key, sorted(data[key]))
    for name, metrics in data["results" if "results" in data else "speed"].items():
        assert isinstance(metrics, dict) and metrics, name
    if script == "bench_data":  # each host-only row against the floor of its own data
        results = data["results"]
        for kind, bands, itemsize in (("npy", 3, 1), ("npy 13xint16", 13, 2)):
            floor, host = results[f"read floor ({kind})"], results[f"shards-{kind}, host only"]
            assert floor["times_floor_cpu"] == 1.0 and host["times_floor_cpu"] > 0
            pixels = 512 * 512 * bands * itemsize  # --quick: 512² tiles; + the npy header
            assert pixels < host["image_member_bytes_per_image"] < pixels + 1024, kind


@pytest.mark.slow
def test_learning_benchmark_quick_run_compares_the_contenders(tmp_path):
    """The plain-loop network, terraseg's own loop (``engine:``) and the smp reference."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_learning.py"),
            "--quick",
            "--arch",
            "resunet34,engine:resunet34",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "bench_learning.json").read_text())
    names = ("resunet34", "engine:resunet34", "smp-unet-r34")
    assert set(names) <= set(data["summary"])
    for name in names:
        summary = data["summary"][name]
        assert len(summary["seeds"]) == 2 and 0 <= summary["miou_median"] <= 1
    assert data["acceptance"] and {"env", "protocol", "runs"} <= set(data)
    steps = data["protocol"]["steps"]
    assert all(len(run["losses"]) == steps for run in data["runs"])
    # the engine builds the network the plain loop and smp start from, seed for seed
    assert data["acceptance"]["engine:resunet34"]["seeds_with_reference_init"] == [0, 1]
    for seed in ("0", "1"):
        for stream in ("plain", "engine"):
            measures = data["streams"][seed][stream]
            assert 0 < measures["labelled_fraction"] <= 1 and measures["sources_per_batch"] >= 1


class _GlobalContext(torch.nn.Module):
    """Per-pixel logits plus the input's global max: its output depends on the extent seen."""

    def __init__(self) -> None:
        super().__init__()
        self.pixel = torch.nn.Conv2d(3, 3, 1)
        self.scene = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pixel(x) + 20 * self.scene(x.amax((2, 3), keepdim=True))


def test_learning_benchmark_scores_sliding_windows_as_predict_does():
    """``--eval-tile`` scores predict's sliding windows: the same as whole images for a
    per-pixel network, not for one that sees its whole input (ResUNet-a's PSP pooling)."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_learning

    from engine.data.shards.normalize import Normalization
    from engine.infer.sliding import SlidingOptions, predict_mask

    rng = np.random.default_rng(0)
    ramp = np.linspace(0.1, 1, 90)[None, :, None]  # darker to the left: windows differ
    images = [(rng.random((70, 90, 3)) * 255 * ramp).astype(np.uint8) for _ in range(2)]
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    normalization = Normalization.from_manifest({"mean": mean.tolist(), "std": std.tolist()})
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    for model, sees_whole_input in ((torch.nn.Conv2d(3, 3, 1), False), (_GlobalContext(), True)):
        # Labels: what predict.py --tile 32 says, so its windows score exactly 1.
        masks = [predict_mask(model, im, num_classes=3, normalization=normalization,
                              options=SlidingOptions(tile=32))
                 for im in images]  # fmt: skip
        data = bench_learning.Data(images, masks, images, masks, mean, std, ["a", "b", "c"], [])
        whole, windows = (bench_learning.evaluate(model, data, cpu, tile=t) for t in (None, 32))
        assert windows["oa"] == 1.0
        assert (whole["oa"] < 0.99) == sees_whole_input, whole["oa"]
