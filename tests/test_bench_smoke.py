"""Every bench script runs with ``--quick`` and writes JSON with its keys (no timing checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
