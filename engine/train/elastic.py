"""Resuming on another number of processes: what carries over, what changes, what is said.

A requeued cluster job may get another number of GPUs or nodes. ``--resume latest`` then
continues the same run: the step, the learning-rate schedule, the optimiser and grad-scaler
states, the best score and the history carry over unchanged (they are one copy, saved by
the main process, and do not depend on the world size). What changes:

* **The global batch.** The config is kept as written: ``data.batch_size`` stays per
  process and ``train.grad_accum`` as set, so the global batch (``batch_size × processes ×
  grad_accum``) follows the world size; the main process says so in one warning line.
  The learning rate is not rescaled.
* **The data order.** Each rank's stream is seeded by ``(seed, rank, worker, first step)``
  (:func:`engine.train.setup.stream_from_here`), independent of the world size: a resumed
  run on N processes (with the same ``data.num_workers``) is reproducible given N, and the
  ranks both worlds share draw what they would have drawn.
* **Gradient accumulation** may be changed on resume (to keep the global batch, say):
  accelerate's micro-batch counter is set to whole steps of the new ``train.grad_accum``.
* **RNG states** are per rank (``rng-<rank>.safetensors``). Ranks the checkpoint has a file
  for restore it; files of ranks that no longer exist are ignored; ranks without one are
  seeded from ``(seed, step, rank)`` (:func:`rank_seed`), said once by the main process.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from accelerate.utils import set_seed

from engine.train.checkpoint import RNG_PREFIX, Checkpoint
from engine.train.config import Config


def global_batch(config: Config, world_size: int) -> int:
    """Images per optimiser step over all processes."""
    return config.data.batch_size * world_size * config.train.grad_accum


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed of a rank resumed without a saved RNG state: a function of (seed, step, rank)."""
    return random.Random(f"terraseg/rng/{seed}/{step}/{rank}").getrandbits(32)


def _saved_count(state: dict[str, Any], key: str) -> int | None:
    """A positive integer the checkpoint recorded under ``key``; None if absent or not one."""
    value = state.get(key)
    return value if type(value) is int and value > 0 else None


def ranks_without_rng(state: dict[str, Any], world_size: int) -> list[int]:
    """The ranks of a ``world_size`` run for which the checkpoint holds no RNG state file."""
    files = state.get("files")
    files = files if isinstance(files, dict) else {}
    return [rank for rank in range(world_size) if f"{RNG_PREFIX}{rank}.safetensors" not in files]


def world_change(checkpoint: Checkpoint, config: Config, world_size: int) -> tuple[str, str]:
    """What to tell the user when resuming ``checkpoint`` on ``world_size`` processes.

    Returns:
        ``(note, warning)``, each one line or empty: the note when the world size or the
        RNG states differ, the warning when the global batch changed.
    """
    state, step = checkpoint.state, checkpoint.state["step"]
    saved_world = _saved_count(state, "world_size")
    missing = ranks_without_rng(state, world_size)
    note = ""
    if saved_world not in (None, world_size) or missing:
        note = f"resumed on {world_size} process(es)"
        if saved_world is not None:
            note += f"; the checkpoint was written by {saved_world}"
        if missing:
            note += (
                f"; rank(s) {', '.join(map(str, missing))} have no saved RNG state and are "
                f"seeded from (seed {config.seed}, step {step}, rank)"
            )
    saved_batch, batch = _saved_count(state, "global_batch"), global_batch(config, world_size)
    warning = ""
    if saved_batch is not None and saved_batch != batch:
        warning = (
            f"global batch changed from {saved_batch} to {batch} images per step at step "
            f"{step} (data.batch_size {config.data.batch_size} × {world_size} process(es) × "
            f"train.grad_accum {config.train.grad_accum}); the learning rate and its schedule "
            "continue as configured"
        )
    return note, warning


def continue_on_this_world(checkpoint: Checkpoint, config: Config, accelerator: Any) -> None:
    """Align accumulation, seed this rank if it has no RNG state; say what changed, once.

    Called on every rank after the checkpoint's training state is restored.
    """
    step = checkpoint.state["step"]
    # Checkpoints fall between optimiser steps: count whole steps of *this* run's
    # accumulation, or a changed train.grad_accum would shift every gradient sync.
    accelerator.step = step * config.train.grad_accum
    if checkpoint.rng is None:
        set_seed(rank_seed(config.seed, step, accelerator.process_index))
    if not accelerator.is_main_process:
        return
    note, warning = world_change(checkpoint, config, accelerator.num_processes)
    if note:
        print(note, flush=True)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
