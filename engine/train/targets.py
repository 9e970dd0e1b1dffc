"""Multitask targets (ResUNet-a): boundary, distance and colour, computed per batch on the device.

All functions run on whatever device the mask is on, after cropping and augmentation,
without host syncs. Conventions shared by the boundary and distance targets:

* Ignored pixels (``ignore_index``, e.g. no-data or padding) belong to no class and are
  *neutral*: they are treated like the outside of the image. They never create a
  boundary and are never the "background" a distance is measured to. Their own target
  value is 0, and the losses mask them out anyway.
* The image border is not a class edge (a crop cuts objects; that cut is not a boundary).

The colour target is the HSV of the true-colour view: the ``rgb_bands`` of the unit-scale
image (:meth:`engine.data.shards.normalize.Normalization.to_unit`), clamped to [0, 1]. Data without
``rgb_bands`` has no colour target (:class:`NoColourBands`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.color import rgb_to_hsv

__all__ = [
    "MultitaskTargets",
    "NoColourBands",
    "boundary_targets",
    "class_masks",
    "colour_targets",
    "distance_targets",
    "euclidean_distance_transform",
    "make_targets",
    "rgb_view",
]

# Budget (elements) for one chunk of the O(H * W * W) second EDT pass: 128 MiB of int32.
_EDT_CHUNK_ELEMENTS = 1 << 25


class NoColourBands(ValueError):
    """Multitask colour targets were asked of data without ``rgb_bands``."""


class MultitaskTargets(NamedTuple):
    """Targets for the conditioned multitask head, all ``[B, *, H, W]`` on one device.

    Attributes:
        segmentation: int64 class indices ``[B, H, W]`` (``ignore_index`` kept).
        boundary: float32 ``[B, N, H, W]`` in {0, 1}.
        distance: float32 ``[B, N, H, W]`` in [0, 1].
        colour: float32 ``[B, 3, H, W]``, HSV in [0, 1].
    """

    segmentation: torch.Tensor
    boundary: torch.Tensor
    distance: torch.Tensor
    colour: torch.Tensor


def class_masks(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot class membership; ignored (or out-of-range) pixels belong to no class.

    Args:
        mask: Integer class indices ``[B, H, W]``.
        num_classes: Number of classes ``N``.

    Returns:
        bool ``[B, N, H, W]``.
    """
    classes = torch.arange(num_classes, device=mask.device).view(1, -1, 1, 1)
    return mask.long().unsqueeze(1) == classes


def boundary_targets(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Class edges thickened by a 3x3 cross, one channel per class.

    With ``M_c = (mask == c)`` and the 3x3 cross ``K`` (centre + 4-neighbours),
    ``boundary_c = dilate(M_c, K) XOR erode(M_c, K)`` on valid pixels: a valid pixel is a
    boundary of class ``c`` when it is in ``c`` and a 4-neighbour is a valid pixel not in
    ``c`` (inner edge), or it is not in ``c`` and a 4-neighbour is in ``c`` (outer edge).
    The result is a 2-pixel-wide band along every edge. Pixels outside the image and
    ignored pixels neither dilate nor erode (scipy: ``binary_dilation(M_c, K,
    border_value=0)`` XOR ``binary_erosion(M_c | ignored, K, border_value=1)``), and
    ignored pixels get 0.

    Args:
        mask: Integer class indices ``[B, H, W]``.
        num_classes: Number of classes ``N``.
        ignore_index: Value of ignored pixels.

    Returns:
        float32 ``[B, N, H, W]`` in {0, 1}.
    """
    members = class_masks(mask, num_classes)
    valid = (mask != ignore_index).unsqueeze(1)
    fg = members.float()
    # max_pool2d pads with -inf, so the outside of the image is neutral for both operations;
    # a cross is the union of a vertical and a horizontal 3-line.
    dilated = torch.maximum(_pool(fg, (3, 1)), _pool(fg, (1, 3)))
    erodable = (members | ~valid).float()
    eroded = torch.minimum(-_pool(-erodable, (3, 1)), -_pool(-erodable, (1, 3)))
    return (dilated - eroded) * valid


def _pool(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    padding = (kernel[0] // 2, kernel[1] // 2)
    return F.max_pool2d(x, kernel_size=kernel, stride=1, padding=padding)


def euclidean_distance_transform(sources: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance from every pixel to the nearest source pixel.

    Equals ``scipy.ndimage.distance_transform_edt(~sources)`` when ``sources`` has a True
    pixel; ``inf`` everywhere for an image without one. Separable and exact (as in
    Felzenszwalb & Huttenlocher): pass 1 gets the distance to the nearest source in the
    same column with two cumulative scans; pass 2 takes, for each pixel, the minimum over
    the pixels ``x'`` of its row of ``(x - x')^2 + g(x')^2``, as one broadcast min in
    chunks. Pass 2 costs ``O(H * W * min(H, W))`` but has no data-dependent control flow
    (no host sync, GPU friendly); all arithmetic is integer, so the result is exact.

    Args:
        sources: bool ``[..., H, W]``.

    Returns:
        float32 ``[..., H, W]``.
    """
    height, width = sources.shape[-2:]
    if width > height:  # run pass 2 along the shorter axis
        return euclidean_distance_transform(sources.transpose(-1, -2)).transpose(-1, -2)
    lead = sources.shape[:-2]
    src = sources.reshape(-1, height, width)
    device = src.device
    # Any distance >= far is "no source": far^2 exceeds every real squared distance.
    far = height + width
    rows = torch.arange(height, device=device, dtype=torch.int32).view(1, -1, 1)
    above = torch.where(src, rows, -far).cummax(dim=1).values
    below = torch.where(src, rows, height - 1 + far).flip(1).cummin(dim=1).values.flip(1)
    column = torch.minimum(rows - above, below - rows).clamp(max=far)
    g2 = (column * column).reshape(-1, width)

    cols = torch.arange(width, device=device, dtype=torch.int32)
    offsets2 = (cols.view(-1, 1) - cols.view(1, -1)) ** 2  # [x, x']
    step = max(1, _EDT_CHUNK_ELEMENTS // (width * width))
    d2 = torch.cat(
        [(g2[i : i + step, None, :] + offsets2).amin(dim=-1) for i in range(0, g2.shape[0], step)]
    )
    dist = d2.float().sqrt()
    dist = torch.where(d2 >= far * far, math.inf, dist)
    return dist.reshape(*lead, height, width)


def distance_targets(mask: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """Per-class Euclidean distance transform, min-max normalised per image and class.

    For class ``c``, each pixel of ``c`` gets its Euclidean distance to the nearest valid
    pixel not in ``c`` (0 elsewhere); the map is then divided by its maximum over the
    image (its minimum is 0), so it spans [0, 1]. Ignored pixels are not a target to
    measure to (distances pass through them) and get 0. Edge cases: a class absent from
    the image gives all zeros; a class covering every valid pixel (no pixel to measure
    to) gives 1 on its pixels.

    Args:
        mask: Integer class indices ``[B, H, W]``.
        num_classes: Number of classes ``N``.
        ignore_index: Value of ignored pixels.

    Returns:
        float32 ``[B, N, H, W]`` in [0, 1].
    """
    members = class_masks(mask, num_classes)
    valid = (mask != ignore_index).unsqueeze(1)
    sources = valid & ~members
    dist = euclidean_distance_transform(sources)
    dist = torch.where(members, dist, 0.0)
    peak = dist.amax(dim=(-2, -1), keepdim=True)
    normalised = dist / peak.clamp(min=1.0)  # a present class with a source has peak >= 1
    has_source = sources.any(dim=(-2, -1), keepdim=True)
    return torch.where(has_source, normalised, members.float())


def colour_targets(images01: torch.Tensor) -> torch.Tensor:
    """Convert the image to HSV, each channel scaled to [0, 1] (hue: radians / 2 pi).

    Args:
        images01: RGB float ``[B, 3, H, W]`` in [0, 1] (before normalisation).

    Returns:
        float32 ``[B, 3, H, W]``.
    """
    hsv = rgb_to_hsv(images01.float())
    hue = hsv[:, :1] / (2 * math.pi)
    return torch.cat([hue, hsv[:, 1:]], dim=1).clamp(0.0, 1.0)


def rgb_view(unit: torch.Tensor, rgb_bands: Sequence[int] | None) -> torch.Tensor:
    """The true-colour view of a unit-scale image: its ``rgb_bands``, clamped to [0, 1].

    Args:
        unit: Float ``[B, C, H, W]`` on the unit scale (uint8 bands: the 0–1 scale).
        rgb_bands: Indices of the red, green and blue bands, or None.

    Returns:
        float32 ``[B, 3, H, W]`` in [0, 1].

    Raises:
        NoColourBands: when ``rgb_bands`` is None.
    """
    if rgb_bands is None:
        raise NoColourBands(
            "the multitask colour target needs red, green and blue bands, but the data has "
            "rgb_bands: null"
        )
    rgb = [int(i) for i in rgb_bands]
    if len(rgb) != 3 or not all(0 <= i < unit.shape[1] for i in rgb):
        raise ValueError(f"rgb_bands {rgb} must be 3 indices below {unit.shape[1]}")
    view = unit if rgb == [0, 1, 2] and unit.shape[1] == 3 else unit[:, rgb]
    return view.clamp(0.0, 1.0)


@torch.no_grad()
def make_targets(
    unit: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    rgb_bands: Sequence[int] | None = (0, 1, 2),
) -> MultitaskTargets:
    """All multitask targets for one (cropped, augmented) batch.

    Args:
        unit: Float ``[B, C, H, W]`` on the unit scale, the crop the network sees before
            standardisation (``TrainAugment(..., return_raw=True)``); for RGB uint8 data
            the image in [0, 1].
        masks: Integer class indices ``[B, H, W]``.
        num_classes: Number of classes ``N``.
        ignore_index: Value of ignored pixels.
        rgb_bands: Indices of the red, green and blue bands (``normalization.rgb_bands``).

    Returns:
        The targets; ``segmentation`` is ``masks`` as int64.

    Raises:
        NoColourBands: when ``rgb_bands`` is None (preflight refuses such a run first).
    """
    return MultitaskTargets(
        segmentation=masks.long(),
        boundary=boundary_targets(masks, num_classes, ignore_index),
        distance=distance_targets(masks, num_classes, ignore_index),
        colour=colour_targets(rgb_view(unit, rgb_bands)),
    )
