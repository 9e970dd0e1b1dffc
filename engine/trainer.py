"""The training loop: one code path for CPU, one GPU, many GPUs and many nodes.

Read top to bottom: :func:`train` sets everything up, then runs optimiser steps. Each step
draws ``grad_accum`` uint8 micro-batches from this rank's shard stream, augments them on
the device, runs forward/backward under ``accelerator.accumulate`` and steps the optimiser.
Every ``log_every`` steps a history row is written; every ``eval_every`` steps the val
split is evaluated and the best model exported; checkpoints are written for resuming.
A SIGTERM/SIGUSR1 on any rank, or a file ``RUN/STOP``, makes all ranks checkpoint together
and exit with :data:`EXIT_PREEMPTED`, so a cluster job can be requeued and resumed with
``--resume latest``.

The host reads device values only at sync points (log, eval and checkpoint steps): steps
in between queue work without waiting, so the device never idles on the host. Non-finite
gradients are skipped on the device where the optimiser is fused (:class:`NonFiniteSkip`),
and stop signals are acted on at the next sync point.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed
from safetensors.torch import load_file
from tqdm import tqdm

import archs
from engine.augment import TrainAugment
from engine.checkpoint import read_state, resolve_resume, save_checkpoint
from engine.config import Config, save_config
from engine.evaluation import EvalResult, evaluate_split, memory_format
from engine.export import save_exported
from engine.history import History, history_columns
from engine.loader import Batch, train_batches
from engine.losses import MultitaskLoss, build_loss, class_weights_from_pixels
from engine.manifest import Manifest, load_manifest
from engine.metrics import summary_line
from engine.optim import build_optimizer, build_scheduler
from engine.targets import make_targets
from engine.tracking import Tracker

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, run again with --resume latest
STOP_FILE = "STOP"  # touch RUN/STOP to make a running job checkpoint and exit (any launcher)
log = logging.getLogger("terraseg.train")


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class LoopState:
    """What a checkpoint records besides the accelerate states."""

    step: int = 0
    best_miou: float = -1.0
    best_step: int = -1
    bad_steps: int = 0

    def to_dict(self, config: Config) -> dict[str, Any]:
        """The checkpoint's ``trainer_state.json`` content."""
        return {
            "step": self.step,
            "epoch": self.step // config.train.steps_per_epoch,
            "best_miou": self.best_miou,
            "best_step": self.best_step,
            "bad_steps": self.bad_steps,
            "seed": config.seed,
        }


class NonFiniteSkip:
    """Skips optimiser steps whose gradient norm is not finite, without a host sync if it can.

    Fused optimisers (the default on CUDA and CPU) take ``found_inf`` on the device, as
    under a grad scaler, and leave parameters and state untouched when it is 1, so the step
    needs no host read. Others (``optim.fused: false``) need the host to branch, which
    waits for the device. Under fp16 the grad scaler skips (and lowers its scale) by
    itself. Counters stay on the device until :meth:`read`.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, fp16: bool, bad_steps: int, device: torch.device
    ) -> None:
        self.fp16 = fp16
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        self.inner = inner if inner.defaults.get("fused") else None
        self.optimizer = optimizer
        self.run = torch.tensor(bad_steps, device=device)  # consecutive non-finite steps
        self.worst = self.run.clone()  # longest run since the last read
        self.skipped = torch.zeros((), dtype=torch.long, device=device)

    def step(self, nonfinite: torch.Tensor) -> None:
        """Step the optimiser unless ``nonfinite`` (a bool tensor) is set."""
        if self.fp16:
            self.optimizer.step()
            return
        if self.inner is not None:
            self.inner.found_inf = nonfinite.float()
            self.optimizer.step()
        elif not bool(nonfinite):
            self.optimizer.step()
        bad = nonfinite.long()
        self.run = (self.run + 1) * bad
        self.worst = torch.maximum(self.worst, self.run)
        self.skipped = self.skipped + bad

    def read(self) -> tuple[int, int, int]:
        """``(current run, skipped, longest run)`` since the last read (one host sync)."""
        run, skipped, worst = torch.stack([self.run, self.skipped, self.worst]).tolist()
        self.skipped.zero_()
        self.worst = self.run.clone()
        return run, skipped, worst


class PreemptionFlag:
    """Remembers that SIGTERM or SIGUSR1 arrived; the loop acts on it at its next sync point."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


def build_model(config: Config, manifest: Manifest) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network and its export spec (``arch``, ``num_classes``, ``in_channels``, ``options``)."""
    options = dict(config.model.options)
    weights = {}
    if config.model.pretrained:
        weights["pretrained"] = True
    if config.model.weights:
        weights["weights"] = config.model.weights
    model = archs.create_model(config.model.arch, manifest.num_classes, 3, **options, **weights)
    spec = {
        "arch": config.model.arch,
        "num_classes": manifest.num_classes,
        "in_channels": 3,
        "options": options,
    }
    return model, spec


def build_training_loss(config: Config, manifest: Manifest, multitask: bool) -> torch.nn.Module:
    """The configured loss; multitask models default to the multitask Tanimoto loss."""
    spec = config.loss.spec
    if multitask and spec == "ce":
        spec = "multitask"
    weights = None
    if config.loss.class_weights != "none":
        weights = class_weights_from_pixels(
            manifest.data["class_pixels"][config.data.train_split], config.loss.class_weights
        )
    loss = build_loss(spec, manifest.num_classes, manifest.ignore_index, weights)
    if multitask != isinstance(loss, MultitaskLoss):
        raise ValueError(
            f"loss {spec!r} does not fit model {config.model.arch!r}: multitask models need "
            "loss.spec=multitask and single-task models a single-task loss"
        )
    return loss


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _to_float(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(*(t.float() for t in outputs))


def forward_backward(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    inputs: torch.Tensor,
    targets: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-batch: forward, loss (in float32), backward under ``accelerator.accumulate``.

    Returns:
        The detached loss and its detached terms (for logging, without a host sync).
    """
    with accelerator.accumulate(model):
        terms = loss_fn.terms(_to_float(model(inputs)), targets)
        loss = loss_fn.combine(terms)
        accelerator.backward(loss)
    return loss.detach(), {name: value.detach() for name, value in terms.items()}


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
    run_dir = Path(run_dir)
    accelerator = build_accelerator(config)
    main = accelerator.is_main_process
    device = accelerator.device
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    set_seed(config.seed)
    manifest = load_manifest(config.data.shards)
    model, model_spec = build_model(config, manifest)
    multitask = archs.is_multitask(model)
    loss_fn = build_training_loss(config, manifest, multitask).to(device)
    channels_last = (
        config.train.channels_last
        if config.train.channels_last is not None
        else device.type == "cuda"
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.optim, device)
    scheduler = build_scheduler(optimizer, config.schedule, config.total_steps)
    if config.train.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    state = LoopState()
    checkpoint = resolve_resume(run_dir, resume) if resume else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        saved = read_state(checkpoint)
        state = LoopState(saved["step"], saved["best_miou"], saved["best_step"], saved["bad_steps"])
        if main:
            print(f"resumed from {checkpoint} at step {state.step}", flush=True)
    elif resume and main:
        print(f"--resume {resume}: no checkpoint in {run_dir}, starting fresh", flush=True)
    loss_terms = list(MultitaskLoss.heads) if multitask else list(loss_fn.losses)
    history = History(
        run_dir / "history.csv",
        history_columns(loss_terms, manifest.class_names),
        resume_step=state.step if checkpoint is not None else None,
        enabled=main,
    )
    tracker = Tracker(config.log, run_dir, config.name, config.to_dict(), enabled=main)
    preemption = PreemptionFlag()
    stop_file = run_dir / STOP_FILE
    if main:
        stop_file.unlink(missing_ok=True)  # a requeued job must not stop at once
        print(
            f"terraseg: {accelerator.num_processes} processes, device {device.type}, "
            f"precision {accelerator.mixed_precision}, step {state.step}/{config.total_steps}",
            flush=True,
        )
    accelerator.wait_for_everyone()
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
        accelerator.mixed_precision
    )
    steps_per_epoch, total = config.train.steps_per_epoch, config.total_steps
    fp16 = accelerator.mixed_precision == "fp16"

    def evaluate(split: str, network: torch.nn.Module = model) -> EvalResult:
        result = evaluate_split(
            network,
            manifest,
            split,
            batch_size=config.data.eval_batch_size,
            device=device,
            num_workers=config.data.num_workers,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            autocast_dtype=autocast_dtype,
            channels_last=channels_last,
            examples=config.train.panels if tracker.active else 0,
        )
        model.train()
        return result

    def record_eval(split: str, result: EvalResult) -> None:
        m = result.metrics
        row = {
            "step": state.step,
            "epoch": state.step / steps_per_epoch,
            "split": split,
            "miou": m.miou,
            "mean_f1": m.mean_f1,
            "overall_accuracy": m.overall_accuracy,
            "kappa": m.kappa,
        }
        row |= {f"iou/{c}": v for c, v in zip(m.class_names, m.iou)}
        row |= {f"f1/{c}": v for c, v in zip(m.class_names, m.f1)}
        history.write(row)
        tracker.log(
            {f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split")}, state.step
        )
        tracker.log_table(
            f"{split}/per_class",
            ["class", "iou", "f1", "precision", "recall", "support"],
            [
                [r["name"], r["iou"], r["f1"], r["precision"], r["recall"], r["support"]]
                for r in m.per_class
            ],
            state.step,
        )
        if tracker.active and result.examples:
            from engine.render import panel

            images = [
                panel(
                    e.image,
                    e.truth,
                    e.prediction,
                    manifest.class_names,
                    manifest.palette,
                    ignore_index=manifest.ignore_index,
                    title=e.key,
                )
                for e in result.examples
            ]
            tracker.log_images(
                f"{split}/panels", images, [e.key for e in result.examples], state.step
            )
        if main:
            print(f"step {state.step} {split}: {summary_line(m.to_dict())}", flush=True)

    def checkpoint_now() -> None:
        save_checkpoint(accelerator, run_dir, state.to_dict(config), config.train.keep_checkpoints)

    def export_best() -> None:
        if main:
            save_exported(
                run_dir / "best",
                accelerator.unwrap_model(model),
                model_spec,
                config.to_dict(),
                manifest.data,
            )
        accelerator.wait_for_everyone()

    model.train()
    progress = tqdm(
        total=total, initial=state.step, desc="train", disable=not main, dynamic_ncols=True
    )
    running = {"loss": torch.zeros((), device=device)} | {
        t: torch.zeros((), device=device) for t in loss_terms
    }
    window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0
    grad_norm = torch.zeros((), device=device)
    skip = NonFiniteSkip(optimizer, fp16, state.bad_steps, device)
    steps_this_run = 0
    while state.step < total:
        in_epoch = steps_per_epoch - state.step % steps_per_epoch
        # Data and augmentation are seeded by the first step they serve: a run resumed at an
        # epoch boundary sees exactly what the uninterrupted run saw, one resumed mid-epoch
        # a fresh but reproducible stream.
        augment = TrainAugment(
            config.data.crop_size,
            manifest.mean,
            manifest.std,
            config.data.hflip,
            config.data.vflip,
            config.data.rot90,
            _jitter(config.data.jitter),
            manifest.ignore_index,
            seed=random.Random(
                f"{config.seed}/{accelerator.process_index}/{state.step}"
            ).getrandbits(62),
        ).to(device)
        batches = train_batches(
            manifest,
            config.data.batch_size,
            in_epoch * config.train.grad_accum,
            seed=config.seed,
            rank=accelerator.process_index,
            epoch=state.step,
            num_workers=config.data.num_workers,
            shuffle_buffer=config.data.shuffle_buffer,
            split=config.data.train_split,
        )
        for _ in range(in_epoch):
            for _ in range(config.train.grad_accum):
                waited = time.perf_counter()
                batch: Batch = next(batches)
                images = batch.images.to(device, non_blocking=True)
                masks = batch.masks.to(device, non_blocking=True)
                data_wait += time.perf_counter() - waited
                inputs, targets, raw = augment(images, masks, return_raw=True)
                if multitask:
                    targets = make_targets(
                        raw, targets, manifest.num_classes, manifest.ignore_index
                    )
                inputs = inputs.contiguous(memory_format=memory_format(channels_last))
                loss, terms = forward_backward(accelerator, model, loss_fn, inputs, targets)
                running["loss"] += loss / config.train.grad_accum
                for name, value in terms.items():
                    running[name] += value / config.train.grad_accum
            clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
            # Gradients are all-reduced, so every rank sees the same norm and skips alike.
            nonfinite = ~torch.isfinite(grad_norm)
            skip.step(nonfinite)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            window_steps += 1
            progress.update()

            end_of_epoch = state.step % steps_per_epoch == 0
            every = config.train.eval_every
            evaluating = bool(
                manifest.has_split(config.data.val_split)
                and config.data.val_split
                and (
                    (every and state.step % every == 0)
                    or (not every and end_of_epoch)
                    or state.step == total
                )
            )
            every = config.train.checkpoint_every
            saving = bool((every and state.step % every == 0) or (not every and end_of_epoch))
            logging_now = state.step % config.train.log_every == 0 or state.step == total
            # The host reads device state (losses, the non-finite counters, the stop flag)
            # only here, not every step: each read waits for the device to finish its queue.
            sync_point = logging_now or evaluating or saving
            if sync_point and not fp16:
                state.bad_steps, skipped, worst = skip.read()
                if skipped and main:
                    print(
                        f"step {state.step}: {skipped} step(s) with a non-finite gradient "
                        f"skipped since the last report ({worst} in a row at most; "
                        f"limit {config.train.max_bad_steps})",
                        flush=True,
                    )
                if worst >= config.train.max_bad_steps:
                    accelerator.wait_for_everyone()
                    tracker.finish()
                    raise TrainingDiverged(
                        f"{worst} consecutive non-finite steps by step {state.step}; "
                        f"the last good checkpoint in {run_dir / 'checkpoints'} is untouched"
                    )

            if logging_now:
                elapsed = time.perf_counter() - window_start
                values = (
                    accelerator.reduce(torch.stack(list(running.values())), "mean") / window_steps
                )
                row = {name: float(v) for name, v in zip(running, values.tolist())}
                row = {("loss" if n == "loss" else f"loss/{n}"): v for n, v in row.items()}
                images_seen = (
                    window_steps
                    * config.train.grad_accum
                    * config.data.batch_size
                    * accelerator.num_processes
                )
                row |= {
                    "step": state.step,
                    "epoch": state.step / steps_per_epoch,
                    "split": "train",
                    "time_s": elapsed,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "images_per_s": images_seen / elapsed,
                    "data_wait": data_wait / elapsed,
                    "peak_mem_mb": _peak_memory_mb(device),
                }
                history.write(row)
                tracker.log(
                    {f"train/{k}": v for k, v in row.items() if k not in ("step", "split")},
                    state.step,
                )
                progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                for value in running.values():
                    value.zero_()
                window_start, window_steps, data_wait = time.perf_counter(), 0, 0.0

            if evaluating:
                result = evaluate(config.data.val_split)
                record_eval(config.data.val_split, result)
                if result.metrics.miou > state.best_miou:
                    state.best_miou, state.best_step = result.metrics.miou, state.step
                    export_best()
            saved = (saving and not state.bad_steps) or state.step == total
            if saved:  # never while non-finite steps run: the last good checkpoint stays latest
                checkpoint_now()

            steps_this_run += 1
            stop = config.train.stop_after_steps
            stopping = bool(stop and steps_this_run >= stop and state.step < total)  # all ranks
            if preemption.signal is not None or (main and stop_file.exists()):
                accelerator.set_trigger()
            if sync_point:  # any rank's flag stops every rank at the same step
                stopping = accelerator.check_trigger() or stopping
            if stopping:
                if not saved:
                    checkpoint_now()
                progress.close()
                tracker.finish()
                accelerator.wait_for_everyone()
                if main:
                    print(
                        f"stopped at step {state.step} (signal or train.stop_after_steps): "
                        "checkpoint saved; continue with --resume latest",
                        flush=True,
                    )
                accelerator.end_training()
                sys.exit(EXIT_PREEMPTED)
    progress.close()
    preemption.restore()

    if state.best_step < 0:  # no val split: the final weights are the best we have
        export_best()
    best, _ = build_model(config, manifest)
    best.load_state_dict(load_file(str(run_dir / "best" / "model.safetensors")))
    best = best.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    final = _final_metrics(
        config, manifest, accelerator, run_dir, partial(evaluate, network=best), record_eval, state
    )
    tracker.finish()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(final, accelerator.unwrap_model(model))


def _final_metrics(config, manifest, accelerator, run_dir, evaluate, record_eval, state) -> dict:
    """Evaluate the test split (else val) once with the best model; write metrics.json."""
    split = next(
        (s for s in (config.data.test_split, config.data.val_split) if s and manifest.has_split(s)),
        None,
    )
    final: dict[str, Any] = {"split": split, "best_step": state.best_step, "steps": state.step}
    if split is not None:
        result = evaluate(split)
        record_eval(split, result)
        final |= result.metrics.to_dict()
    if accelerator.is_main_process:
        temporary = run_dir / ".metrics.json.tmp"
        temporary.write_text(json.dumps(final, indent=2) + "\n")
        os.replace(temporary, run_dir / "metrics.json")
        try:
            from engine.render import plot_history

            plot_history(run_dir / "history.csv", run_dir)
        except Exception as error:  # plots are a convenience; never lose a finished run to them
            log.warning("could not plot history: %s", error)
    return final


def _jitter(strength: float) -> dict[str, float] | None:
    if strength <= 0:
        return None
    return {
        "brightness": strength,
        "contrast": strength,
        "saturation": strength,
        "hue": strength / 10,
    }
