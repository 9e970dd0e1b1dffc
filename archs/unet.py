"""UNet (Ronneberger, Fischer, Brox 2015) with padded convolutions and batch norm.

``depth`` down-sampling levels (default 4) with widths ``base_width * 2**i``
(64-128-256-512-1024 at the defaults); each level is two Conv3x3 + BN + ReLU. Down-sampling
is 2x2 max pooling; up-sampling a 2x2 stride-2 transposed conv halving the channels
(``bilinear=True``: bilinear x2 then a 1x1 conv), followed by concatenation with the skip and
two Conv3x3 + BN + ReLU. A final 1x1 conv gives the logits. Because the convs are padded the
output has the input size; inputs must have sides that are multiples of ``2**depth`` (16 at
the default, so any multiple of 32 works). Every parameter takes part in the forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import DoubleConv, SegmentationModel, init_head_
from .options import Option


class _Up(nn.Module):
    """x2 up-sampling halving the channels, concat with the skip, two conv layers."""

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        self.bilinear = bilinear
        self.up: nn.Module
        if bilinear:
            self.up = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` to ``skip``'s size and fuse."""
        if self.bilinear:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(SegmentationModel):
    """UNet with BatchNorm and padded convolutions.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        base_width: Channels of the first level (64 in the paper).
        depth: Number of down-sampling steps (4 in the paper).
        bilinear: Bilinear up-sampling + 1x1 conv instead of transposed convs.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        base_width: int = 64,
        depth: int = 4,
        bilinear: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor=2**depth)
        if base_width < 1 or depth < 1:
            raise ValueError(f"base_width and depth must be positive, got {base_width}, {depth}")
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(
            _Up(widths[i + 1], widths[i], bilinear) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        # Convs keep PyTorch's default: He init on every conv of this from-scratch network
        # halved the demo's test mIoU (docs/archs.md, "Initialisation"). The head is Xavier.
        init_head_(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes, H, W]``."""
        self.check_input(x)
        h = self.inc(x)
        skips = [h]
        for down in self.downs:
            h = down(F.max_pool2d(h, 2))
            skips.append(h)
        skips.pop()  # the bottleneck is not a skip
        for up in self.ups:
            h = up(h, skips.pop())
        return self.head(h)


@register_model(
    {"base_width": Option(int, 1, 512), "depth": Option(int, 1, 8), "bilinear": Option(bool)}
)
def unet(
    num_classes: int,
    in_channels: int = 3,
    *,
    base_width: int = 64,
    depth: int = 4,
    bilinear: bool = False,
) -> UNet:
    """UNet: 4 down / 4 up levels, widths 64-128-256-512-1024 at the defaults.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        base_width: Channels of the first level; the others double per level.
        depth: Number of down-sampling steps; inputs must be multiples of ``2**depth``.
        bilinear: Bilinear x2 + 1x1 conv instead of 2x2 transposed convs.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """
    return UNet(num_classes, in_channels, base_width=base_width, depth=depth, bilinear=bilinear)
