"""Experiment configuration: one YAML per experiment, every field overridable by ``--set``.

Loading merges, in order: the dataclass defaults below, the YAML file, then each
``key.path=value`` override (values parsed as YAML, so ``3e-4``, ``true``, ``[1, 2]`` work).
An unknown key anywhere is an error that names it, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import UserError


class ConfigError(UserError):
    """A config file or override is invalid; the message says which key and why."""


@dataclass
class DataConfig:
    """Where the shards are and how batches are made.

    Attributes:
        shards: Shard folder (with ``dataset.json``).
        batch_size: Samples per device per micro-batch.
        eval_batch_size: Samples per device per evaluation batch (whole tiles).
        num_workers: Loader processes per rank.
        shuffle_buffer: Samples each training worker shuffles from.
        crop_size: Edge of the random training crop (always applied).
        hflip: Random horizontal flips.
        vflip: Random vertical flips.
        rot90: Random rotations by multiples of 90°.
        jitter: Photometric jitter strength (0 = off): brightness/contrast/saturation
            change by up to this fraction, hue by a tenth of it.
        train_split: Split to train on.
        val_split: Split evaluated every ``train.eval_every`` steps ("" = none).
        test_split: Split evaluated once at the end with the best weights ("" = none).
    """

    shards: str = ""
    batch_size: int = 4
    eval_batch_size: int = 4
    num_workers: int = 2
    shuffle_buffer: int = 64
    crop_size: int = 512
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    jitter: float = 0.0
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


@dataclass
class ModelConfig:
    """Which network to build (see ``archs.list_models()``).

    Attributes:
        arch: Registered architecture name.
        options: Keyword options of the architecture (e.g. ``base_width``).
        pretrained: Load timm's ImageNet weights for timm encoders (needs the hub).
        weights: Local encoder weights file (``.pth``/``.safetensors``) for offline clusters.
    """

    arch: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights: str | None = None


@dataclass
class LossConfig:
    """The training loss (see ``engine.train.loss_factory.build_loss``).

    Attributes:
        spec: ``"ce"``, ``"ce+dice"``, ``"tanimoto"``, ``"multitask"``, or a mapping/list
            accepted by ``build_loss``.
        class_weights: ``none``, ``inverse``, ``inverse_sqrt`` or ``median_freq``, from
            the manifest's train class pixel counts (cross-entropy only).
    """

    spec: Any = "ce"
    class_weights: str = "none"


@dataclass
class OptimConfig:
    """Optimiser settings.

    Attributes:
        name: ``adamw`` or ``sgd`` (with momentum).
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        betas: AdamW betas.
        grad_clip: Clip the global gradient norm to this (0 = off).
        fused: Use the fused implementation (``null`` = on CUDA and CPU).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    fused: bool | None = None


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over optimiser steps.

    Attributes:
        name: ``poly``, ``cosine``, ``step`` or ``constant``.
        warmup_steps: Linear warm-up from 0 over this many steps.
        power: Exponent of ``poly``.
        step_size: Steps between decays of ``step``.
        gamma: Decay factor of ``step``.
        min_lr_ratio: Floor of ``poly`` and ``cosine`` as a fraction of the peak.
    """

    name: str = "poly"
    warmup_steps: int = 0
    power: float = 0.9
    step_size: int = 1000
    gamma: float = 0.5
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    """The loop.

    Attributes:
        epochs: Number of epochs.
        steps_per_epoch: Optimiser steps per epoch, the same on every rank.
        grad_accum: Micro-batches per optimiser step.
        mixed_precision: ``no``, ``bf16``, ``fp16`` or ``auto`` (bf16 where the GPU has
            it, else no).
        channels_last: Use the channels-last memory format (``null`` = on CUDA).
        compile: ``torch.compile`` the model.
        eval_every: Evaluate the val split every N steps (0 = at the end of each epoch).
        log_every: Write a history row every N steps.
        checkpoint_every: Save a resumable checkpoint every N steps (0 = end of epoch).
        keep_checkpoints: How many recent checkpoints to keep.
        max_bad_steps: Stop after this many consecutive non-finite steps.
        dist_timeout_s: Collective-operation timeout: a dead rank fails the job after it.
        stop_after_steps: End this invocation after N steps with a checkpoint and exit code
            75, as after a preemption (0 = off); for allocations shorter than the run.
        panels: Prediction panels sent to wandb at each evaluation.
    """

    epochs: int = 10
    steps_per_epoch: int = 100
    grad_accum: int = 1
    mixed_precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    max_bad_steps: int = 5
    dist_timeout_s: int = 1800
    stop_after_steps: int = 0
    panels: int = 4


@dataclass
class LogConfig:
    """Experiment tracking.

    Attributes:
        wandb: ``disabled``, ``offline`` or ``online``.
        project: wandb project.
        entity: wandb entity (team or user).
        tags: wandb tags.
    """

    wandb: str = "disabled"
    project: str = "terraseg"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    """A whole experiment."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run."""
        return self.train.epochs * self.train.steps_per_epoch

    def to_dict(self) -> dict:
        """A plain nested dict (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


CHOICES = {
    ("optim", "name"): ("adamw", "sgd"),
    ("schedule", "name"): ("poly", "cosine", "step", "constant"),
    ("train", "mixed_precision"): ("no", "bf16", "fp16", "auto"),
    ("log", "wandb"): ("disabled", "offline", "online"),
    ("loss", "class_weights"): ("none", "inverse", "inverse_sqrt", "median_freq"),
}


def _coerce(value: Any, hint: str, where: str, source: str) -> Any:
    """Convert YAML scalars to the field's type (YAML reads ``3e-4`` as a string)."""
    kinds = {part.strip() for part in hint.split("|")}
    if value is None and "None" in kinds:
        return None
    try:
        if "float" in kinds and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if "int" in kinds and isinstance(value, str):
            return int(value)
    except ValueError as error:
        raise ConfigError(f"{source}: {where} must be {hint}, got {value!r}") from error
    return value


def _merge(target: Any, values: dict, path: tuple[str, ...], source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {'.'.join(path) or 'the config'} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        where = ".".join((*path, key))
        if key not in known:
            raise ConfigError(f"{source}: unknown key {where!r} (known: {sorted(known)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, (*path, key), source)
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(target, key, {**current, **value})  # free-form mappings merge key by key
        else:
            setattr(target, key, _coerce(value, str(known[key].type), where, source))


def _set_path(config: Config, dotted: str, value: Any, source: str) -> None:
    *parents, last = dotted.split(".")
    nested: dict = {last: value}
    for key in reversed(parents):
        nested = {key: nested}
    _merge(config, nested, (), source)


def validate(config: Config) -> None:
    """Check choices and ranges.

    Raises:
        ConfigError: naming the key and the allowed values.
    """
    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key} = {value!r}; choose from {allowed}")
    positive = {
        "data.batch_size": config.data.batch_size,
        "data.eval_batch_size": config.data.eval_batch_size,
        "data.crop_size": config.data.crop_size,
        "train.epochs": config.train.epochs,
        "train.steps_per_epoch": config.train.steps_per_epoch,
        "train.grad_accum": config.train.grad_accum,
        "train.log_every": config.train.log_every,
        "train.keep_checkpoints": config.train.keep_checkpoints,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if config.data.crop_size % 32:
        raise ConfigError(f"data.crop_size must be divisible by 32, got {config.data.crop_size}")
    if not isinstance(config.model.options, dict):
        raise ConfigError("model.options must be a mapping")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config file and apply ``key.path=value`` overrides.

    Args:
        path: YAML file (``None``: defaults only).
        overrides: Strings like ``"optim.lr=3e-4"``.

    Raises:
        ConfigError: naming the file or override and the bad key or value.
    """
    config = Config()
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as error:
            raise ConfigError(f"{path}: config file not found") from error
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        _merge(config, data, (), str(path))
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        key, raw = override.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {override!r}: cannot parse value: {error}") from error
        _set_path(config, key.strip(), value, f"--set {override!r}")
    validate(config)
    return config


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. a saved run)."""
    config = Config()
    _merge(config, data, (), "saved config")
    validate(config)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
