"""Two-process DDP on CPU (gloo) through ``accelerate launch``, as on a GPU node."""

import csv
import json

from conftest import tiny_args
from launching import accelerate_command, run


def test_two_ranks_train_in_lockstep_with_identical_weights(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    command = accelerate_command(
        "tests/probes/train_fingerprint.py",
        "launch/configs/tiny-cpu.yaml",
        str(run_dir),
        *tiny_args(synthetic_shards, "data.num_workers=1"),
    )
    run(command)
    ranks = [json.loads((run_dir / f"fingerprint-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2], "accelerate started independent runs"
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
    assert ranks[0]["sha256"] == ranks[1]["sha256"], "parameters differ across ranks"
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "a rank other than the main one wrote history"
    assert [r["step"] for r in rows if r["split"] == "train"] == ["2", "4", "6", "8"]
    # 2 ranks x batch 2 per step, so throughput counts both ranks' images.
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 8
