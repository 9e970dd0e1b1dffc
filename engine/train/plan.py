"""The training schedule planned from the dataset: ``train.epochs`` / ``steps_per_epoch: auto``.

An epoch is one pass over the train tiles: ``ceil(train samples / global batch)`` optimiser
steps, the global batch being ``data.batch_size × processes × train.grad_accum``. An
``auto`` number of epochs is :data:`DEFAULT_EPOCHS`, raised until the run has at least
:data:`MIN_PLANNED_STEPS` steps and lowered (never under one epoch) to stay within
:data:`MAX_PLANNED_STEPS`. Numbers set in the config are kept exactly. The plan is said in
one line at the start, e.g. ``planned 600 steps: 30 epochs × 20 steps (400 train tiles /
global batch 20)``, and written into the config (so ``RUN/config.yaml`` and every
checkpoint record it). A resumed run keeps the plan its checkpoint records, whatever the
number of processes now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.train.config_check import MAX_STEPS, ConfigError
from engine.train.config_types import AUTO, Config

DEFAULT_EPOCHS = 30  # one real dataset after another needed about this many passes
MIN_PLANNED_STEPS = 300  # a tiny train split still gets enough optimiser steps to learn
MAX_PLANNED_STEPS = 50_000  # a huge one is not planned into weeks: set the numbers for that


@dataclass(frozen=True)
class SchedulePlan:
    """The run's schedule and the one line that says how it was reached."""

    epochs: int
    steps_per_epoch: int
    line: str

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return self.epochs * self.steps_per_epoch


def plan_schedule(config: Config, train_samples: int, global_batch: int) -> SchedulePlan | None:
    """The schedule for ``auto`` epochs and/or steps per epoch (None: both are set).

    Args:
        config: The experiment config; its ``train.epochs``/``train.steps_per_epoch``
            are numbers (kept) or ``auto`` (planned).
        train_samples: Tiles in the train split.
        global_batch: Images per optimiser step over all processes.

    Raises:
        ConfigError: when a set number of epochs times the planned epoch is over 10¹².
    """
    epochs, per_epoch = config.train.epochs, config.train.steps_per_epoch
    if epochs != AUTO and per_epoch != AUTO:
        return None
    one_pass = max(1, math.ceil(train_samples / global_batch))
    source = f"{train_samples} train tiles / global batch {global_batch}"
    if isinstance(per_epoch, int):
        one_pass, source = per_epoch, "train.steps_per_epoch"
    why = ""
    if isinstance(epochs, int):
        count, epochs_source = epochs, " (train.epochs)"
    else:
        count, why = _planned_epochs(one_pass)
        epochs_source = ""
    _check_total(count, one_pass)
    total = count * one_pass
    line = (
        f"planned {total:,} steps: {count} epochs{epochs_source} × {one_pass:,} steps "
        f"({source}){why}"
    )
    return SchedulePlan(count, one_pass, line)


def _planned_epochs(steps_per_epoch: int) -> tuple[int, str]:
    """The default number of epochs brought within the step bounds, and why it moved."""
    default = DEFAULT_EPOCHS * steps_per_epoch
    if default < MIN_PLANNED_STEPS:
        epochs = math.ceil(MIN_PLANNED_STEPS / steps_per_epoch)
        return epochs, (
            f"; {DEFAULT_EPOCHS} epochs would be only {default:,} steps, raised to reach "
            f"{MIN_PLANNED_STEPS:,}"
        )
    if default > MAX_PLANNED_STEPS:
        epochs = max(1, MAX_PLANNED_STEPS // steps_per_epoch)
        return epochs, (
            f"; {DEFAULT_EPOCHS} epochs would be {default:,} steps, lowered to stay within "
            f"{MAX_PLANNED_STEPS:,} (set train.epochs for more)"
        )
    return DEFAULT_EPOCHS, ""


def recorded_plan(config: Config, state: dict[str, Any]) -> SchedulePlan | None:
    """The plan a checkpoint's ``trainer_state.json`` records, for the fields still ``auto``.

    Returns:
        None when both fields are set in the config, or the checkpoint records no plan
        (one written before plans were recorded: the run is planned afresh).
    """
    epochs, per_epoch = config.train.epochs, config.train.steps_per_epoch
    # Checked with the state file (engine.train.state_schema): a whole number of epochs.
    saved_total, saved_per_epoch = state.get("total_steps"), state.get("steps_per_epoch")
    if epochs != AUTO and per_epoch != AUTO:
        return None
    if not (isinstance(saved_total, int) and isinstance(saved_per_epoch, int)):
        return None
    count = epochs if isinstance(epochs, int) else saved_total // saved_per_epoch
    one_pass = per_epoch if isinstance(per_epoch, int) else saved_per_epoch
    _check_total(count, one_pass)
    line = (
        f"planned {count * one_pass:,} steps: {count} epochs × {one_pass:,} steps (the plan "
        "the checkpoint records)"
    )
    return SchedulePlan(count, one_pass, line)


def _check_total(epochs: int, steps_per_epoch: int) -> None:
    if epochs * steps_per_epoch > MAX_STEPS:
        raise ConfigError(
            f"train.epochs = {epochs} × {steps_per_epoch} planned steps per epoch is "
            f"{epochs * steps_per_epoch} steps, more than {MAX_STEPS}: lower train.epochs"
        )


def apply_plan(config: Config, plan: SchedulePlan | None) -> None:
    """Write a plan's numbers into the config (nothing when ``plan`` is None)."""
    if plan is not None:
        config.train.epochs, config.train.steps_per_epoch = plan.epochs, plan.steps_per_epoch
