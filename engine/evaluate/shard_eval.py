"""Whole-tile evaluation of a model on a shard split.

The one evaluation path used by training, ``launch/evaluate.py`` and the tests, so that
their numbers agree.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archs import segmentation_logits, unwrap_model
from engine.data.shards.loader import eval_batches
from engine.data.shards.manifest import Manifest
from engine.data.shards.normalize import normalize
from engine.errors import UserError
from engine.evaluate.metrics import ConfusionMatrix, SegmentationMetrics
from engine.render.colors import display_rgb


class ClassCountError(UserError):
    """A model's class count differs from the data's; the message names both."""


def check_class_count(model_classes: int, manifest: Manifest, model: str = "the model") -> None:
    """Refuse a model whose number of classes differs from the shards' manifest.

    Args:
        model_classes: Classes the model predicts (``model.json``'s ``num_classes`` or the
            logits' channel count).
        manifest: The shard manifest.
        model: How to name the model in the message (e.g. its path).

    Raises:
        ClassCountError: naming the model, the manifest and both counts.
    """
    if int(model_classes) != manifest.num_classes:
        raise ClassCountError(
            f"{model} predicts {model_classes} classes but {manifest.root / 'dataset.json'} "
            f"lists {manifest.num_classes}; evaluate it on the shards it was trained on"
        )


class BandCountError(UserError):
    """A model's input channels differ from the data's bands; the message names both."""


def check_band_count(model_channels: int, manifest: Manifest, model: str = "the model") -> None:
    """Refuse a model whose input channels are not the shards' bands.

    Raises:
        BandCountError: naming the model, the manifest and both band counts.
    """
    normalization = manifest.normalization
    if int(model_channels) != normalization.in_channels:
        raise BandCountError(
            f"{model} takes {model_channels} input bands but {manifest.root / 'dataset.json'} "
            f"has {normalization.in_channels} ({', '.join(normalization.names)}); evaluate it "
            "on shards of the bands it was trained on"
        )


@dataclass
class Example:
    """One evaluated tile, kept for panels.

    Attributes:
        key: The sample's key.
        image: uint8 ``HxWx3`` picture of the image (its ``rgb_bands``, see
            :func:`engine.render.colors.display_rgb`).
        truth: uint8 ``HxW`` class indices (255 = ignore).
        prediction: uint8 ``HxW`` predicted classes.
    """

    key: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


@dataclass
class EvalResult:
    """Confusion matrix summed over ranks, its metrics, and a few examples (this rank)."""

    confusion: torch.Tensor
    metrics: SegmentationMetrics
    examples: list[Example] = field(default_factory=list)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout models are fed: channels-last, or NCHW-contiguous.

    Explicit both ways, because loader batches arrive channels-last and a CPU model fed
    them would silently switch its convolutions to that layout.
    """
    return torch.channels_last if channels_last else torch.contiguous_format


def context_window(model: nn.Module, train_crop: int | None) -> int | None:
    """The input size ``model`` must be evaluated at (None: any size).

    ``train_crop`` for a network whose output depends on its whole input's extent
    (``input_extent_matters``: ResUNet-a); None for the others or when the crop is unknown.
    A ResUNet-a d6 trained on 128² crops scored 0.449 val mIoU on 128² windows but 0.310 on
    whole 2,000-pixel images (docs/BENCHMARKS.md, Learning parity).
    """
    if train_crop and getattr(unwrap_model(model), "input_extent_matters", False):
        return int(train_crop)
    return None


def _window_starts(length: int, window: int) -> list[int]:
    """Starts of ``window``-long windows that cover ``length``, the last ending at its end."""
    starts = list(range(0, max(length - window, 0) + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def forward_logits(
    model: nn.Module, images: torch.Tensor, channels_last: bool, window: int | None = None
) -> torch.Tensor:
    """Segmentation logits for normalised images of any size (padded to a multiple of 32).

    With ``window`` (:func:`context_window`), an image larger than it is run as windows of
    ``window``² (the last of each row and column ending at the image's edge, overlapping
    its neighbour) whose logits are stitched: the network sees inputs of the size it was
    trained on.
    """
    height, width = images.shape[-2:]
    if not window or (height <= window and width <= window):
        return _padded_logits(model, images, channels_last)
    logits = None
    for top in _window_starts(height, window):
        for left in _window_starts(width, window):
            part = _padded_logits(
                model, images[..., top : top + window, left : left + window], channels_last
            )
            if logits is None:
                logits = part.new_empty((*part.shape[:2], height, width))
            logits[..., top : top + part.shape[-2], left : left + part.shape[-1]] = part
    assert logits is not None, "_window_starts gives every axis at least one window"
    return logits


def _padded_logits(model: nn.Module, images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % 32, -width % 32
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="reflect")
    images = images.contiguous(memory_format=memory_format(channels_last))
    return segmentation_logits(model(images))[..., :height, :width]


@dataclass(frozen=True)
class EvalSettings:
    """How a split is read and run: batches, loader workers, ranks, device and precision.

    Attributes:
        batch_size: Tiles per batch per rank.
        device: Where to run; None: where the model's parameters are (the CPU without any).
        num_workers: Loader workers per rank.
        rank: This process's rank.
        world_size: Number of processes.
        autocast_dtype: ``torch.bfloat16``/``torch.float16`` for mixed precision, or None.
        channels_last: Feed channels-last tensors.
    """

    batch_size: int = 4
    device: torch.device | None = None
    num_workers: int = 2
    rank: int = 0
    world_size: int = 1
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    def device_for(self, model: nn.Module) -> torch.device:
        """:attr:`device`, else the device of the model's first parameter, else the CPU."""
        if self.device is not None:
            return self.device
        parameter = next(iter(model.parameters()), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Mixed precision on ``device`` when :attr:`autocast_dtype` asks for it."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)


def _examples(batch, prediction: torch.Tensor, normalization, wanted: int) -> list[Example]:
    """The first ``wanted`` tiles of a batch (at most all of them) as panel examples."""
    wanted = min(wanted, len(batch.keys))
    if wanted <= 0:
        return []
    pictures = [display_rgb(image, normalization) for image in batch.images[:wanted]]
    return [
        Example(
            batch.keys[index],
            pictures[index],
            batch.masks[index].numpy(),
            prediction[index].to(torch.uint8).cpu().numpy(),
        )
        for index in range(wanted)
    ]


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    manifest: Manifest,
    split: str,
    settings: EvalSettings | None = None,
    *,
    examples: int = 0,
    train_crop: int | None = None,
) -> EvalResult:
    """Evaluate ``model`` on every sample of ``split`` exactly once across all ranks.

    Every rank must call this (it ends with a collective sum when ``world_size > 1``).
    The model is put in eval mode; the caller restores train mode.

    Args:
        model: Returns logits (a tensor or a multitask output).
        manifest: The shard manifest (normalisation, classes, splits).
        split: Split name.
        settings: Batches, workers, ranks, device and precision (default
            :class:`EvalSettings`: one process, on the model's device, full precision).
        examples: How many tiles to keep for panels (from this rank's first batches).
        train_crop: The crop the model was trained on: a network whose output depends on
            its input's extent sees windows of it (:func:`context_window`).

    Raises:
        ClassCountError: when the model's logits have another number of classes than the
            manifest lists.
        BandCountError: when the model takes another number of bands than the manifest has.
    """
    settings = settings or EvalSettings()
    device = settings.device_for(model)
    channels = getattr(unwrap_model(model), "in_channels", None)
    if isinstance(channels, int):
        check_band_count(channels, manifest)
    window = context_window(model, train_crop)
    model.eval()
    confusion = ConfusionMatrix(
        manifest.num_classes, manifest.ignore_index, manifest.class_names, device
    )
    kept: list[Example] = []
    normalization = manifest.normalization
    autocast = settings.autocast(device)
    for batch in eval_batches(
        manifest, split, settings.batch_size, rank=settings.rank,
        world_size=settings.world_size, num_workers=settings.num_workers,
    ):  # fmt: skip
        images = batch.images.to(device, non_blocking=True)
        masks = batch.masks.to(device, non_blocking=True)
        with autocast:
            logits = forward_logits(
                model, normalize(images, normalization), settings.channels_last, window
            )
        if logits.shape[1] != manifest.num_classes:
            check_class_count(logits.shape[1], manifest)
        prediction = logits.argmax(1)
        confusion.update(prediction, masks)
        kept += _examples(batch, prediction, normalization, examples - len(kept))
    if settings.world_size > 1:
        confusion.all_reduce()
    return EvalResult(confusion.matrix, confusion.compute(), kept)
