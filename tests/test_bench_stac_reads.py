"""bench/bench_stac_reads.py --quick: windows of remote COGs cost about their tiles, not files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_reads_windows_not_files(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_stac_reads.py"), "--quick", "--out",
         str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    data = json.loads((tmp_path / "bench_stac_reads.json").read_text())
    assert data["name"] == "bench_stac_reads" and data["config"]["quick"] is True
    assert {"date", "versions", "cpu_model", "loadavg_start", "loadavg_end"} <= set(data["env"])
    assert set(data["results"]) == {"terraseg settings", "GDAL_CACHEMAX 1 GiB"}
    for name, measured in data["results"].items():
        assert measured["unsupported_ranges"] == 0, name  # every read was a single Range
        assert measured["get_requests"] > 0 and len(measured["reads"]) == 12, name
        # Every needed tile crosses the wire at least once, and little else does.
        assert 1.0 <= measured["ratio"] <= 1.5, (name, measured["ratio"])
        assert measured["wire_bytes"] < 0.8 * measured["file_bytes"], name
        assert 0 < measured["tiles_needed"] < measured["tiles_total"], name
