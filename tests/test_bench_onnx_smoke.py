"""``bench/bench_onnx.py --quick`` runs and writes its JSON (no timing checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_the_ratio_and_agrees(tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_onnx.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "bench_onnx.json").read_text())
    assert set(data["results"]) == {"pytorch-cpu", "onnxruntime-cpu"}
    rates = {name: row["pixels_per_s"] for name, row in data["results"].items()}
    assert data["onnx_vs_torch"] == pytest.approx(rates["onnxruntime-cpu"] / rates["pytorch-cpu"])
    assert data["check"]["max_abs_probability_difference"] < 1e-4
    assert data["check"]["argmax_agreement"] > 0.999
    assert data["config"]["quick"] is True
