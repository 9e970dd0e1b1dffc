"""Resumable checkpoints without pickle, finite or not at all, written atomically, the last K kept.

A checkpoint is ``RUN/checkpoints/step-XXXXXXXX/``:

- ``model.safetensors``: the unwrapped model's state dict (as an export's weights);
- ``optimizer.safetensors``: the optimiser, scheduler and grad-scaler states and
  accelerate's accumulation counter (:func:`engine.train.state_io.save_state`);
- ``rng-<rank>.safetensors``: each rank's Python, NumPy and torch (CPU, CUDA) RNG states;
- ``trainer_state.json``, written last: step, epoch, best score, the model spec, the format
  and the size of every file.

Nothing is pickled, so loading cannot run code. Every rank writes into
``.tmp-step-XXXXXXXX`` first; the main process renames it when all ranks are done. Before
anything is written the weights and optimiser state are checked finite on the device (one
host read): a diverged run raises :class:`~engine.train.stopping.TrainingDiverged` and the
last finite checkpoint stays the latest. A full disk removes the temporary folder and is a
:class:`~engine.train.state_io.DiskFullError`.

Reading back, :func:`find_latest` checks the state file and the sizes (cheap);
:func:`open_checkpoint` also parses every file and checks the weights finite, and
``--resume latest`` takes the newest checkpoint that passes (an error when none does).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archs import unwrap_model
from engine.errors import UserError
from engine.train import state_io
from engine.train.state_io import DiskFullError, StateFileError
from engine.train.state_schema import check_rng_state, check_trainer_state
from engine.train.stopping import TrainingDiverged

STATE_NAME = "trainer_state.json"
MODEL_NAME = "model.safetensors"
OPTIMIZER_NAME = "optimizer.safetensors"
RNG_PREFIX = "rng-"
PREFIX = "step-"
FORMAT = 2  # 1: accelerate's save_state (pickles), never loaded

log = logging.getLogger(__name__)


class CheckpointError(UserError):
    """A checkpoint is incomplete, corrupt, unsafe or does not fit the run; names the file."""


def checkpoints_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def read_state(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint's ``trainer_state.json`` (format, fields, file sizes).

    The file is metadata from a possibly hostile writer: size-capped strict JSON, every
    field checked by :func:`engine.train.state_schema.check_trainer_state`.

    Raises:
        CheckpointError: when the state file is missing, unreadable or malformed (naming the
            field), the checkpoint has an older (pickled) format, or a file it lists is
            missing or has another size.
    """
    path = Path(path)
    where = path / STATE_NAME
    try:
        state = state_io.read_json(where, "checkpoint state")
        version = state.get("format", 1)
        if type(version) is not int or version != FORMAT:
            raise CheckpointError(
                f"{where}: checkpoint format {version!r:.40}, this terraseg reads format "
                f"{FORMAT} only (older checkpoints hold pickles and are never loaded)"
            )
        check_trainer_state(state, where, _step_of(path))
    except StateFileError as error:
        raise CheckpointError(str(error)) from error
    for name, size in state["files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CheckpointError(f"{file}: missing or truncated (size {size} recorded)")
    return state


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (by step)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if (step := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run; incomplete ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_state(path)
        except CheckpointError as error:
            log.warning("skipping incomplete checkpoint: %s", error)
            continue
        return path
    return None


@dataclass
class Checkpoint:
    """A checkpoint read and verified (every file parsed, weights and state finite)."""

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    training: dict[str, Any]
    rng: dict[str, Any] | None  # this rank's RNG states (None: saved by fewer ranks)


def open_checkpoint(path: str | Path, rank: int = 0) -> Checkpoint:
    """Read and verify a checkpoint folder.

    Raises:
        CheckpointError: naming the file that is missing, truncated, not safetensors/JSON,
            or holds non-finite weights or optimiser state.
    """
    path = Path(path)
    state = read_state(path)
    try:
        model, _ = state_io.load_tensors(path / MODEL_NAME)
        training = state_io.load_state(path / OPTIMIZER_NAME)
        rngs = {
            name: state_io.load_state(path / name)
            for name in state["files"]
            if name.startswith(RNG_PREFIX)
        }
        for name, rng in rngs.items():  # every rank checks all: all refuse the same folder
            check_rng_state(rng, path / name)
    except StateFileError as error:
        raise CheckpointError(str(error)) from error
    bad = state_io.nonfinite_names(model)
    if bad:
        raise CheckpointError(
            f"{path / MODEL_NAME}: {len(bad)} weight tensor(s) hold NaN or inf "
            f"(first: {bad[0]}); refusing to resume from it"
        )
    if not isinstance(training, dict) or "optimizer" not in training:
        raise CheckpointError(f"{path / OPTIMIZER_NAME}: no optimiser state")
    if not state_io.all_finite(state_io.state_tensors(training)):
        raise CheckpointError(
            f"{path / OPTIMIZER_NAME}: the optimiser state holds NaN or inf; "
            "refusing to resume from it"
        )
    rng = rngs.get(f"{RNG_PREFIX}{rank}.safetensors")
    return Checkpoint(path, state, model, training, rng)


def resolve_resume(
    run_dir: str | Path, resume: str | None, rank: int = 0, total_steps: int | None = None
) -> Checkpoint | None:
    """Turn ``--resume latest|DIR`` into a verified checkpoint (``None``: nothing to resume).

    Args:
        run_dir: The run folder.
        resume: ``"latest"``, a checkpoint folder, or None (not resuming: returns None).
        rank: This process's rank (whose RNG state is taken).
        total_steps: The run's planned optimiser steps (None: not checked).

    ``latest`` takes the newest checkpoint that verifies, skipping broken ones (corrupt,
    or a state file that fails its schema) with a warning; when the run has checkpoints but
    none verifies, that is an error (a fresh start would overwrite the run's history). A
    checkpoint past ``total_steps`` is an error, not skipped: it fits another plan, and
    an older checkpoint would silently throw its steps away.

    Raises:
        CheckpointError: when an explicit folder does not verify, no checkpoint does, or
            the chosen one is past the run's ``total_steps``.
    """
    if not resume:
        return None
    if resume != "latest":
        return within_plan(open_checkpoint(resume, rank), total_steps)
    problems = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            checkpoint = open_checkpoint(path, rank)
        except CheckpointError as error:
            log.warning("skipping checkpoint: %s", error)
            problems.append(str(error))
            continue
        return within_plan(checkpoint, total_steps)
    if problems:
        raise CheckpointError(
            f"{checkpoints_dir(run_dir)}: no usable checkpoint among {len(problems)} "
            f"({'; '.join(problems)}); move them aside to start afresh"
        )
    return None


def within_plan(checkpoint: Checkpoint, total_steps: int | None) -> Checkpoint:
    """The checkpoint, if its step is within ``total_steps`` (None: not checked).

    Raises:
        CheckpointError: naming the state file, its step and the run's steps.
    """
    step = checkpoint.state["step"]
    if total_steps is not None and step > total_steps:
        raise CheckpointError(
            f"{checkpoint.path / STATE_NAME}: 'step' {step} is past this run's {total_steps} "
            "steps (train.epochs × train.steps_per_epoch); raise train.epochs to continue it"
        )
    return checkpoint


def any_rank(accelerator: Any, flag: bool) -> bool:
    """Whether ``flag`` is set on any rank (a collective call: every rank must make it)."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), "sum")
    return bool(total.item())


def _write_parts(
    accelerator: Any, staging: Path, model: Any, optimizer: Any, scheduler: Any
) -> None:
    """Write this rank's RNG states, and on the main process the model and training state."""
    import random

    import numpy as np

    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state_io.save_state(staging / f"{RNG_PREFIX}{accelerator.process_index}.safetensors", rng)
    if accelerator.is_main_process:
        weights = unwrap_model(model).state_dict()
        state_io.save_tensors(staging / MODEL_NAME, weights, {"format": "pt"})
        scaler = getattr(accelerator, "scaler", None)
        training = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "accumulation_step": int(getattr(accelerator, "step", 0)),
        }
        state_io.save_state(staging / OPTIMIZER_NAME, training)


def _ensure_finite(step: int, model: Any, optimizer: Any) -> None:
    tensors = list(unwrap_model(model).state_dict().values())
    tensors += state_io.state_tensors(optimizer.state_dict()["state"])
    if not state_io.all_finite(tensors):
        raise TrainingDiverged(
            step,
            "the model's weights or buffers or the optimiser state are no longer finite, "
            "nothing saved; lower optim.lr or set optim.grad_clip",
        )


def _finish(staging: Path, final: Path, state: dict[str, Any]) -> None:
    """Record the sizes in ``trainer_state.json`` (written last) and move the folder in place."""
    files = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
    state_io.write_json(staging / f".{STATE_NAME}", {**state, "format": FORMAT, "files": files})
    os.replace(staging / f".{STATE_NAME}", staging / STATE_NAME)
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def save_checkpoint(
    accelerator: Any,
    run_dir: str | Path,
    state: dict[str, Any],
    keep: int,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
) -> Path:
    """Save a resumable checkpoint on every rank (a collective call), then prune old ones.

    Args:
        accelerator: The run's ``accelerate.Accelerator``.
        run_dir: The run directory.
        state: Loop state; must hold ``step`` (and ``model``, the spec, to check a resume).
        keep: How many checkpoints to keep (oldest removed first).
        model: The prepared model (unwrapped before saving).
        optimizer: The prepared optimiser.
        scheduler: The learning-rate scheduler.

    Returns:
        The checkpoint folder.

    Raises:
        TrainingDiverged: when the weights or optimiser state are not finite (nothing written).
        DiskFullError: when the disk fills (the temporary folder is removed).
    """
    run_dir = Path(run_dir)
    _ensure_finite(state["step"], model, optimizer)
    folder = checkpoints_dir(run_dir)
    final = folder / f"{PREFIX}{state['step']:08d}"
    staging = folder / f".tmp-{final.name}"
    error: OSError | None = None
    main = accelerator.is_main_process
    if main:
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        except OSError as caught:
            error = caught
    failed = any_rank(accelerator, error is not None)  # every rank makes each of these calls
    if not failed:
        try:
            _write_parts(accelerator, staging, model, optimizer, scheduler)
        except OSError as caught:
            error = caught
        failed = any_rank(accelerator, error is not None)
        if not failed and main:
            try:
                _finish(staging, final, state)
            except OSError as caught:
                error = caught
        failed = any_rank(accelerator, error is not None)
    if failed:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, DiskFullError):
            raise error
        if error is not None:
            raise state_io.disk_full(error, error.filename or staging) or error
        raise CheckpointError(f"{final}: another rank failed writing its part of the checkpoint")
    if accelerator.is_main_process:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_fits(checkpoint: Checkpoint, model_spec: dict[str, Any], shards: str | Path) -> None:
    """Refuse a checkpoint whose model (classes, arch, options) is not the run's.

    Raises:
        CheckpointError: naming the checkpoint, what it has and what the run has.
    """
    path, saved = checkpoint.path, checkpoint.state.get("model") or {}
    if saved.get("num_classes", model_spec["num_classes"]) != model_spec["num_classes"]:
        raise CheckpointError(
            f"{path}: the checkpoint's model has {saved['num_classes']} classes but the shards "
            f"{shards} have {model_spec['num_classes']}; resume with the shards it was trained "
            "on, or start a new run folder"
        )
    for key in ("arch", "options"):
        if key in saved and saved[key] != json.loads(json.dumps(model_spec[key], default=str)):
            raise CheckpointError(
                f"{path}: the checkpoint's model {key} is {saved[key]!r}, the config asks for "
                f"{model_spec[key]!r}; resume with the config it was trained with"
            )


def load_checkpoint_weights(checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """Load a verified checkpoint's weights into the freshly built, unprepared model.

    Called before the optimiser is built: a model may adapt a module to the saved shapes
    while loading (ResUNet-34 takes a 1x1 head from checkpoints written before the 3x3 head,
    docs/archs.md), and the optimiser must hold the parameters the model ends up with.

    Raises:
        CheckpointError: when the saved weights do not fit the model.
    """
    try:
        model.load_state_dict(checkpoint.model, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        text = str(error).strip().splitlines()
        raise CheckpointError(
            f"{checkpoint.path}: does not fit this run's model ({text[0] if text else error})"
        ) from error


def restore_training_state(
    checkpoint: Checkpoint, accelerator: Any, optimizer: Any, scheduler: Any
) -> None:
    """Restore the optimiser, schedule, scaler, accumulation step and this rank's RNG.

    The weights are loaded first, by :func:`load_checkpoint_weights`.

    Raises:
        CheckpointError: when the saved optimiser state does not fit the run's.
    """
    import random

    import numpy as np

    path = checkpoint.path
    training = checkpoint.training
    try:
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        scaler = getattr(accelerator, "scaler", None)
        if scaler is not None and training.get("scaler"):
            scaler.load_state_dict(training["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        text = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path}: does not fit this run's optimiser ({text[0] if text else error})"
        ) from error
    accelerator.step = int(training.get("accumulation_step", 0))
    rng = checkpoint.rng
    if rng is None:  # a rank the saving run did not have: engine.train.elastic seeds it
        return
    try:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            if len(rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(rng["cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: malformed RNG state ({error})") from error
