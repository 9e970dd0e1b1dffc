"""U-Nets on timm ResNet encoders: ``unet_resnet18``, ``unet_resnet34``, ``unet_resnet50``.

The network is :class:`archs.resunet34.ResUNet` with its encoder fixed by the name (timm's
``resnet18``/``resnet34``/``resnet50``, features at strides 2..32 with 64-64-128-256-512
channels, ×4 after the stem for ResNet-50's bottlenecks) and the same decoder, head and
options. These are the architectures the weight cards (:mod:`archs.cards`) load into:
``input_card=CARD`` adds the fixed input stage that :func:`archs.load_card_weights` sets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ._registry import register_model
from .resunet34 import ENCODER_UNET_OPTIONS, ResUNet

DECODER = (256, 128, 64, 32, 16)


def _unet(
    encoder: str,
    num_classes: int,
    in_channels: int,
    decoder_channels: Sequence[int],
    pretrained: bool,
    weights: str | os.PathLike[str] | None,
    head_kernel: int,
    zero_init_last: bool,
    input_card: str | None,
) -> ResUNet:
    return ResUNet(
        num_classes,
        in_channels,
        encoder=encoder,
        decoder_channels=decoder_channels,
        pretrained=pretrained,
        weights=weights,
        head_kernel=head_kernel,
        zero_init_last=zero_init_last,
        input_card=input_card,
    )


@register_model(ENCODER_UNET_OPTIONS)
def unet_resnet18(
    num_classes: int,
    in_channels: int = 3,
    *,
    decoder_channels: Sequence[int] = DECODER,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    head_kernel: int = 3,
    zero_init_last: bool = False,
    input_card: str | None = None,
) -> ResUNet:
    """U-Net on a timm ResNet-18 encoder (options as :func:`archs.resunet34.resunet34`).

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local state dict of timm ``resnet18`` (the plain-file way; weight cards
            load through :func:`archs.load_card_weights` instead).
        head_kernel: Kernel of the logits conv (3 or 1).
        zero_init_last: Keep timm's zero residual-branch BatchNorm scales.
        input_card: Weight card whose input scaling the model's input stage applies.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """
    return _unet(
        "resnet18", num_classes, in_channels, decoder_channels, pretrained, weights,
        head_kernel, zero_init_last, input_card,
    )  # fmt: skip


@register_model(ENCODER_UNET_OPTIONS)
def unet_resnet34(
    num_classes: int,
    in_channels: int = 3,
    *,
    decoder_channels: Sequence[int] = DECODER,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    head_kernel: int = 3,
    zero_init_last: bool = False,
    input_card: str | None = None,
) -> ResUNet:
    """U-Net on a timm ResNet-34 encoder (``resunet34`` with the encoder fixed).

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local state dict of timm ``resnet34``.
        head_kernel: Kernel of the logits conv (3 or 1).
        zero_init_last: Keep timm's zero residual-branch BatchNorm scales.
        input_card: Weight card whose input scaling the model's input stage applies.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """
    return _unet(
        "resnet34", num_classes, in_channels, decoder_channels, pretrained, weights,
        head_kernel, zero_init_last, input_card,
    )  # fmt: skip


@register_model(ENCODER_UNET_OPTIONS)
def unet_resnet50(
    num_classes: int,
    in_channels: int = 3,
    *,
    decoder_channels: Sequence[int] = DECODER,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    head_kernel: int = 3,
    zero_init_last: bool = False,
    input_card: str | None = None,
) -> ResUNet:
    """U-Net on a timm ResNet-50 encoder (bottleneck blocks; 2048 channels at stride 32).

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local state dict of timm ``resnet50``.
        head_kernel: Kernel of the logits conv (3 or 1).
        zero_init_last: Keep timm's zero residual-branch BatchNorm scales.
        input_card: Weight card whose input scaling the model's input stage applies.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """
    return _unet(
        "resnet50", num_classes, in_channels, decoder_channels, pretrained, weights,
        head_kernel, zero_init_last, input_card,
    )  # fmt: skip
