"""Device-side training augmentation.

Evaluation normalisation: :mod:`engine.data.shards.normalize`.

One pipeline for every band count and pixel type: the native batch (uint8, uint16, int16 or
float32, ``[B, C, H, W]``) goes to each band's *unit scale* with
:meth:`~engine.data.shards.normalize.Normalization.to_unit` (nodata pixels take the band's mean),
then through the geometry, then the photometric jitter (on the unit scale, per band), and
is standardised with :meth:`~engine.data.shards.normalize.Normalization.standardize_unit`. For
3-band uint8 RGB data this is exactly the former ``x / 255`` → jitter → ``(x - mean) / std``.

Geometry uses plain torch indexing instead of ``kornia.augmentation.AugmentationSequential``:
a crop, flips and 90-degree rotations are pure pixel permutations, so indexing is exact by
construction (no interpolation, masks stay integer and aligned), per-sample, free of host
syncs, and every random draw comes from one ``torch.Generator`` for reproducibility. The
permutations are composed into one source index, so each tensor takes a single ``gather``
over the crop's pixels only. Photometric jitter is plain tensor arithmetic per band (kornia's
formulas, its grey level and its hue shift for the RGB bands) with per-sample factors drawn
from the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_hue
from torch import nn

from engine.data.shards.normalize import BandStats, Normalization

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TrainAugment", "imagenet_normalization"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def imagenet_normalization() -> Normalization:
    """Three uint8 bands red, green, blue with the ImageNet mean and std (the default)."""
    return Normalization(
        tuple(
            BandStats(name, "uint8", m * 255.0, s * 255.0, (0.0, 255.0))
            for name, m, s in zip(("red", "green", "blue"), IMAGENET_MEAN, IMAGENET_STD)
        ),
        (0, 1, 2),
    )


class TrainAugment(nn.Module):
    """Random crop, flips, 90-degree rotations and optional photometric jitter, per sample.

    Every call draws a fresh crop position and transform for each sample. The crop lies
    uniformly within the box around the sample's labelled pixels (mask not
    ``ignore_index``), which is the whole tile unless the tile's edges are unlabelled: the
    shard builder pads edge tiles with ignore, and a crop of padding teaches nothing. A box
    smaller than the crop lands at a random place inside it. A tile smaller than the crop
    is padded (image 0 on the unit scale: black for uint8 bands, the display low for others;
    mask ``ignore_index``). The mask goes through exactly the same pixel permutation as the
    image.

    Jitter (fixed order: brightness, contrast, saturation, hue) touches the image only, on
    the unit scale, before standardisation. Brightness scales every band by the sample's
    factor; contrast blends every band with its own mean over the crop (the RGB bands with
    their common grey level, as kornia does for RGB); saturation and hue act on
    ``normalization.rgb_bands`` only and are skipped when it is None. Only uint8 bands are
    clamped to [0, 1]; other bands keep values beyond their display range (hue and
    saturation then shift them by what they do to the clamped colour).

    Args:
        crop_size: Side of the square output crop.
        normalization: The bands and their statistics (``manifest.normalization``); default
            three uint8 RGB bands with the ImageNet mean and std.
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

    bounded: torch.Tensor

    def __init__(
        self,
        crop_size: int = 512,
        normalization: Normalization | None = None,
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
        if normalization is None:
            normalization = imagenet_normalization()
        if not isinstance(normalization, Normalization):
            raise TypeError(
                f"normalization must be an engine.data.shards.normalize.Normalization, got "
                f"{type(normalization).__name__}"
            )
        self.crop_size = crop_size
        self.normalization = normalization
        self.hflip = hflip
        self.vflip = vflip
        self.rot90 = rot90
        self.ignore_index = ignore_index
        self.jitter, self.jitter_p = _parse_jitter(jitter)
        flags = [band.dtype == "uint8" for band in normalization.bands]
        self._all_bounded, self._any_bounded = all(flags), any(flags)
        self.register_buffer("bounded", torch.tensor(flags).view(1, -1, 1, 1), persistent=False)
        rgb = normalization.rgb_bands
        self._rgb = list(rgb) if rgb is not None else None
        self._rgb_bounded = rgb is not None and all(flags[i] for i in rgb)
        self._rgb_only = self._rgb == list(range(len(flags)))  # the image is exactly RGB
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
            images: Native ``[B, C, H, W]`` (the band dtype: uint8, uint16, int16, float32),
                ``C = normalization.in_channels``.
            masks: Integer ``[B, H, W]`` (uint8 in the loader contract).
            return_raw: Also return the augmented image on the unit scale, before
                standardisation (after jitter: what the network sees), e.g. for the colour
                target.

        Returns:
            ``(images, masks)`` or ``(images, masks, raw)``: float32 standardised
            ``[B, C, c, c]``, int64 ``[B, c, c]`` and float32 unit-scale ``[B, C, c, c]``.
        """
        channels = self.normalization.in_channels
        if images.dim() != 4 or images.shape[1] != channels:
            raise ValueError(
                f"images must be [B, {channels}, H, W] ({', '.join(self.normalization.names)}), "
                f"got {tuple(images.shape)}"
            )
        if masks.shape != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match {tuple(images.shape)}")
        batch, _, height, width = images.shape
        device = images.device
        c = self.crop_size
        pad_h, pad_w = max(0, c - height), max(0, c - width)
        # The unit scale is per pixel, so a tile at least as large as the crop is cut first
        # and only the crop is converted (a 512² tile, 256² crop: a quarter of the work).
        crop_first = not (pad_h or pad_w)
        if not crop_first:
            images = self.normalization.to_unit(images)
        # Offsets into the (symmetrically) padded tile, within the labelled box: for a fully
        # labelled tile, uniform over every position (with padding, the tile uniformly
        # inside the crop).
        labelled = masks != self.ignore_index
        top = self._offsets(*_extent(labelled.any(2)), pad_h, height + 2 * pad_h - c)
        left = self._offsets(*_extent(labelled.any(1)), pad_w, width + 2 * pad_w - c)
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
        if crop_first:
            image = self.normalization.to_unit(self._gather_native(images, index))
        else:
            image = self._gather(images, index)
        mask = self._gather(masks, index)

        raw = image
        if self.jitter is not None:
            raw = self._jitter(raw)
        normalised = self.normalization.standardize_unit(raw)
        if return_raw:
            return normalised, mask[:, 0].long(), raw
        return normalised, mask[:, 0].long()

    def _offsets(self, start: torch.Tensor, end: torch.Tensor, pad: int, high: int):
        """Per sample, a crop offset into the padded tile, always within ``[0, high]``.

        Uniform over the offsets whose crop lies inside ``[start, end)`` (shifted by
        ``pad``), or covers it when it is smaller than the crop.
        """
        c = self.crop_size
        start, end = start + pad, end + pad
        low = torch.minimum(start, end - c).clamp(0, high)
        span = torch.maximum(start, end - c).clamp(0, high) - low
        draw = self._uniform(start.shape[0], start.device)
        return low + torch.minimum((draw * (span + 1)).long(), span)

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

    def _gather_native(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """:meth:`_gather` in the band dtype (uint16 moved as its int16 bits).

        No uint16 gather kernel is needed on any device.
        """
        if x.dtype == torch.uint16:
            return self._gather(x.view(torch.int16), index).view(torch.uint16)
        return self._gather(x, index)

    def _jitter(self, raw: torch.Tensor) -> torch.Tensor:
        ranges = self.jitter
        assert ranges is not None
        batch, device = raw.shape[0], raw.device
        apply = self._uniform(batch, device) < self.jitter_p

        def factor(key: str, identity: float) -> torch.Tensor:
            lo, hi = ranges[key]
            value = lo + (hi - lo) * self._uniform(batch, device)
            return torch.where(apply, value, identity).view(-1, 1, 1, 1)

        brightness = factor("brightness", 1.0)
        contrast = factor("contrast", 1.0)
        saturation = factor("saturation", 1.0)
        hue = factor("hue", 0.0).view(-1) * (2 * math.pi)
        raw = self._clamp(raw * brightness)
        rgb = self._rgb
        # Contrast pivots on each band's mean; RGB bands on their common grey level (kornia).
        if rgb is None:
            mean = raw.mean((-2, -1), keepdim=True)
        elif self._rgb_only:
            mean = rgb_to_grayscale(raw).mean((-2, -1), keepdim=True)
        else:
            mean = raw.mean((-2, -1), keepdim=True)
            mean[:, rgb] = rgb_to_grayscale(raw[:, rgb]).mean((-2, -1), keepdim=True)
        raw = self._clamp(raw * contrast + mean * (1 - contrast))
        if rgb is None:
            return raw
        colour = raw if self._rgb_only else raw[:, rgb]
        colour = (1 - saturation) * rgb_to_grayscale(colour) + saturation * colour
        if self._rgb_bounded:
            colour = adjust_hue(colour.clamp(0.0, 1.0), hue)
        else:  # hue needs [0, 1]: shift by what it does to the clamped colour
            inside = colour.clamp(0.0, 1.0)
            colour = colour + (adjust_hue(inside, hue) - inside)
        if self._rgb_only:
            raw = colour
        else:
            raw = raw.clone()
            raw[:, rgb] = colour
        return self._clamp(raw)

    def _clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp the uint8 bands to [0, 1]; other bands keep their values."""
        if self._all_bounded:
            return x.clamp(0.0, 1.0)
        if not self._any_bounded:
            return x
        return torch.where(self.bounded.to(x.device), x.clamp(0.0, 1.0), x)

    def extra_repr(self) -> str:
        """Summarise the configuration."""
        return (
            f"crop_size={self.crop_size}, bands={self.normalization.names}, "
            f"hflip={self.hflip}, vflip={self.vflip}, "
            f"rot90={self.rot90}, jitter={self.jitter}, jitter_p={self.jitter_p}"
        )


def _extent(labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and past-the-last labelled index per sample of ``[B, N]`` bool.

    Each entry says whether a row (or column) holds a labelled pixel; a sample without one
    gets the whole ``[0, N)``.
    """
    n = labelled.shape[1]
    empty = ~labelled.any(1)
    first = labelled.int().argmax(1)
    end = n - labelled.flip(1).int().argmax(1)
    return first.masked_fill(empty, 0), end.masked_fill(empty, n)


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
