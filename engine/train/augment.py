"""Device-side training augmentation (evaluation normalisation: :mod:`engine.data.normalize`).

Geometry uses plain torch indexing instead of ``kornia.augmentation.AugmentationSequential``:
a crop, flips and 90-degree rotations are pure pixel permutations, so indexing is exact by
construction (no interpolation, masks stay integer and aligned), per-sample, free of host
syncs, and every random draw comes from one ``torch.Generator`` for reproducibility. The
permutations are composed into one source index, so each tensor takes a single ``gather``
over the crop's pixels only. Photometric jitter uses
``kornia.enhance`` with per-sample factors drawn from the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TrainAugment"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


class TrainAugment(nn.Module):
    """Random crop, flips, 90-degree rotations and optional colour jitter, per sample.

    Every call draws a fresh crop position and transform for each sample. A tile smaller
    than the crop is padded (image 0, mask ``ignore_index``) and lands at a random place
    in the crop. The mask goes through exactly the same pixel permutation as the image.
    Jitter (fixed order: brightness, contrast, saturation, hue) touches the image only,
    before normalisation.

    Args:
        crop_size: Side of the square output crop.
        mean: Per-channel normalisation mean, 0-1 scale (the dataset's train ``mean``).
        std: Per-channel normalisation std, 0-1 scale.
        hflip: Random horizontal flip (p = 0.5).
        vflip: Random vertical flip (p = 0.5).
        rot90: Random rotation by 0, 90, 180 or 270 degrees.
        jitter: Optional ``{"brightness", "contrast", "saturation", "hue", "p"}``. The first
            three take ``s`` (factor uniform in ``[max(0, 1 - s), 1 + s]``) or a ``(lo, hi)``
            pair; ``hue`` takes ``h`` in [0, 0.5] (shift uniform in ``[-h, h]`` turns) or a
            pair; ``p`` is the per-sample probability of jittering (default 1).
        ignore_index: Mask value of ignored pixels (and of padding).
        generator: Generator for all random draws; draws happen on its device and are
            copied to the data's device. Mutually exclusive with ``seed``.
        seed: Seed for a generator created on the data's device on the first call.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        crop_size: int = 512,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hflip: bool = True,
        vflip: bool = True,
        rot90: bool = True,
        jitter: Mapping[str, float | Sequence[float]] | None = None,
        ignore_index: int = 255,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if generator is not None and seed is not None:
            raise ValueError("pass either a generator or a seed, not both")
        self.crop_size = crop_size
        self.hflip = hflip
        self.vflip = vflip
        self.rot90 = rot90
        self.ignore_index = ignore_index
        self.jitter, self.jitter_p = _parse_jitter(jitter)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self._generator = generator
        self._seed = seed

    def _generator_for(self, device: torch.device) -> torch.Generator | None:
        if self._seed is not None and (
            self._generator is None or self._generator.device.type != device.type
        ):
            self._generator = torch.Generator(device=device).manual_seed(self._seed)
        return self._generator

    def _uniform(self, n: int, device: torch.device) -> torch.Tensor:
        generator = self._generator_for(device)
        draw_device = generator.device if generator is not None else device
        return torch.rand(n, generator=generator, device=draw_device).to(device, non_blocking=True)

    @overload
    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, return_raw: Literal[False] = False
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, return_raw: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, return_raw: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """Augment one batch.

        Args:
            images: uint8 ``[B, 3, H, W]``.
            masks: Integer ``[B, H, W]`` (uint8 in the loader contract).
            return_raw: Also return the augmented image in [0, 1] before normalisation
                (after jitter: what the network sees), e.g. for the colour target.

        Returns:
            ``(images, masks)`` or ``(images, masks, raw)``: float32 normalised
            ``[B, 3, c, c]``, int64 ``[B, c, c]`` and float32 ``[B, 3, c, c]``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match {tuple(images.shape)}")
        batch, _, height, width = images.shape
        device = images.device
        c = self.crop_size
        pad_h, pad_w = max(0, c - height), max(0, c - width)
        # Offsets into the (symmetrically) padded tile; with padding this places the tile
        # uniformly inside the crop.
        top = self._offsets(height + 2 * pad_h - c, batch, device)
        left = self._offsets(width + 2 * pad_w - c, batch, device)
        k = (self._uniform(batch, device) * 4).long().clamp(max=3)
        if not self.rot90:
            k = torch.zeros_like(k)
        flip_h = self._uniform(batch, device) < (0.5 if self.hflip else 0.0)
        flip_v = self._uniform(batch, device) < (0.5 if self.vflip else 0.0)
        # rot90(x, k) = transpose if k odd, then flip rows if k in {1, 2}, columns if k in {2, 3}.
        transpose = k % 2 == 1
        flip_rows = flip_v ^ ((k == 1) | (k == 2))
        flip_cols = flip_h ^ ((k == 2) | (k == 3))
        params = (top, left, transpose, flip_rows, flip_cols)

        masks = masks.unsqueeze(1)
        if pad_h or pad_w:
            pads = (pad_w, pad_w, pad_h, pad_h)
            images = F.pad(images, pads, value=0)
            masks = F.pad(masks, pads, value=self.ignore_index)
        index = self._source_index(images.shape[-1], *params)
        image, mask = self._gather(images, index), self._gather(masks, index)

        raw = image.float() / 255.0
        if self.jitter is not None:
            raw = self._jitter(raw)
        mean = self.mean.to(device).view(1, -1, 1, 1)
        normalised = (raw - mean) / self.std.to(device).view(1, -1, 1, 1)
        if return_raw:
            return normalised, mask[:, 0].long(), raw
        return normalised, mask[:, 0].long()

    def _offsets(self, high: int, batch: int, device: torch.device) -> torch.Tensor:
        return (self._uniform(batch, device) * (high + 1)).long().clamp(max=high)

    def _source_index(
        self,
        width: int,
        top: torch.Tensor,
        left: torch.Tensor,
        transpose: torch.Tensor,
        flip_rows: torch.Tensor,
        flip_cols: torch.Tensor,
    ) -> torch.Tensor:
        """Flat source pixel ``row * width + col`` of every output pixel, ``[B, 1, c * c]``.

        The crop at ``(top, left)``, then the transpose, then the row and column flips, as
        one index (the composition of the pixel permutations), so that a single ``gather``
        applies all of them.
        """
        c = self.crop_size
        span = torch.arange(c, device=top.device)
        along_rows = torch.where(flip_rows.view(-1, 1), c - 1 - span, span)  # [B, c] by i
        along_cols = torch.where(flip_cols.view(-1, 1), c - 1 - span, span)  # [B, c] by j
        # out[i, j] = crop[along_rows[i], along_cols[j]], or crop[along_cols[j], along_rows[i]]
        # when transposed.
        swap = transpose.view(-1, 1, 1)
        by_i, by_j = along_rows.view(-1, c, 1), along_cols.view(-1, 1, c)
        rows = top.view(-1, 1, 1) + torch.where(swap, by_j, by_i)
        cols = left.view(-1, 1, 1) + torch.where(swap, by_i, by_j)
        return (rows * width + cols).view(-1, 1, c * c)

    def _gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, C, c, c]``: the pixels at ``index`` (see ``_source_index``).

        Channels-last input (as the loader delivers images) is gathered in that layout,
        without a copy to contiguous, and the crop comes back channels-last.
        """
        batch, channels = x.shape[:2]
        c = self.crop_size
        if channels > 1 and x.is_contiguous(memory_format=torch.channels_last):
            flat = x.permute(0, 2, 3, 1).reshape(batch, -1, channels)  # a view
            out = flat.gather(1, index.view(batch, -1, 1).expand(batch, c * c, channels))
            return out.view(batch, c, c, channels).permute(0, 3, 1, 2)
        flat = x.reshape(batch, channels, -1)
        out = flat.gather(2, index.expand(batch, channels, index.shape[-1]))
        return out.view(batch, channels, c, c)

    def _jitter(self, raw: torch.Tensor) -> torch.Tensor:
        ranges = self.jitter
        assert ranges is not None
        batch, device = raw.shape[0], raw.device
        apply = self._uniform(batch, device) < self.jitter_p

        def factor(key: str, identity: float) -> torch.Tensor:
            lo, hi = ranges[key]
            value = lo + (hi - lo) * self._uniform(batch, device)
            return torch.where(apply, value, identity)

        brightness = factor("brightness", 1.0)
        contrast = factor("contrast", 1.0)
        saturation = factor("saturation", 1.0)
        hue = factor("hue", 0.0) * (2 * math.pi)
        raw = adjust_brightness_accumulative(raw, brightness)
        raw = adjust_contrast_with_mean_subtraction(raw, contrast)
        raw = adjust_saturation_with_gray_subtraction(raw, saturation)
        return adjust_hue(raw, hue).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        """Summarise the configuration."""
        return (
            f"crop_size={self.crop_size}, hflip={self.hflip}, vflip={self.vflip}, "
            f"rot90={self.rot90}, jitter={self.jitter}, jitter_p={self.jitter_p}"
        )


def _parse_jitter(
    jitter: Mapping[str, float | Sequence[float]] | None,
) -> tuple[dict[str, tuple[float, float]] | None, float]:
    if not jitter:
        return None, 0.0
    unknown = set(jitter) - {*_JITTER_KEYS, "p"}
    if unknown:
        raise ValueError(f"unknown jitter keys: {sorted(unknown)}")
    out: dict[str, tuple[float, float]] = {}
    for key in _JITTER_KEYS:
        value = jitter.get(key, 0.0)
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError(f"jitter {key} must be non-negative, got {value}")
            lo, hi = (-value, value) if key == "hue" else (max(0.0, 1.0 - value), 1.0 + value)
        else:
            lo, hi = (float(v) for v in value)
        if lo > hi or (key == "hue" and not -0.5 <= lo <= hi <= 0.5) or (key != "hue" and lo < 0):
            raise ValueError(f"invalid jitter range for {key}: {(lo, hi)}")
        out[key] = (float(lo), float(hi))
    p = float(jitter.get("p", 1.0))  # type: ignore[arg-type]
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"jitter p must be in [0, 1], got {p}")
    return out, p
