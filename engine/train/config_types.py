"""The experiment config's sections as dataclasses: every field, its default and meaning.

What a config *is*; :mod:`engine.train.config_check` checks its values and
:mod:`engine.train.config` loads it from YAML and ``--set`` overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    """Where the shards are and how batches are made.

    Attributes:
        shards: Shard folder (with ``dataset.json``); required: set it in the config or
            with ``--set data.shards=DIR``.
        batch_size: Samples per device per micro-batch (1 to 4096).
        eval_batch_size: Samples per device per evaluation batch (whole tiles; 1 to 4096).
        num_workers: Loader processes per rank (0 to 128).
        shuffle_buffer: Samples each training worker shuffles from (1 to 16384).
        crop_size: Edge of the random training crop (always applied): a multiple of 32, at
            most 8192 and at most the shards' tile size (checked when training starts).
        hflip: Random horizontal flips.
        vflip: Random vertical flips.
        rot90: Random rotations by multiples of 90°.
        jitter: Photometric jitter strength (0 = off): brightness/contrast/saturation
            change by up to this fraction, hue by a tenth of it. Brightness and contrast act
            on every band; saturation and hue on the manifest's ``rgb_bands`` only.
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
        weights: Initial encoder weights from a local file. A path: a state dict of the
            same timm model (``.pth``/``.safetensors``), loaded as timm loads it. A mapping
            ``{card: NAME, path: FILE}``: a pretrained file described by a weight card
            (``archs.list_cards()``, docs/archs.md "Weight cards"): the file is checked
            against the card, the dataset's bands are matched to the card's by name, and
            the model gets an input stage applying the card's scaling (the architecture
            must take ``input_card``: ``unet_resnet18``/``34``/``50``, ``resunet34``).
            Set the file with ``--set model.weights.path=FILE``.
    """

    arch: str = "unet"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    weights: str | dict[str, Any] | None = None


@dataclass
class LossConfig:
    """The training loss (see ``engine.train.loss_factory.build_loss``).

    Attributes:
        spec: ``"ce"``, ``"ce+dice"``, ``"tanimoto"``, ``"multitask"``, or a mapping/list
            accepted by ``build_loss``.
        class_weights: Per-class weights of the cross-entropy term (the ``ce`` of ``ce`` and
            ``ce+dice``; dice, Tanimoto and multitask losses ignore them), computed from
            the train split's class pixel counts in ``dataset.json``
            (:func:`engine.train.loss_factory.class_weights_from_pixels`). With ``f_c`` a
            class's share of the train pixels: ``none`` (default) weighs every pixel
            alike; ``inverse_sqrt`` gives ``1/sqrt(f_c)`` and ``inverse`` ``1/f_c``, both
            rescaled to mean 1 over the classes present; ``median_freq`` gives
            ``median(f)/f_c``. A class with no train pixels gets 0. Use them when small
            classes matter and the model ignores them (their IoU stays near 0 while the
            background's is high): ``inverse_sqrt`` is the mild choice, ``inverse`` and
            ``median_freq`` push harder and may over-predict rare classes (a class at
            0.1 % of the pixels weighs 10× as much as one at 10 % with ``inverse_sqrt``,
            100× with ``inverse``). ``ce+dice`` already favours small classes somewhat.
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


AUTO = "auto"  # train.epochs / train.steps_per_epoch: planned from the data when training starts


@dataclass
class TrainConfig:
    """The loop.

    Attributes:
        epochs: Number of epochs (``epochs × steps_per_epoch`` at most 10¹²), or ``auto``
            (the default): planned when training starts (:mod:`engine.train.plan`):
            30 epochs, raised to reach 300 steps and lowered to stay within 50,000 (never
            under one epoch).
        steps_per_epoch: Optimiser steps per epoch, the same on every rank, or ``auto``
            (the default): one pass over the train tiles, ``ceil(train samples / global
            batch)`` with the global batch ``data.batch_size × processes ×
            train.grad_accum``. Numbers set in the config are kept exactly; the planned
            ones are printed at the start in one line and saved in ``RUN/config.yaml``
            and each checkpoint (a resumed run keeps its plan).
        grad_accum: Micro-batches per optimiser step (1 to 1024).
        mixed_precision: ``no``, ``bf16``, ``fp16`` or ``auto`` (bf16 where the GPU has
            it, else no).
        channels_last: Use the channels-last memory format (``null`` = on CUDA).
        compile: ``torch.compile`` the model.
        eval_every: Evaluate the val split every N steps (0 = at the end of each epoch).
        log_every: Write a history row every N steps.
        checkpoint_every: Save a resumable checkpoint every N steps (0 = end of epoch).
        keep_checkpoints: How many recent checkpoints to keep (1 to 1000).
        max_bad_steps: Stop after this many consecutive non-finite steps.
        dist_timeout_s: Collective-operation timeout: a dead rank fails the job after it
            (1 s to one week, 604800).
        stop_after_steps: End this invocation after N steps with a checkpoint and exit code
            75, as after a preemption (0 = off); for allocations shorter than the run.
        panels: Prediction panels sent to wandb at each evaluation (0 to 64).
    """

    epochs: int | str = AUTO
    steps_per_epoch: int | str = AUTO
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


def _planned(value: int | str, key: str) -> int:
    if isinstance(value, str):
        raise ValueError(f"{key} is {value!r}: the schedule is planned when training starts")
    return value


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
    """A whole experiment.

    Attributes:
        name: The run's name (wandb).
        seed: Seeds Python, NumPy and torch, the data order and the augmentation
            (0 to 2³² − 1).

    The upper bounds on the settings that size memory, processes and disk are checked when
    the config is loaded, before anything is allocated (``config_check.AT_MOST``).
    """

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
        """Optimiser steps of the whole run (once planned: see :attr:`steps_per_epoch`)."""
        return self.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        """``train.epochs`` as a number (set, or planned when training starts)."""
        return _planned(self.train.epochs, "train.epochs")

    @property
    def steps_per_epoch(self) -> int:
        """``train.steps_per_epoch`` as a number (set, or planned when training starts).

        Raises:
            ValueError: while it is still ``auto``: the schedule is planned from the data
                when training starts (:func:`engine.train.plan.apply_plan`).
        """
        return _planned(self.train.steps_per_epoch, "train.steps_per_epoch")

    def to_dict(self) -> dict:
        """A plain nested dict (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)
