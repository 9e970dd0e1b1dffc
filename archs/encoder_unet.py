"""U-Nets on timm ResNet encoders: ``unet_resnet18``, ``unet_resnet34``, ``unet_resnet50``.

The network is :class:`archs.resunet34.ResUNet` with its encoder fixed by the name (timm's
``resnet18``/``resnet34``/``resnet50``, features at strides 2..32 with 64-64-128-256-512
channels, ×4 after the stem for ResNet-50's bottlenecks) and the same decoder, head and
options. These are the architectures the weight cards (:mod:`archs.cards`) load into:
``input_card=CARD`` adds the fixed input stage that :func:`archs.load_card_weights` sets.
The entrypoints are made from one table (:data:`VARIANTS`), as the FCN ones are.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ._registry import register_model
from .resunet34 import ENCODER_UNET_OPTIONS, ResUNet

DECODER = (256, 128, 64, 32, 16)

#: ``entrypoint name → (timm encoder, docstring summary)``.
VARIANTS = {
    "unet_resnet18": ("resnet18", "U-Net on a timm ResNet-18 encoder (basic blocks)."),
    "unet_resnet34": ("resnet34", "U-Net on a timm ResNet-34 encoder (``resunet34``'s network)."),
    "unet_resnet50": (
        "resnet50",
        "U-Net on a timm ResNet-50 encoder (bottleneck blocks; 2048 channels at stride 32).",
    ),
}

_ARGS_DOC = """

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local state dict of the same timm encoder (the plain-file way; weight
            cards load through :func:`archs.load_card_weights` instead).
        head_kernel: Kernel of the logits conv (3 or 1).
        zero_init_last: Keep timm's zero residual-branch BatchNorm scales.
        input_card: Weight card whose input scaling the model's input stage applies.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """


def _entrypoint(name: str, encoder: str, summary: str) -> Callable[..., ResUNet]:
    """The entrypoint of the U-Net on timm ``encoder``, named ``name`` (registered below)."""

    def build(
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

    build.__name__ = build.__qualname__ = name
    build.__doc__ = summary + _ARGS_DOC
    return build


unet_resnet18, unet_resnet34, unet_resnet50 = (
    register_model(ENCODER_UNET_OPTIONS)(_entrypoint(name, encoder, summary))
    for name, (encoder, summary) in VARIANTS.items()
)
