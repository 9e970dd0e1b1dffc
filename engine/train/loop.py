"""The training loop: one code path for CPU, one GPU, many GPUs and many nodes.

Read :func:`train` top to bottom: set up, then optimiser steps. Each step draws
``grad_accum`` uint8 micro-batches from this rank's shard stream, augments them on the
device, runs forward/backward and steps the optimiser (:mod:`engine.train.step`). The host
reads device values only at sync points (log, eval and checkpoint steps): steps in between
queue work without waiting, so the device never idles on the host. At a sync point the
non-finite counters are checked, a history row is written, the val split is evaluated and
the best model exported (:mod:`engine.train.validate`), a checkpoint is written, and stop
requests (signals, ``RUN/STOP``, ``train.stop_after_steps``) are acted on
(:mod:`engine.train.stopping`).
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.train.checkpoint import save_checkpoint
from engine.train.config import Config
from engine.train.setup import Run, set_up, stream_from_here
from engine.train.step import LogWindow, NonFiniteSkip, optimizer_step
from engine.train.stopping import (
    EXIT_PREEMPTED,
    STOP_FILE,
    PreemptionFlag,
    TrainingDiverged,
)
from engine.train.validate import final_metrics, validate_and_export


@dataclass
class TrainResult:
    """What :func:`train` returns: the final metrics and the model as training left it.

    The best weights (by validation mIoU) are in ``RUN/best``; the final metrics are theirs.
    """

    metrics: dict[str, Any]
    model: torch.nn.Module


def train(config: Config, run_dir: str | Path, resume: str | None = None) -> TrainResult:
    """Train, evaluate and export as the config says.

    Args:
        config: The resolved experiment config.
        run_dir: The run directory (created). See docs/design.md for its contents.
        resume: ``"latest"`` or a checkpoint folder to continue from, or None.

    Returns:
        The final metrics (also written to ``RUN/metrics.json``) and the model.

    Raises:
        TrainingDiverged: after ``train.max_bad_steps`` consecutive non-finite steps.
        SystemExit: with :data:`EXIT_PREEMPTED` after a preemption checkpoint.
    """
    run = set_up(config, run_dir, resume)
    preemption, stop_file = PreemptionFlag(), run.run_dir / STOP_FILE
    _announce(run, stop_file)
    total, per_epoch = config.total_steps, config.steps_per_epoch
    window = LogWindow(run.loss_terms, run.device)
    skip = NonFiniteSkip(run.optimizer, run.fp16, run.state.bad_steps, run.device)
    progress = tqdm(
        total=total, initial=run.state.step, desc="train", disable=not run.main, dynamic_ncols=True
    )
    steps_this_run = 0
    run.model.train()
    while run.state.step < total:
        in_epoch = per_epoch - run.state.step % per_epoch
        batches, augment = stream_from_here(run, in_epoch)
        for _ in range(in_epoch):
            optimizer_step(run, batches, augment, window, skip)
            progress.update()
            steps_this_run += 1
            log_now, eval_now, save_now = _due(run)
            sync_point = log_now or eval_now or save_now
            if sync_point and not run.fp16:
                _check_nonfinite(run, skip)
            if log_now:
                loss, lr = _write_train_row(run, window)
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if eval_now:
                validate_and_export(run)
            # Never while non-finite steps run: the last good checkpoint stays latest.
            saved = (save_now and not run.state.bad_steps) or run.state.step == total
            if saved:
                _checkpoint(run)
            if _stop_requested(run, steps_this_run, preemption, stop_file, sync_point):
                _stop(run, saved, progress)
    progress.close()
    preemption.restore()
    final = final_metrics(run)
    run.tracker.finish()
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()
    return TrainResult(final, run.accelerator.unwrap_model(run.model))


def _announce(run: Run, stop_file: Path) -> None:
    """Clear a stale stop file (a requeued job must not stop at once) and say what runs."""
    if run.main:
        stop_file.unlink(missing_ok=True)
        print(
            f"terraseg: {run.accelerator.num_processes} processes, device {run.device.type}, "
            f"precision {run.accelerator.mixed_precision}, "
            f"step {run.state.step}/{run.config.total_steps}",
            flush=True,
        )
    run.accelerator.wait_for_everyone()


def _due(run: Run) -> tuple[bool, bool, bool]:
    """Whether this step logs, evaluates and checkpoints."""
    config, step, total = run.config, run.state.step, run.config.total_steps
    end_of_epoch = step % config.steps_per_epoch == 0
    every = config.train.eval_every
    val = config.data.val_split
    evaluating = bool(
        val
        and run.manifest.has_split(val)
        and ((every and step % every == 0) or (not every and end_of_epoch) or step == total)
    )
    every = config.train.checkpoint_every
    saving = bool((every and step % every == 0) or (not every and end_of_epoch))
    logging_now = step % config.train.log_every == 0 or step == total
    return logging_now, evaluating, saving


def _check_nonfinite(run: Run, skip: NonFiniteSkip) -> None:
    """Read the non-finite counters (a host sync); raise when the run diverged."""
    state, limit = run.state, run.config.train.max_bad_steps
    state.bad_steps, skipped, worst = skip.read()
    if skipped and run.main:
        print(
            f"step {state.step}: {skipped} step(s) with a non-finite gradient skipped since "
            f"the last report ({worst} in a row at most; limit {limit})",
            flush=True,
        )
    if worst >= limit:
        run.accelerator.wait_for_everyone()
        run.tracker.finish()
        raise TrainingDiverged(
            state.step, f"{worst} consecutive non-finite steps, train.max_bad_steps = {limit}"
        )


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _write_train_row(run: Run, window: LogWindow) -> tuple[float, float]:
    """Write the window's mean losses, speed and memory as a history row; start a new window.

    Returns:
        The mean loss and the learning rate (for the progress bar).
    """
    config, state = run.config, run.state
    elapsed = time.perf_counter() - window.start
    values = run.accelerator.reduce(torch.stack(list(window.running.values())), "mean")
    means = zip(window.running, (values / window.steps).tolist())
    row: dict[str, Any] = {("loss" if n == "loss" else f"loss/{n}"): float(v) for n, v in means}
    per_step = config.train.grad_accum * config.data.batch_size * run.accelerator.num_processes
    row |= {
        "step": state.step,
        "epoch": state.step / config.steps_per_epoch,
        "split": "train",
        "time_s": elapsed,
        "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": float(window.grad_norm),
        "images_per_s": window.steps * per_step / elapsed,
        "data_wait": window.data_wait / elapsed,
        "peak_mem_mb": _peak_memory_mb(run.device),
    }
    run.history.write(row)
    run.tracker.log(
        {f"train/{k}": v for k, v in row.items() if k not in ("step", "split")}, state.step
    )
    window.reset()
    return row["loss"], row["lr"]


def _checkpoint(run: Run) -> None:
    """Save a checkpoint (refused, raising TrainingDiverged, when the weights are not finite)."""
    save_checkpoint(
        run.accelerator,
        run.run_dir,
        {**run.state.to_dict(run.config, run.accelerator.num_processes), "model": run.model_spec},
        run.config.train.keep_checkpoints,
        model=run.model,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
    )


def _stop_requested(
    run: Run, steps_this_run: int, preemption: PreemptionFlag, stop_file: Path, sync_point: bool
) -> bool:
    """Whether every rank stops now: ``stop_after_steps`` reached, or any rank's flag seen.

    A signal or the stop file raises this rank's flag at once; the flags are gathered (an
    all-reduce) only at sync points, so every rank stops at the same step.
    """
    stop, state = run.config.train.stop_after_steps, run.state
    stopping = bool(stop and steps_this_run >= stop and state.step < run.config.total_steps)
    if preemption.signal is not None or (run.main and stop_file.exists()):
        run.accelerator.set_trigger()
    if sync_point:
        stopping = run.accelerator.check_trigger() or stopping
    return stopping


def _stop(run: Run, saved: bool, progress: tqdm) -> None:
    """Checkpoint (unless this step did), close the logs and exit with EXIT_PREEMPTED."""
    if not saved:
        _checkpoint(run)
    progress.close()
    run.tracker.finish()
    run.accelerator.wait_for_everyone()
    if run.main:
        print(
            f"stopped at step {run.state.step} (signal or train.stop_after_steps): "
            "checkpoint saved; continue with --resume latest",
            flush=True,
        )
    run.accelerator.end_training()
    sys.exit(EXIT_PREEMPTED)
