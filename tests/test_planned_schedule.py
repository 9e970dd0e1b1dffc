"""The schedule planned from the dataset (``train.epochs``/``steps_per_epoch: auto``)."""

import json
import math

import pytest
import yaml
from conftest import tiny_config

from engine.data.shards.manifest import load_manifest
from engine.train.checkpoint import find_latest, read_state
from engine.train.config import ConfigError, load_config
from engine.train.loop import train
from engine.train.plan import MAX_PLANNED_STEPS, MIN_PLANNED_STEPS, plan_schedule
from engine.train.setup import set_up
from engine.train.state_io import StateFileError
from engine.train.state_schema import check_trainer_state


def planned(samples: int, batch: int, *overrides: str):
    config = load_config("tiny-cpu", [f"data.batch_size={batch}", *overrides])
    return plan_schedule(config, samples, batch)


def test_an_epoch_is_one_pass_over_the_train_tiles_and_the_line_says_why():
    plan = planned(400, 20)
    assert (plan.epochs, plan.steps_per_epoch, plan.total_steps) == (30, 20, 600)
    line = "planned 600 steps: 30 epochs × 20 steps (400 train tiles / global batch 20)"
    assert plan.line == line
    assert planned(401, 20).steps_per_epoch == 21  # a part batch is a step


def test_the_default_epochs_are_raised_to_the_floor_and_lowered_to_the_ceiling():
    small = planned(16, 4)  # 4 steps an epoch: 30 epochs would be 120 steps
    assert small.total_steps >= MIN_PLANNED_STEPS and small.steps_per_epoch == 4
    assert small.epochs == math.ceil(MIN_PLANNED_STEPS / 4)
    assert "30 epochs would be only 120 steps, raised to reach 300" in small.line
    large = planned(100_000, 8)  # 12,500 steps an epoch
    assert (large.epochs, large.steps_per_epoch) == (MAX_PLANNED_STEPS // 12_500, 12_500)
    assert "lowered to stay within 50,000 (set train.epochs for more)" in large.line
    huge = planned(10_000_000, 8)  # one pass is over the ceiling: still one whole pass
    assert (huge.epochs, huge.steps_per_epoch) == (1, 1_250_000)


def test_numbers_set_in_the_config_are_kept_exactly():
    assert planned(400, 20, "train.epochs=3", "train.steps_per_epoch=7") is None
    plan = planned(400, 20, "train.epochs=2")
    assert (plan.epochs, plan.steps_per_epoch) == (2, 20)
    assert plan.line.startswith("planned 40 steps: 2 epochs (train.epochs) × 20 steps (400")
    plan = planned(400, 20, "train.steps_per_epoch=5")
    assert (plan.epochs, plan.steps_per_epoch) == (60, 5)  # 30 × 5 is under the floor
    assert "× 5 steps (train.steps_per_epoch)" in plan.line
    with pytest.raises(ConfigError, match="more than 1000000000000: lower train.epochs"):
        planned(400, 1, "train.epochs=100000000000")


def test_an_auto_config_on_tiny_shards_plans_and_prints_the_steps(
    synthetic_shards, tmp_path, capsys
):
    samples = load_manifest(synthetic_shards).split("train").num_samples
    config = tiny_config(synthetic_shards, "train.epochs=auto", "train.steps_per_epoch=auto")
    run = set_up(config, tmp_path / "run", None)
    per_epoch = math.ceil(samples / 2)  # tiny_args: data.batch_size=2, one process
    epochs = max(30, math.ceil(MIN_PLANNED_STEPS / per_epoch))
    line = (
        f"planned {epochs * per_epoch} steps: {epochs} epochs × {per_epoch} steps "
        f"({samples} train tiles / global batch 2)"
    )
    assert line in capsys.readouterr().out.splitlines()
    assert (run.config.epochs, run.config.steps_per_epoch) == (epochs, per_epoch)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert (saved["epochs"], saved["steps_per_epoch"]) == (epochs, per_epoch)


def test_explicit_numbers_print_no_plan(synthetic_shards, tmp_path, capsys):
    run = set_up(tiny_config(synthetic_shards), tmp_path / "run", None)  # 2 × 4 set
    assert run.config.total_steps == 8 and "planned" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_resumed_run_keeps_the_plan_its_checkpoint_records(synthetic_shards, tmp_path, capsys):
    samples = load_manifest(synthetic_shards).split("train").num_samples
    per_epoch = math.ceil(samples / 8)
    first = ["train.steps_per_epoch=auto", "data.batch_size=8", "train.stop_after_steps=3"]
    with pytest.raises(SystemExit):
        train(tiny_config(synthetic_shards, *first), tmp_path / "run")
    assert f"planned {2 * per_epoch} steps: 2 epochs (train.epochs) × {per_epoch}" in (
        capsys.readouterr().out
    )
    state = read_state(find_latest(tmp_path / "run"))
    assert (state["total_steps"], state["steps_per_epoch"]) == (2 * per_epoch, per_epoch)
    # Resumed with another batch: a fresh plan would differ; the recorded one is kept.
    second = ["train.steps_per_epoch=auto", "data.batch_size=4"]
    result = train(tiny_config(synthetic_shards, *second), tmp_path / "run", resume="latest")
    out = capsys.readouterr().out
    assert f"planned {2 * per_epoch} steps: 2 epochs × {per_epoch} steps (the plan the" in out
    assert result.metrics["steps"] == 2 * per_epoch
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 * per_epoch


def test_a_checkpoint_plan_is_checked_with_its_state(tmp_path):
    state = {"format": 1, "files": {}, "step": 4, "best_miou": -1, "best_step": -1, "bad_steps": 0}
    where = tmp_path / "trainer_state.json"
    for bad, message in [
        ({"total_steps": 8}, "'total_steps' and 'steps_per_epoch' come together"),
        ({"total_steps": 3, "steps_per_epoch": 1}, r"'total_steps' must be an integer in \[4,"),
        ({"total_steps": 9, "steps_per_epoch": 2}, "not a whole number of epochs"),
    ]:
        with pytest.raises(StateFileError, match=message):
            check_trainer_state(state | bad, where, 4)
