"""ResUNet-34: a timm ResNet encoder with a UNet decoder.

The encoder is ``timm.create_model(encoder, features_only=True)`` (default ``resnet34``:
stem and layer1..layer4 at strides 2, 4, 8, 16, 32 with 64, 64, 128, 256, 512 channels).
The decoder has one block per factor of two from stride 32 to full resolution: nearest x2
up-sampling, concatenation with the encoder feature of that stride when there is one, and two
Conv3x3 + BN + ReLU (``decoder_channels``, default 256-128-64-32-16). A 3x3 conv gives the
logits at the input size. Inputs must have sides that are multiples of 32.

Layer for layer this is ``segmentation_models_pytorch.Unet("resnet34")``, and without
pretrained weights it is initialised as smp initialises it: the encoder's residual-branch
BatchNorm scales start at 1 (not timm's ``zero_init_last`` zeros), decoder convs He-uniform
(fan-in), the 3x3 head Xavier-uniform. docs/archs.md, "Initialisation", gives the measurements.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .cards import list_cards
from .input_stage import InputAffine
from .layers import DoubleConv, SegmentationModel, init_conv_bn_, init_head_
from .options import Option
from .weights import create_timm_model


@torch.no_grad()
def restore_residual_scales_(encoder: nn.Module) -> int:
    """Set to 1 the residual-branch norm scales that timm's ``zero_init_last`` zeroed.

    timm zero-initialises the last BatchNorm scale of every residual block (the blocks with
    a ``zero_init_last`` method); torchvision and smp's encoders start them at 1. Only zero
    scales inside such blocks are touched, and no random numbers are drawn, so the other
    weights stay those of the seed. Returns the number of norms set.
    """
    count = 0
    for block in encoder.modules():
        if not callable(getattr(block, "zero_init_last", None)):
            continue
        for m in block.modules():
            if not isinstance(m, nn.BatchNorm2d) or m.weight is None:
                continue
            if m.weight.is_meta or not m.weight.any():  # meta tensors hold no values
                m.weight.fill_(1.0)
                count += 1
    return count


class ResUNet(SegmentationModel):
    """UNet decoder on a timm feature encoder of output stride 32.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels (timm adapts pretrained first-conv weights).
        encoder: timm model name (``resnet34``, ``resnet18``, ``resnet10t``, ...).
        decoder_channels: Widths of the 5 decoder blocks, stride 16 down to stride 1.
        pretrained: Load timm's ImageNet weights (see :mod:`archs.weights`).
        weights: Local state-dict file of the same timm model.
        head_kernel: Kernel of the logits conv, 3 (default, as smp) or 1 (before issue #16;
            a state dict with a 1x1 head also loads into a model built with the default).
        zero_init_last: Keep timm's zero scales of the residual branches' last BatchNorm
            (default ``False``: they start at 1, as in torchvision and smp). Loaded weights
            are never changed.
        input_card: Name of a weight card (:mod:`archs.cards`): the model gets a fixed
            per-band affine input stage (``input_stage``, buffers saved with the weights)
            that :func:`archs.load_card_weights` sets to that card's input scaling. It
            starts as the identity. ``None`` (default): no input stage.
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
        head_kernel: int = 3,
        zero_init_last: bool = False,
        input_card: str | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor=32)
        self.input_card = input_card
        self.input_stage = InputAffine(in_channels) if input_card is not None else None
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
        if not (zero_init_last or pretrained or weights):
            restore_residual_scales_(self.encoder)
        from timm.models import FeatureInfo  # timm is loaded by now

        info = getattr(self.encoder, "feature_info", None)
        assert isinstance(info, FeatureInfo)  # what timm's features_only models carry
        channels, reductions = info.channels(), info.reduction()
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
        if head_kernel not in (1, 3):
            raise ValueError(f"head_kernel must be 1 or 3, got {head_kernel!r}")
        self.head = nn.Conv2d(prev, num_classes, head_kernel, padding=head_kernel // 2)
        # the encoder keeps timm's init (or its loaded weights); see docs/archs.md
        init_conv_bn_(self.decoder, distribution="uniform")
        init_head_(self.head)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # a state of the 1x1-head era (exports from before issue #16) loads into a 1x1 head
        weight = state_dict.get(prefix + "head.weight")
        old = self.head
        if weight is not None and weight.ndim == 4 and weight.shape[-1] in (1, 3):
            k = int(weight.shape[-1])
            if k != old.kernel_size[0]:
                self.head = nn.Conv2d(
                    old.in_channels, old.out_channels, k, padding=k // 2, bias=old.bias is not None
                ).to(device=old.weight.device, dtype=old.weight.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes, H, W]``."""
        self.check_input(x)
        if self.input_stage is not None:
            x = self.input_stage(x)
        feats = self.encoder(x)
        h = feats[-1]
        for idx, block in zip(self.skip_index, self.decoder):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            if idx >= 0:
                h = torch.cat([h, feats[idx]], dim=1)
            h = block(h)
        return self.head(h)


#: The options of a U-Net on a timm encoder (besides ``encoder`` itself).
ENCODER_UNET_OPTIONS = {
    "decoder_channels": Option(int, 1, 2048, lengths=((5, 5),)),
    "pretrained": Option(bool),
    "weights": Option(Path, optional=True),
    "head_kernel": Option(int, choices=(1, 3)),
    "zero_init_last": Option(bool),
    "input_card": Option(str, choices=tuple(list_cards()), optional=True),
}


@register_model({"encoder": Option(str, 1, 128, timm_model=True), **ENCODER_UNET_OPTIONS})
def resunet34(
    num_classes: int,
    in_channels: int = 3,
    *,
    encoder: str = "resnet34",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    head_kernel: int = 3,
    zero_init_last: bool = False,
    input_card: str | None = None,
) -> ResUNet:
    """ResUNet-34: timm ResNet-34 encoder, UNet decoder with skip concatenations.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        encoder: timm encoder name (default ``resnet34``; ``resnet18``, ``resnet10t``, ... work).
        decoder_channels: Widths of the 5 decoder blocks (stride 16 -> full resolution).
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local ``.pth``/``.safetensors`` state dict of the same timm encoder model.
        head_kernel: Kernel of the logits conv (3, or 1 as before issue #16).
        zero_init_last: Start the residual branches' last BatchNorm scales at 0 (timm's
            default) instead of 1.
        input_card: Weight card whose input scaling the input stage applies (see
            :class:`ResUNet`); None: no input stage.

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
        head_kernel=head_kernel,
        zero_init_last=zero_init_last,
        input_card=input_card,
    )
