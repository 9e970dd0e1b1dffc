"""Optimisers and learning-rate schedules, built from the config."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.train.config_types import OptimConfig, ScheduleConfig

FUSED_DEVICES = ("cuda", "cpu")


def build_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum; no weight decay on norms and biases.

    The fused implementation (one kernel for all parameters; it also lets the trainer skip
    non-finite steps on the device) is used on CUDA and CPU unless ``config.fused`` says
    otherwise: on a 2-core CPU it made a ResUNet-34 step 1.2x faster than the default
    foreach implementation (docs/BENCHMARKS.md).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = config.fused if config.fused is not None else device.type in FUSED_DEVICES
    if config.name == "adamw":
        beta1, beta2 = config.betas  # two, checked with the config
        return torch.optim.AdamW(groups, lr=config.lr, betas=(beta1, beta2), fused=fused)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, fused=fused)


def lr_factor(step: int, total_steps: int, config: ScheduleConfig) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min((step - config.warmup_steps) / max(total_steps - config.warmup_steps, 1), 1.0)
    floor = config.min_lr_ratio
    if config.name == "poly":
        return floor + (1 - floor) * (1 - progress) ** config.power
    if config.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.name == "step":
        return config.gamma ** ((step - config.warmup_steps) // config.step_size)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimiser-step schedule (call ``step()`` once per optimiser step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, config)
    )
