"""ResUNet-34: a timm ResNet encoder with a UNet decoder.

The encoder is ``timm.create_model(encoder, features_only=True)`` (default ``resnet34``:
stem and layer1..layer4 at strides 2, 4, 8, 16, 32 with 64, 64, 128, 256, 512 channels).
The decoder has one block per factor of two from stride 32 to full resolution: nearest x2
up-sampling, concatenation with the encoder feature of that stride when there is one, and two
Conv3x3 + BN + ReLU (``decoder_channels``, default 256-128-64-32-16). A 1x1 conv gives the
logits at the input size. Inputs must have sides that are multiples of 32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import DoubleConv, SegmentationModel, init_conv_bn_, init_head_
from .weights import create_timm_model


class ResUNet(SegmentationModel):
    """UNet decoder on a timm feature encoder of output stride 32.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels (timm adapts pretrained first-conv weights).
        encoder: timm model name (``resnet34``, ``resnet18``, ``resnet10t``, ...).
        decoder_channels: Widths of the 5 decoder blocks, stride 16 down to stride 1.
        pretrained: Load timm's ImageNet weights (see :mod:`archs.weights`).
        weights: Local state-dict file of the same timm model.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        encoder: str = "resnet34",
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor=32)
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != 5 or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels needs 5 positive widths, got {decoder_channels}")
        self.encoder = create_timm_model(
            encoder,
            pretrained=pretrained,
            weights=weights,
            features_only=True,
            in_chans=in_channels,
        )
        channels = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        if reductions[-1] != 32 or any(r not in (2, 4, 8, 16, 32) for r in reductions):
            raise ValueError(
                f"encoder {encoder!r} must give features at strides among 2..32 ending at 32, "
                f"got {reductions}"
            )
        # decoder block k works at stride 16 / 2**k and takes the skip of that stride if any
        self.skip_index: list[int] = []
        blocks = []
        prev = channels[-1]
        for k, width in enumerate(decoder_channels):
            stride = 16 >> k
            idx = reductions.index(stride) if stride in reductions else -1
            self.skip_index.append(idx)
            skip_ch = channels[idx] if idx >= 0 else 0
            blocks.append(DoubleConv(prev + skip_ch, width))
            prev = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(prev, num_classes, 1)
        # the encoder keeps timm's init (or its loaded weights); see docs/archs.md
        init_conv_bn_(self.decoder)
        init_head_(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes, H, W]``."""
        self.check_input(x)
        feats = self.encoder(x)
        h = feats[-1]
        for idx, block in zip(self.skip_index, self.decoder):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            if idx >= 0:
                h = torch.cat([h, feats[idx]], dim=1)
            h = block(h)
        return self.head(h)


@register_model
def resunet34(
    num_classes: int,
    in_channels: int = 3,
    *,
    encoder: str = "resnet34",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
) -> ResUNet:
    """ResUNet-34: timm ResNet-34 encoder, UNet decoder with skip concatenations.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        encoder: timm encoder name (default ``resnet34``; ``resnet18``, ``resnet10t``, ... work).
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local ``.pth``/``.safetensors`` state dict of the same timm encoder model.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """
    return ResUNet(
        num_classes,
        in_channels,
        encoder=encoder,
        decoder_channels=decoder_channels,
        pretrained=pretrained,
        weights=weights,
    )
