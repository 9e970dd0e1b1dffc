"""The window layout of sliding-window prediction: windows per axis, weights, TTA, bands.

How an image is cut (per axis, length ``L``, tile ``T``, stride ``S = T - round(T *
overlap)``): ``n`` is the fewest windows ``S`` apart that cover ``L`` (at least one, so
images smaller than a tile work), and the axis is reflect-padded to ``Lp = (n - 1) * S + T``,
the slack split evenly before and after, so pixels at the image border get what context
the slack allows (up to ``S / 2``) instead of sitting at a tile edge. Adding windows only
for border context is not worth it: on a 2048² image in 512² tiles at overlap 0.25 a
margin of half the overlap took 6 x 6 windows instead of 5 x 5 (1.44x the compute), and a
whole-image pass has no context at its border either. Windows start at ``0, S, 2S, ...``
of the padded axis. Every window is a full ``T x T`` tile, so a model
only ever sees one input size (choose ``T`` as a multiple of the model's stride, e.g. 32).

Blending: each window's softmax probabilities (averaged over the TTA transforms, each
inverted back onto the tile first) are accumulated with a per-pixel weight and divided by
the summed weights. ``weighting="gaussian"`` (default) uses ``w(y, x) = g(y) g(x)`` with
``g`` a Gaussian of sigma ``T / 8`` centred on the tile (as nnU-Net), down-weighting tile
borders where context is missing; ``"uniform"`` averages overlapping windows equally. For a
model whose output at a pixel depends only on that pixel (or whose receptive field fits in
the part of the tile that covers it), the result equals a whole-image pass exactly.

Column bands keep the memory of a wide raster bounded: a raster wider than ``band_width`` is
cut into vertical bands of about that many columns, each processed top to bottom on its
own (:func:`column_bands`), so the accumulators span at most ``band_width + T`` columns
whatever the raster size. The price is recomputing, per band, the window column that
overlaps the band to its left (``S / band_width`` more windows: ~5 % at the default 16384
columns, tile 1024, overlap 0.25); the result is that of one band, since each pixel still
sums the same windows in the same order (bit for bit on a CPU; batches are composed
differently, which a GPU's kernels may round differently). Rows then arrive band by band,
so :class:`engine.infer.writer.PredictionWriter` stages them (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

TTA_MODES = ("none", "flip", "d4")
WEIGHTINGS = ("gaussian", "uniform")

Transform = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class AxisPlan:
    """Window layout along one axis.

    Attributes:
        length: Real length ``L``.
        padded: Padded length ``Lp``.
        pad_before: Reflect-padded pixels before the first real pixel.
        starts: Window starts in padded coordinates.
        tile: Window size ``T``.
    """

    length: int
    padded: int
    pad_before: int
    starts: tuple[int, ...]
    tile: int

    def source_index(self, start: int, stop: int) -> np.ndarray:
        """Real pixel indices of padded positions ``[start, stop)`` (reflect padding)."""
        index = np.arange(start, stop) - self.pad_before
        n = self.length
        if n == 1:
            return np.zeros_like(index)
        period = 2 * n - 2
        folded = np.mod(index, period)
        return np.where(folded >= n, period - folded, folded)


def plan_axis(length: int, tile: int, stride: int) -> AxisPlan:
    """Lay out the fewest windows of ``tile`` every ``stride`` pixels over a reflect-padded axis."""
    if length < 1:
        raise ValueError(f"cannot predict an empty axis (length {length})")
    count = 1 if length <= tile else math.ceil((length - tile) / stride) + 1
    padded = (count - 1) * stride + tile
    pad_before = (padded - length) // 2
    return AxisPlan(length, padded, pad_before, tuple(i * stride for i in range(count)), tile)


def window_stride(tile: int, overlap: float) -> int:
    """The stride ``S = T - round(T * overlap)`` (at least 1) between windows."""
    return max(1, tile - int(round(tile * overlap)))


def is_banded(width: int, tile: int, overlap: float, band_width: int | None) -> bool:
    """Whether a raster ``width`` columns wide is predicted in several column bands."""
    stride = window_stride(tile, overlap)
    return len(column_bands(plan_axis(width, tile, stride), stride, band_width)) > 1


def axis_weights(tile: int, weighting: str = "gaussian") -> torch.Tensor:
    """1-D blending profile ``g`` of length ``T``; tile weights are ``outer(g, g)``.

    Gaussian: ``exp(-d^2 / (2 sigma^2))`` with ``d`` the distance to the tile centre and
    ``sigma = T / 8``, scaled to max 1 and floored at ``1e-3`` (so every weight is > 0).
    Uniform: ones.
    """
    if weighting == "uniform":
        return torch.ones(tile)
    if weighting != "gaussian":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, not {weighting!r}")
    sigma = tile / 8.0
    position = torch.arange(tile, dtype=torch.float64) - (tile - 1) / 2.0
    g = torch.exp(-(position**2) / (2 * sigma**2))
    return (g / g.max()).clamp_min(1e-3).float()


def tile_weights(tile: int, weighting: str = "gaussian") -> torch.Tensor:
    """Per-pixel blending weights ``[T, T]`` = ``outer(g, g)`` (see :func:`axis_weights`)."""
    g = axis_weights(tile, weighting)
    return torch.outer(g, g)


def coverage(plan: AxisPlan, g: torch.Tensor) -> torch.Tensor:
    """Sum of the 1-D profiles of every window along an axis, ``[Lp]`` (float64)."""
    total = torch.zeros(plan.padded, dtype=torch.float64)
    for start in plan.starts:
        total[start : start + plan.tile] += g.double()
    return total


def tta_transforms(mode: str) -> list[Transform]:
    """``(forward, inverse)`` pairs on ``[B, C, H, W]`` tensors for a TTA mode.

    ``"none"``: identity. ``"flip"``: identity, horizontal flip, vertical flip. ``"d4"``:
    the 8 symmetries of the square (4 rotations, each with and without a horizontal flip).
    """

    def identity(x: torch.Tensor) -> torch.Tensor:
        return x

    if mode == "none":
        return [(identity, identity)]
    if mode == "flip":
        return [
            (identity, identity),
            (lambda x: x.flip(-1), lambda y: y.flip(-1)),
            (lambda x: x.flip(-2), lambda y: y.flip(-2)),
        ]
    if mode == "d4":
        pairs: list[Transform] = []
        for k in range(4):
            for flip in (False, True):

                def forward(x: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                    return torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))

                def inverse(y: torch.Tensor, k: int = k, flip: bool = flip) -> torch.Tensor:
                    y = torch.rot90(y, -k, dims=(-2, -1))
                    return y.flip(-1) if flip else y

                pairs.append((forward, inverse))
        return pairs
    raise ValueError(f"tta must be one of {TTA_MODES}, not {mode!r}")


@dataclass(frozen=True)
class ColumnBand:
    """Window columns processed together, and the padded columns they finalise.

    Attributes:
        first: First window column computed (includes windows from the band to the left
            that reach into ``[own0, own1)``: those pixels need every window covering them).
        stop: One past the last window column computed.
        own0: First padded column finalised by this band.
        own1: One past the last padded column finalised.
    """

    first: int
    stop: int
    own0: int
    own1: int


def column_bands(cols: AxisPlan, stride: int, band_width: int | None) -> list[ColumnBand]:
    """Cut the window columns into bands that finalise about ``band_width`` columns each.

    ``None``, or a padded width of at most ``band_width``, gives one band (nothing is
    computed twice). Otherwise each band owns ``max(1, band_width // stride)`` window
    columns and recomputes the windows of the band to its left that overlap what it owns
    (one window column when the overlap is at most half a tile).
    """
    count = len(cols.starts)
    if band_width is None or cols.padded <= band_width:
        return [ColumnBand(0, count, 0, cols.padded)]
    owned = max(1, band_width // stride)
    bands = []
    for begin in range(0, count, owned):
        stop = min(count, begin + owned)
        own0 = cols.starts[begin] if begin else 0
        own1 = cols.starts[stop] if stop < count else cols.padded
        first = begin
        while first > 0 and cols.starts[first - 1] + cols.tile > own0:
            first -= 1
        bands.append(ColumnBand(first, stop, own0, own1))
    return bands


def _whole(index: np.ndarray, length: int) -> bool:
    return len(index) == length and bool((index == np.arange(length)).all())


def take_padded(block: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``block[rows][:, cols]``, copying only along an axis that reflect padding repeats.

    Where an index is the block's own range (no padding) the block itself is used, so an
    interior strip of a many-band raster is held once, not twice. The result is always
    C-contiguous, so every batch reaches the model in the same memory layout (a layout
    change alters a CPU convolution's rounding, and column bands must give the one-band
    result bit for bit).
    """
    if not _whole(rows, block.shape[0]):
        block = block[rows]
    if not _whole(cols, block.shape[1]):
        block = block[:, cols]
    return np.ascontiguousarray(block)
