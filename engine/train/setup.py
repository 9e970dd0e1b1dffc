"""Setting up a run: accelerator, data manifest, model, loss, optimiser, resume, logging.

:func:`set_up` returns a :class:`Run`: everything the loop needs, in one place, with the
step counter and best score in :class:`LoopState` (what a checkpoint records besides the
model, optimiser and RNG states).
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed

import archs
from engine.data.shards.loader import train_batches
from engine.data.shards.manifest import Manifest, load_manifest
from engine.train.augment import TrainAugment
from engine.train.checkpoint import (
    Checkpoint,
    check_fits,
    load_checkpoint_weights,
    resolve_resume,
    restore_training_state,
    within_plan,
)
from engine.train.config import Config, ConfigError, save_config
from engine.train.config_check import check_model_options, weight_card
from engine.train.config_types import AUTO
from engine.train.elastic import continue_on_this_world, global_batch
from engine.train.history import History, history_columns
from engine.train.loss_factory import build_loss, class_weights_from_pixels, is_multitask_spec
from engine.train.losses import CombinedLoss, MultitaskLoss
from engine.train.optim import build_optimizer, build_scheduler
from engine.train.plan import apply_plan, plan_schedule, recorded_plan
from engine.train.preflight import (
    best_choice_note,
    check_rgb_bands,
    check_shards,
    check_splits,
    data_warnings,
)
from engine.train.tracking import Tracker


@dataclass
class LoopState:
    """What a checkpoint records besides the model, optimiser and RNG states."""

    step: int = 0
    best_miou: float = -1.0
    best_step: int = -1
    bad_steps: int = 0

    def to_dict(self, config: Config, world_size: int) -> dict[str, Any]:
        """The checkpoint's ``trainer_state.json`` content (``world_size``: processes now)."""
        return {
            "step": self.step,
            "epoch": self.step // config.steps_per_epoch,
            "steps_per_epoch": config.steps_per_epoch,
            "total_steps": config.total_steps,
            "best_miou": self.best_miou,
            "best_step": self.best_step,
            "bad_steps": self.bad_steps,
            "seed": config.seed,
            "world_size": world_size,
            "global_batch": global_batch(config, world_size),
        }


@dataclass
class Run:
    """A run being trained: its config, distributed set-up, data, model and logs."""

    config: Config
    run_dir: Path
    accelerator: Accelerator
    manifest: Manifest
    model: torch.nn.Module
    model_spec: dict[str, Any]
    loss_fn: CombinedLoss | MultitaskLoss
    loss_terms: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    multitask: bool
    channels_last: bool
    state: LoopState
    resumed: bool
    history: History
    tracker: Tracker
    best_choice: str | None = None  # what the best checkpoint's choice rests on, when weak
    weights_report: str | None = None  # the weight card's bands matched, new and dropped

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files and prints."""
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        """The device of this rank."""
        return self.accelerator.device

    @property
    def fp16(self) -> bool:
        """Whether a grad scaler runs (it skips non-finite steps by itself)."""
        return self.accelerator.mixed_precision == "fp16"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The evaluation autocast type for the run's precision."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.accelerator.mixed_precision)


def resolve_precision(requested: str) -> str:
    """``auto`` → ``bf16`` on GPUs that support it, else ``no``."""
    if requested != "auto":
        return requested
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def build_accelerator(config: Config) -> Accelerator:
    """An Accelerator with the config's precision, accumulation and collective timeout."""
    return Accelerator(
        mixed_precision=resolve_precision(config.train.mixed_precision),
        gradient_accumulation_steps=config.train.grad_accum,
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=config.train.dist_timeout_s))
        ],
        cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true"),
    )


def build_model(
    config: Config, manifest: Manifest, *, initial_weights: bool = True
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network and its export spec.

    The spec is ``{"arch", "num_classes", "in_channels", "options", "bands", "rgb_bands"}``:
    one input channel per band of the manifest, and the bands' records (names, order,
    dtype, statistics, nodata) so that prediction reads and normalises exactly those bands.
    With a weight card (``model.weights: {card, path}``) the options record
    ``input_card`` (the input stage's buffers; their values travel with the weights) and
    the card's file is loaded (:func:`build_model_reported`).
    """
    model, spec, _ = build_model_reported(config, manifest, initial_weights=initial_weights)
    return model, spec


def build_model_reported(
    config: Config, manifest: Manifest, *, initial_weights: bool = True
) -> tuple[torch.nn.Module, dict[str, Any], str | None]:
    """:func:`build_model` and the weight card's one-line report (None without a card).

    Args:
        config: The run's config.
        manifest: The shards' manifest (bands and statistics).
        initial_weights: Load the card's file (False when a checkpoint's weights replace
            them anyway).

    Raises:
        ConfigError: the card's file does not fit the card, or the bands match none of its.
    """
    options = dict(config.model.options)
    weights: dict[str, bool | str] = {}
    card = weight_card(config)
    if card is not None:
        options["input_card"] = card[0]
    elif config.model.weights:
        weights["weights"] = str(config.model.weights)
    if config.model.pretrained:
        weights["pretrained"] = True
    normalization = manifest.normalization
    model = archs.create_model(
        config.model.arch, manifest.num_classes, normalization.in_channels, **options, **weights
    )
    report = None
    if card is not None and initial_weights:
        bands = normalization.bands
        try:
            loaded = archs.load_card_weights(
                model, card[0], card[1], band_names=[b.name for b in bands],
                band_means=[b.mean for b in bands], band_stds=[b.std for b in bands],
            )  # fmt: skip
        except archs.PretrainedWeightsError as error:
            raise ConfigError(f"model.weights: {error}") from error
        report = loaded.line()
    spec = {
        "arch": config.model.arch,
        "num_classes": manifest.num_classes,
        "in_channels": normalization.in_channels,
        "options": options,
        **normalization.records(),
    }
    return model, spec, report


def build_training_loss(
    config: Config, manifest: Manifest, multitask: bool
) -> CombinedLoss | MultitaskLoss:
    """The configured loss; multitask models default to the multitask Tanimoto loss."""
    spec = config.loss.spec
    if multitask and spec == "ce":
        spec = "multitask"
    weights = None
    if config.loss.class_weights != "none":
        weights = class_weights_from_pixels(
            manifest.data["class_pixels"][config.data.train_split], config.loss.class_weights
        )
    if multitask != is_multitask_spec(spec):
        kind, fix = ("a multitask", "multitask") if multitask else ("a single-task", "ce")
        raise ConfigError(
            f"loss.spec = {spec!r} does not fit model.arch = {config.model.arch!r} ({kind} "
            f"model): add --set loss.spec={fix}"
        )
    return build_loss(spec, manifest.num_classes, manifest.ignore_index, weights)


def check_and_warn(config: Config, manifest: Manifest, main: bool) -> None:
    """Check the manifest and model options against the config; print the data warnings once."""
    check_splits(config, manifest)
    check_model_options(config)
    if main:
        for warning in data_warnings(config, manifest):
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def resume_and_plan(
    config: Config, manifest: Manifest, run_dir: Path, resume: str | None, accelerator: Accelerator
) -> Checkpoint | None:
    """The checkpoint to resume (verified), with ``auto`` schedule fields planned and said.

    A resumed run keeps the plan its checkpoint records (:func:`engine.train.plan.recorded_plan`);
    otherwise the plan is made from the train tiles and the global batch on this number of
    processes. The planned numbers are written into ``config``; the main process prints
    the plan's line.

    Raises:
        CheckpointError: when the checkpoint does not verify or is past the run's steps.
    """
    planning = AUTO in (config.train.epochs, config.train.steps_per_epoch)
    rank = accelerator.process_index
    checkpoint = resolve_resume(run_dir, resume, rank, None if planning else config.total_steps)
    if not planning:
        return checkpoint
    plan = recorded_plan(config, checkpoint.state) if checkpoint is not None else None
    if plan is None:
        samples = manifest.split(config.data.train_split).num_samples
        plan = plan_schedule(config, samples, global_batch(config, accelerator.num_processes))
    apply_plan(config, plan)
    if checkpoint is not None:
        within_plan(checkpoint, config.total_steps)
    if plan is not None and accelerator.is_main_process:
        print(plan.line, flush=True)
    return checkpoint


def set_up(config: Config, run_dir: str | Path, resume: str | None) -> Run:
    """Build everything a run needs, resuming from a checkpoint when asked.

    Args:
        config: The resolved experiment config.
        run_dir: The run directory (created; the config is saved into it).
        resume: ``"latest"`` or a checkpoint folder to continue from, or None.

    Returns:
        The :class:`Run`, its model and optimiser prepared by accelerate.
    """
    run_dir = Path(run_dir)
    accelerator = build_accelerator(config)
    main = accelerator.is_main_process
    device = accelerator.device
    check_shards(config)
    set_seed(config.seed)
    manifest = load_manifest(config.data.shards)
    check_and_warn(config, manifest, main)
    # Verified before anything is written: a refused resume leaves the run folder as it was.
    checkpoint = resume_and_plan(config, manifest, run_dir, resume, accelerator)
    model, model_spec, weights_report = build_model_reported(
        config, manifest, initial_weights=checkpoint is None
    )
    if weights_report is not None and main:
        print(weights_report, flush=True)
    if checkpoint is not None:
        check_fits(checkpoint, model_spec, config.data.shards)
        load_checkpoint_weights(checkpoint, model)  # before the optimiser takes its parameters
    multitask = archs.is_multitask(model)
    check_rgb_bands(config, manifest, multitask)
    loss_fn = build_training_loss(config, manifest, multitask).to(device)
    if main:  # after the checks: a run refused for bad settings leaves no folder behind
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    channels_last = config.train.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.schedule, config.total_steps)
    if config.train.compile:
        # torch.compile's stub types it as a plain callable; given a module it returns one.
        model = cast(torch.nn.Module, torch.compile(model))
    model, optimizer = accelerator.prepare(model, optimizer)
    state = LoopState()
    if checkpoint is not None:
        restore_training_state(checkpoint, accelerator, optimizer, scheduler)
        saved = checkpoint.state
        state = LoopState(saved["step"], saved["best_miou"], saved["best_step"], saved["bad_steps"])
        if main:
            print(f"resumed from {checkpoint.path} at step {state.step}", flush=True)
        continue_on_this_world(checkpoint, config, accelerator)
    elif resume and main:
        print(f"--resume {resume}: no checkpoint in {run_dir}, starting fresh", flush=True)
    # The loss fits the model (build_training_loss checks it): multitask heads, or named terms.
    loss_terms = list(loss_fn.losses) if isinstance(loss_fn, CombinedLoss) else list(loss_fn.heads)
    history = History(
        run_dir / "history.csv",
        history_columns(loss_terms, manifest.class_names),
        resume_step=state.step if checkpoint is not None else None,
        enabled=main,
    )
    tracker = Tracker(config.log, run_dir, config.name, config.to_dict(), enabled=main)
    return Run(
        config, run_dir, accelerator, manifest, model, model_spec, loss_fn, loss_terms,
        optimizer, scheduler, multitask, bool(channels_last), state, checkpoint is not None,
        history, tracker, best_choice_note(config, manifest), weights_report,
    )  # fmt: skip


def stream_from_here(run: Run, steps: int) -> tuple[Any, TrainAugment]:
    """Batches and augmentation of this rank for the next ``steps`` optimiser steps.

    Data and augmentation are seeded by ``(seed, rank, first step they serve)`` (the loader
    adds the worker), not by the world size: a run resumed at an epoch boundary sees exactly
    what the uninterrupted run saw, one resumed mid-epoch or on another number of processes
    a fresh stream, reproducible given the number of processes (:mod:`engine.train.elastic`).
    """
    config, manifest, rank = run.config, run.manifest, run.accelerator.process_index
    augment = TrainAugment(
        config.data.crop_size,
        manifest.normalization,
        hflip=config.data.hflip,
        vflip=config.data.vflip,
        rot90=config.data.rot90,
        jitter=_jitter(config.data.jitter),
        ignore_index=manifest.ignore_index,
        seed=random.Random(f"{config.seed}/{rank}/{run.state.step}").getrandbits(62),
    ).to(run.device)
    batches = train_batches(
        manifest,
        config.data.batch_size,
        steps * config.train.grad_accum,
        seed=config.seed,
        rank=rank,
        epoch=run.state.step,
        num_workers=config.data.num_workers,
        shuffle_buffer=config.data.shuffle_buffer,
        split=config.data.train_split,
    )
    return batches, augment


def _jitter(strength: float) -> dict[str, float] | None:
    if strength <= 0:
        return None
    return {
        "brightness": strength,
        "contrast": strength,
        "saturation": strength,
        "hue": strength / 10,
    }
