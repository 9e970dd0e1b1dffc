"""Cluster behaviour on one machine (CPU, gloo): 2-node launch, preemption, no hangs."""

import csv
import json
import signal
import subprocess
import time

import psutil
import pytest
from conftest import build_scene_shards, tiny_args
from launching import REPO, accelerate_command, cpu_env, free_port, run

from engine.data.shards.manifest import load_manifest
from engine.train.checkpoint import find_latest, read_state


@pytest.fixture(scope="module")
def three_shards(synthetic_scenes, tmp_path_factory):
    """3 training shards (54 samples): not divisible by 2 ranks x 2 workers; val 18 samples."""
    out = build_scene_shards(
        synthetic_scenes, tmp_path_factory.mktemp("three") / "s", samples_per_shard=18
    )
    manifest = load_manifest(out)
    assert len(manifest.split("train").shards) == 3 and manifest.split("val").num_samples == 18
    return out


def train_args(shards, run_dir, *overrides):
    return [
        "--config",
        "launch/configs/tiny-cpu.yaml",
        "--out",
        str(run_dir),
        *[a for o in tiny_args(shards, "data.num_workers=2", *overrides) for a in ("--set", o)],
    ]


def history_steps(run_dir, split="train"):
    with open(run_dir / "history.csv", newline="") as handle:
        return [int(r["step"]) for r in csv.DictReader(handle) if r["split"] == split]


def test_two_node_launch_over_loopback(three_shards, tmp_path):
    """Two node launchers, machine ranks 0 and 1, rendezvous on 127.0.0.1: a cluster's path."""
    port = free_port()
    nodes = [
        subprocess.Popen(
            accelerate_command(
                "launch/train.py",
                *train_args(three_shards, tmp_path / "run"),
                processes=2,
                machines=2,
                machine_rank=rank,
                port=port,
                # One host: both agents would match a c10d endpoint and race to host its
                # store; static rendezvous lets machine rank 0 host it, as the first node does.
                extra=["--rdzv_backend", "static"],
            ),
            cwd=REPO,
            env=cpu_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "terraseg: 2 processes" in outputs[0]
    assert history_steps(tmp_path / "run") == [2, 4, 6, 8]
    # 18 val samples over 2 ranks x 2 workers: uneven parts, padded, no hang.
    assert history_steps(tmp_path / "run", "val") == [4, 8]
    assert json.loads((tmp_path / "run/metrics.json").read_text())["steps"] == 8


def rank_processes(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """The training processes a launcher started (not their loader workers), by RANK."""
    return {int(p.environ()["RANK"]): p for p in psutil.Process(launcher.pid).children()}


def start_training(run_dir, shards, *overrides) -> tuple[subprocess.Popen, list[str]]:
    """Start a 2-process job without validation; return the launcher and its arguments."""
    args = train_args(shards, run_dir, "train.log_every=1", "data.val_split=", *overrides)
    launcher = subprocess.Popen(
        accelerate_command("launch/train.py", *args),
        cwd=REPO,
        env=cpu_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return launcher, args


def wait_for_step(run_dir, step: int, timeout: float = 300) -> None:
    """Wait until the history shows training step ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "history.csv").exists() and history_steps(run_dir)[-1:] >= [step]:
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for step {step}")


def test_sigterm_on_one_rank_checkpoints_all_and_resume_finishes(three_shards, tmp_path):
    run_dir = tmp_path / "run"
    launcher, args = start_training(
        run_dir, three_shards, "train.epochs=2", "train.steps_per_epoch=12"
    )
    try:
        wait_for_step(run_dir, 3)
        ranks = rank_processes(launcher)
        assert sorted(ranks) == [0, 1]
        # Like a scheduler: rank 1 and its loader workers; rank 0 must follow on its own.
        for process in [ranks[1], *ranks[1].children(recursive=True)]:
            process.send_signal(signal.SIGTERM)
        output = launcher.communicate(timeout=300)[0]
    finally:
        launcher.kill()
    assert "checkpoint saved" in output, output[-3000:]
    stopped_at = read_state(find_latest(run_dir))["step"]
    assert 3 <= stopped_at < 12, "the stop should land mid-epoch"
    assert not (run_dir / "metrics.json").exists()
    run(accelerate_command("launch/train.py", *args, "--resume", "latest"))
    assert history_steps(run_dir) == list(range(1, 25)), "gap or duplicate step in the history"
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 24


def test_stop_file_stops_a_running_job(three_shards, tmp_path):
    run_dir = tmp_path / "run"
    launcher, _ = start_training(
        run_dir, three_shards, "train.epochs=4", "train.steps_per_epoch=10"
    )
    try:
        wait_for_step(run_dir, 2)
        (run_dir / "STOP").touch()
        output = launcher.communicate(timeout=300)[0]
    finally:
        launcher.kill()
    assert "checkpoint saved" in output, output[-3000:]
    assert read_state(find_latest(run_dir))["step"] < 40


def test_stalled_rank_fails_the_job_instead_of_hanging(three_shards, tmp_path):
    run_dir = tmp_path / "run"
    launcher, _ = start_training(
        run_dir, three_shards, "train.epochs=50", "train.dist_timeout_s=15"
    )
    try:
        wait_for_step(run_dir, 2)
        rank_processes(launcher)[1].suspend()  # alive but silent, like a wedged GPU or a lost node
        started = time.monotonic()
        output = launcher.communicate(timeout=240)[0]
        elapsed = time.monotonic() - started
    finally:
        for process in psutil.Process().children(recursive=True):
            process.kill()
    assert launcher.returncode != 0
    assert elapsed < 200, f"the job took {elapsed:.0f} s to fail"
    assert "timed out" in output.lower(), output[-3000:]
