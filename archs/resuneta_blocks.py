"""ResUNet-a building blocks (Diakogiannis et al. 2020), as in the authors' code.

* ``ResBlockA``: ``y = x + sum_d F_d(x)``, parallel branches
  ``F_d = BN -> ReLU -> Conv3x3(dilation d) -> BN -> ReLU -> Conv3x3(dilation d)``.
* ``DownSample``: stride-2 conv, no norm. ``UpSample``: nearest x2 -> Conv1x1 + BN.
* ``Combine(lo, hi)``: ``concat(ReLU(lo), hi) -> Conv1x1 + BN``.
* ``PSPPooling``: max-pooling over ``2**k`` grids, Conv1x1 + BN per branch, fused.
* ``ConditionedMultitaskHead``: distance -> boundary -> segmentation, independent colour.

The networks that use them are in :mod:`archs.resuneta`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv_bn, conv_bn_relu, upsample_to
from .outputs import MultitaskOutput


class ResBlockA(nn.Module):
    """ResBlock-a: identity plus the sum of parallel dilated residual branches.

    Args:
        channels: Input and output channels.
        dilations: One branch per dilation rate.
    """

    def __init__(self, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        if not dilations:
            raise ValueError("ResBlockA needs at least one dilation rate")
        self.dilations = tuple(int(d) for d in dilations)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=False),
            )
            for d in self.dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + sum_d F_d(x)``."""
        out = x
        for branch in self.branches:
            out = out + branch(x)
        return out


def _grid_max_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """Max-pool ``x`` over a ``grid x grid`` partition of its spatial extent."""
    n, c, h, w = x.shape
    if grid == 1:
        return x.amax(dim=(2, 3), keepdim=True)
    if h % grid == 0 and w % grid == 0:
        # equal cells: a reshape + amax (deterministic backward, unlike CUDA adaptive pooling)
        return x.reshape(n, c, grid, h // grid, grid, w // grid).amax(dim=(3, 5))
    return F.adaptive_max_pool2d(x, grid)


class PSPPooling(nn.Module):
    """Pyramid scene parsing pooling with max-pooling over adaptive grids.

    Args:
        in_channels: Input channels.
        out_channels: Output channels (default ``in_channels``); branches have a quarter.
        depth: Number of branches; branch ``k`` pools over a ``2**k`` grid.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, depth: int = 4) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if out_channels % 4 != 0 or depth < 1:
            raise ValueError(
                f"PSPPooling needs out_channels divisible by 4 and depth >= 1, "
                f"got {out_channels}, {depth}"
            )
        self.grids = tuple(2**k for k in range(depth))
        self.branches = nn.ModuleList(
            conv_bn(in_channels, out_channels // 4, 1) for _ in self.grids
        )
        self.fuse = conv_bn(in_channels + depth * (out_channels // 4), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the fused pyramid features, same spatial size as ``x``."""
        feats = [x]
        for grid, conv in zip(self.grids, self.branches):
            pooled = upsample_to(_grid_max_pool(x, grid), x)
            feats.append(conv(pooled))
        return self.fuse(torch.cat(feats, dim=1))


class DownSample(nn.Module):
    """Stride-2 convolution (no norm), ``out_channels`` usually twice ``in_channels``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=2,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the down-sampled features."""
        return self.conv(x)


class UpSample(nn.Module):
    """Nearest up-sampling to the skip's size, then Conv1x1 + BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_bn(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to ``ref``'s spatial size and project it."""
        return self.conv(upsample_to(x, ref))


class Combine(nn.Module):
    """``concat(ReLU(lo), hi) -> Conv1x1 + BN`` to ``hi``'s channels."""

    def __init__(self, lo_channels: int, hi_channels: int) -> None:
        super().__init__()
        self.conv = conv_bn(lo_channels + hi_channels, hi_channels, 1)

    def forward(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Fuse ``lo`` (activated) and ``hi``."""
        return self.conv(torch.cat([F.relu(lo), hi], dim=1))


def _last_conv(branch: nn.Sequential) -> nn.Conv2d:
    conv = branch[-1]
    assert isinstance(conv, nn.Conv2d)  # every output branch ends with its logit conv
    return conv


class ConditionedMultitaskHead(nn.Module):
    """ResUNet-a "cmtsk" head: distance -> boundary -> segmentation, independent colour.

    Args:
        in_channels: Channels of ``convl`` (first layer and last decoder level concatenated).
        width: Channels of the hidden layers (the base width).
        num_classes: Number of classes ``N``.
        psp_depth: Depth of the head's PSPPooling.
    """

    def __init__(self, in_channels: int, width: int, num_classes: int, psp_depth: int = 4) -> None:
        super().__init__()
        self.psp = PSPPooling(in_channels, width, depth=psp_depth)
        self.distance = nn.Sequential(
            *conv_bn_relu(in_channels, width),
            *conv_bn_relu(width, width),
            nn.Conv2d(width, num_classes, 1),
        )
        self.boundary = nn.Sequential(
            *conv_bn_relu(width + num_classes, width), nn.Conv2d(width, num_classes, 1)
        )
        self.segmentation = nn.Sequential(
            *conv_bn_relu(width + 2 * num_classes, width),
            *conv_bn_relu(width, width),
            nn.Conv2d(width, num_classes, 1),
        )
        self.colour = nn.Conv2d(in_channels, 3, 1)

    def logit_convs(self) -> list[nn.Conv2d]:
        """The last conv of every output branch (segmentation, boundary, distance, colour)."""
        branches = (self.segmentation, self.boundary, self.distance)
        return [*(_last_conv(branch) for branch in branches), self.colour]

    def forward(self, first: torch.Tensor, last: torch.Tensor) -> MultitaskOutput:
        """Return the four logits from the first layer and the last decoder level."""
        convl = torch.cat([F.relu(first), last], dim=1)
        conv = F.relu(self.psp(convl))
        distance = self.distance(convl)
        dist_prob = torch.softmax(distance, dim=1)
        boundary = self.boundary(torch.cat([conv, dist_prob], dim=1))
        bound_prob = torch.sigmoid(boundary)
        segmentation = self.segmentation(torch.cat([conv, bound_prob, dist_prob], dim=1))
        colour = self.colour(convl)
        return MultitaskOutput(segmentation, boundary, distance, colour)
