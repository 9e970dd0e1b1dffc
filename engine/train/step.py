"""One optimiser step: micro-batches through augmentation, forward/backward, a guarded step.

The step never reads a device value on the host: losses accumulate on the device
(:class:`LogWindow`), and non-finite gradients are skipped on the device where the optimiser
is fused (:class:`NonFiniteSkip`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator

from engine.data.shards.loader import Batch
from engine.evaluate.shard_eval import memory_format
from engine.train.augment import TrainAugment
from engine.train.losses import CombinedLoss, MultitaskLoss
from engine.train.targets import make_targets


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
        # Any: ``found_inf`` is an attribute fused optimisers read (GradScaler sets it too),
        # not declared by torch's Optimizer.
        self.inner: Any = inner if inner.defaults.get("fused") else None
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


class LogWindow:
    """Loss sums (on the device), step count and timings since the last history row."""

    def __init__(self, loss_terms: list[str], device: torch.device) -> None:
        self.running = {"loss": torch.zeros((), device=device)} | {
            t: torch.zeros((), device=device) for t in loss_terms
        }
        self.grad_norm = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        for value in self.running.values():
            value.zero_()
        self.start, self.steps, self.data_wait = time.perf_counter(), 0, 0.0


def _to_float(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    return type(outputs)(*(t.float() for t in outputs))


def forward_backward(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loss_fn: CombinedLoss | MultitaskLoss,
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


def optimizer_step(
    run: Any,
    batches: Iterator[Batch],
    augment: TrainAugment,
    window: LogWindow,
    skip: NonFiniteSkip,
) -> None:
    """``train.grad_accum`` micro-batches, clipping, the guarded step, the schedule.

    Args:
        run: The :class:`engine.train.setup.Run` being trained (its step count advances).
        batches: This rank's uint8 batch stream.
        augment: The device augmentation for this stretch of steps.
        window: Accumulates the losses and the data wait for the next history row.
        skip: Skips the step on the device when the gradient norm is not finite.
    """
    config, device, manifest = run.config, run.device, run.manifest
    accum = config.train.grad_accum
    for _ in range(accum):
        waited = time.perf_counter()
        batch = next(batches)
        images = batch.images.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True)
        window.data_wait += time.perf_counter() - waited
        inputs, targets, raw = augment(images, masks, return_raw=True)
        if run.multitask:
            rgb_bands = augment.normalization.rgb_bands
            targets = make_targets(
                raw, targets, manifest.num_classes, manifest.ignore_index, rgb_bands
            )
        inputs = inputs.contiguous(memory_format=memory_format(run.channels_last))
        loss, terms = forward_backward(run.accelerator, run.model, run.loss_fn, inputs, targets)
        window.running["loss"] += loss / accum
        for name, value in terms.items():
            window.running[name] += value / accum
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
    window.grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), clip)
    # Gradients are all-reduced, so every rank sees the same norm and skips alike.
    skip.step(~torch.isfinite(window.grad_norm))
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.state.step += 1
    window.steps += 1
