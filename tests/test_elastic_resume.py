"""Elastic resume: a run checkpointed on 2 processes continues on 1, and one on 1 on 2.

The first half runs K steps and stops with a checkpoint (exit 75, as a preempted job);
the second half runs ``--resume latest`` on the other number of processes to 2K. The
2-process halves are real DDP (``accelerate launch``, gloo on CPU); the 1-process halves
run in this process, as ``python launch/train.py`` would.
"""

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CLASSES, COLOURS, build_tiny, tiny_args, write_pair
from launching import REPO, accelerate_command, cpu_env

from engine.train.checkpoint import read_state
from engine.train.config import load_config
from engine.train.loop import train
from engine.train.optim import lr_factor
from engine.train.state_io import load_state
from engine.train.stopping import EXIT_PREEMPTED

K, TOTAL = 8, 16
LR = 0.03


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory):
    """Shards a tiny UNet learns in a few steps: each class has its own colour, plus noise.

    The loss falls from ~2.1 to ~1.0 by step K, so a run that restarted from scratch at
    K + 1 is told apart from one that continued.
    """
    root = tmp_path_factory.mktemp("colour")
    rng = np.random.default_rng(0)
    for group in range(4):
        for part in range(2):
            index = rng.integers(0, 3, (8, 8)).repeat(8, 0).repeat(8, 1)
            noise = rng.integers(0, 60, (*index.shape, 3))
            image = (np.array(COLOURS)[index] * 0.7 + noise).astype(np.uint8)
            mask = np.array(COLOURS, np.uint8)[index]
            write_pair(root / "scenes", f"Tile {group}", f"part_{part}", image, mask)
    (root / "scenes" / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    build_tiny(root / "scenes", root / "shards")
    return root / "shards"


def overrides(shards, *extra: str) -> list[str]:
    return tiny_args(
        shards, "data.crop_size=32", "train.log_every=1", f"train.steps_per_epoch={K}",
        f"train.epochs={TOTAL // K}", f"optim.lr={LR}", *extra,
    )  # fmt: skip


def config(shards, *extra: str):
    return load_config(REPO / "launch/configs/tiny-cpu.yaml", overrides(shards, *extra))


def launch_two_ranks(shards, run_dir, *extra: str) -> subprocess.CompletedProcess:
    """``launch/train.py`` on 2 processes (DDP, gloo); output is stdout and stderr together."""
    args = ["--config", "launch/configs/tiny-cpu.yaml", "--out", str(run_dir)]
    args += [a for o in overrides(shards) for a in ("--set", o)] + list(extra)
    return subprocess.run(
        accelerate_command("launch/train.py", *args),
        cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=400,
    )  # fmt: skip


def history(run_dir) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def train_losses(run_dir) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in history(run_dir) if r["split"] == "train"}


def assert_continues(run_dir, cfg, world_size: int) -> None:
    """The run went on from step K as one run: history, schedule, optimiser, loss, best score."""
    rows = history(run_dir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, TOTAL + 1)), "gap or duplicate"
    assert [int(r["step"]) for r in rows if r["split"] == "val"] == [K, TOTAL]
    for row in train_rows:  # K + 1 first: the schedule went on, it did not restart
        expected = LR * lr_factor(int(row["step"]), TOTAL, cfg.schedule)
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-5, abs=1e-9), row["step"]
    final = read_state(run_dir / f"checkpoints/step-{TOTAL:08d}")
    optimizer = load_state(run_dir / f"checkpoints/step-{TOTAL:08d}/optimizer.safetensors")
    steps = {float(s["step"]) for s in optimizer["optimizer"]["state"].values()}
    assert steps == {float(TOTAL)}, "the optimiser state restarted instead of loading"
    assert final["world_size"] == world_size
    assert final["global_batch"] == cfg.data.batch_size * world_size * cfg.train.grad_accum
    loss = train_losses(run_dir)
    initial, before, after = loss[1], (loss[K - 1] + loss[K]) / 2, (loss[K + 1] + loss[K + 2]) / 2
    assert initial - before > 0.5, f"the first half did not learn enough to test: {loss}"
    # Weights that did not carry over put the loss back near the initial loss; a continued
    # run stays at (or below) where it was: at most 35 % of what it had learned back up.
    assert after < before + 0.35 * (initial - before), f"loss curve jumped at resume: {loss}"
    best_at_k = read_state(run_dir / f"checkpoints/step-{K:08d}")["best_miou"]
    last_val = next(
        float(r["miou"]) for r in rows if r["split"] == "val" and int(r["step"]) == TOTAL
    )
    assert final["best_miou"] == pytest.approx(max(best_at_k, last_val), abs=1e-6)


@pytest.mark.slow
def test_two_ranks_resume_on_one(colour_shards, tmp_path, capsys):
    run_dir, copy = tmp_path / "run", tmp_path / "copy"
    first = launch_two_ranks(colour_shards, run_dir, "--set", f"train.stop_after_steps={K}")
    # The ranks exit 75 after the checkpoint; torchrun's agent reports that as 1 (and may
    # stop the second rank with SIGTERM once the first has exited: the checkpoint is whole).
    assert first.returncode != 0 and "checkpoint saved" in first.stdout, first.stdout[-4000:]
    codes = re.findall(r"exitcode  : (-?\d+)", first.stdout)
    assert str(EXIT_PREEMPTED) in codes and set(codes) <= {str(EXIT_PREEMPTED), "-15"}, codes
    assert "terraseg: 2 processes" in first.stdout
    files = read_state(run_dir / f"checkpoints/step-{K:08d}")["files"]
    assert {"rng-0.safetensors", "rng-1.safetensors"} <= set(files)
    shutil.copytree(run_dir, copy)
    first_half = train_losses(run_dir)
    capsys.readouterr()
    cfg = config(colour_shards)
    train(cfg, run_dir, resume="latest")  # rng-1 is left unread, no error
    out, err = capsys.readouterr()
    assert f"at step {K}" in out
    assert out.count("resumed on 1 process(es); the checkpoint was written by 2") == 1, out
    assert "no saved RNG state" not in out  # rank 0 restores its own
    assert (
        err.count(
            f"warning: global batch changed from 4 to 2 images per step at step {K} "
            "(data.batch_size 2 × 1 process(es) × train.grad_accum 1)"
        )
        == 1
    ), err
    assert_continues(run_dir, cfg, world_size=1)
    assert {s: v for s, v in train_losses(run_dir).items() if s <= K} == first_half
    # Reproducible given the world size: the same resume again draws the same batches.
    train(cfg, copy, resume="latest")
    assert train_losses(copy) == train_losses(run_dir)


@pytest.mark.slow
def test_one_rank_resumes_on_two(colour_shards, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(config(colour_shards, f"train.stop_after_steps={K}"), run_dir)
    assert stopped.value.code == EXIT_PREEMPTED
    assert [n for n in read_state(run_dir / f"checkpoints/step-{K:08d}")["files"]
            if n.startswith("rng-")] == ["rng-0.safetensors"]  # fmt: skip
    first_half = train_losses(run_dir)
    second = launch_two_ranks(colour_shards, run_dir, "--resume", "latest")
    output = second.stdout
    assert second.returncode == 0, output[-4000:]
    assert "terraseg: 2 processes" in output and f"at step {K}" in output
    assert (
        output.count(
            "resumed on 2 process(es); the checkpoint was written by 1; rank(s) 1 have no saved "
            f"RNG state and are seeded from (seed 0, step {K}, rank)"
        )
        == 1
    ), output[-4000:]
    assert output.count("warning: global batch changed from 2 to 4 images per step") == 1
    assert_continues(run_dir, config(colour_shards), world_size=2)
    assert {s: v for s, v in train_losses(run_dir).items() if s <= K} == first_half


@pytest.mark.slow
def test_resume_with_more_accumulation_steps_the_optimiser_every_step(colour_shards, tmp_path):
    """Keeping the global batch on fewer processes means more accumulation: 8 steps of
    accumulation 1, then 3 (8 is no multiple of 3, so a carried-over micro-batch counter
    would put the gradient syncs, and the optimiser steps, off the step boundaries)."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):
        train(config(colour_shards, f"train.stop_after_steps={K}", "data.val_split="), run_dir)
    train(config(colour_shards, "train.grad_accum=3", "data.val_split="), run_dir, "latest")
    optimizer = load_state(run_dir / f"checkpoints/step-{TOTAL:08d}/optimizer.safetensors")
    assert {float(s["step"]) for s in optimizer["optimizer"]["state"].values()} == {TOTAL}
    assert read_state(run_dir / f"checkpoints/step-{TOTAL:08d}")["global_batch"] == 6


def test_world_change_lines_only_when_something_changed(colour_shards):
    """Same world and batch: silent. Fields an older checkpoint lacks, or that are not
    positive integers (the file is data), are left out of the lines, never trusted."""
    from engine.train.checkpoint import Checkpoint
    from engine.train.elastic import world_change

    cfg = config(colour_shards)  # batch 2, accumulation 1

    def checkpoint(ranks, **recorded):
        files = {f"rng-{r}.safetensors": 1 for r in ranks} | {"model.safetensors": 1}
        return Checkpoint(Path("ck"), {"step": 5, "files": files, **recorded}, {}, {}, None)

    assert world_change(checkpoint([0, 1], world_size=2, global_batch=4), cfg, 2) == ("", "")
    note, warning = world_change(checkpoint([0]), cfg, 2)
    assert note == (
        "resumed on 2 process(es); rank(s) 1 have no saved RNG state and are seeded from "
        "(seed 0, step 5, rank)"
    )
    assert warning == ""
    note, warning = world_change(checkpoint([0, 1], world_size="2", global_batch=-1), cfg, 1)
    assert (note, warning) == ("", "")
    note, warning = world_change(checkpoint(range(4), world_size=4, global_batch=8), cfg, 3)
    assert note == "resumed on 3 process(es); the checkpoint was written by 4"
    assert warning.startswith("global batch changed from 8 to 6 images per step at step 5 ")
