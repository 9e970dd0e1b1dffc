"""FCN-8s and FCN-32s (Long, Shelhamer, Darrell 2015) on a timm VGG trunk.

The trunk is timm's ``vgg16`` (or ``vgg16_bn``, any timm VGG) split at its pooling layers:
pool3 (stride 8), pool4 (stride 16), pool5 (stride 32). fc6/fc7 are convolutions
(7x7 with padding 3, then 1x1) of width ``fc_width``; with ``fc_width=4096`` and pretrained
or local weights they start from timm's ImageNet ``pre_logits`` (the converted VGG
classifier), as in the paper.

* FCN-32s: score at stride 32, one x32 transposed conv.
* FCN-8s: score pool4 and pool3 (1x1 convs initialised to zero, so training starts from the
  coarse prediction), fused by addition after x2 transposed convs, then x8.

All transposed convs are learnable and initialised to bilinear upsampling. There is no
Caffe ``padding=100`` and no cropping: for inputs whose sides are multiples of 32 the output
has exactly the input size. Outputs are logits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import SegmentationModel, init_bilinear_
from .options import Option
from .weights import create_timm_model

_TIMM_FC_WIDTH = 4096  # width of timm VGG pre_logits (fc6/fc7)

FCN_OPTIONS = {
    "backbone": Option(str, 1, 64, timm_model=True),
    "fc_width": Option(int, 1, 8192),
    "drop_rate": Option(float, 0.0, 1.0),
    "pretrained": Option(bool),
    "weights": Option(Path, optional=True),
}


def _transposed_up(num_classes: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable x``factor`` upsampling, exact output size, initialised bilinear."""
    up = nn.ConvTranspose2d(
        num_classes,
        num_classes,
        kernel_size=2 * factor,
        stride=factor,
        padding=factor // 2,
        bias=False,
    )
    init_bilinear_(up)
    return up


def _conv_with_params(src: nn.Conv2d, padding: int) -> nn.Conv2d:
    """Return a Conv2d like ``src`` but with ``padding``, sharing ``src``'s parameters."""
    height, width = src.kernel_size
    conv = nn.Conv2d(
        src.in_channels, src.out_channels, (height, width), padding=padding, device="meta"
    )
    conv.weight, conv.bias = src.weight, src.bias
    return conv


class FCN(SegmentationModel):
    """Fully convolutional network on a timm VGG trunk (stride 8 or 32 output head).

    Args:
        num_classes: Number of classes.
        in_channels: Input channels (timm adapts pretrained first-conv weights).
        stride: 8 for FCN-8s, 32 for FCN-32s.
        backbone: timm VGG name (``vgg16``, ``vgg16_bn``, ``vgg11``, ...).
        fc_width: Width of fc6/fc7.
        drop_rate: Dropout after fc6 and fc7.
        pretrained: Load timm's ImageNet weights (see :mod:`archs.weights`).
        weights: Local state-dict file of the same timm VGG.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        stride: int = 8,
        backbone: str = "vgg16",
        fc_width: int = _TIMM_FC_WIDTH,
        drop_rate: float = 0.5,
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor=32)
        if stride not in (8, 32):
            raise ValueError(f"FCN stride must be 8 or 32, got {stride}")
        if not backbone.startswith("vgg"):
            raise ValueError(
                f"FCN needs a timm VGG backbone (vgg16, vgg16_bn, ...), got {backbone!r}"
            )
        if fc_width < 1:
            raise ValueError(f"fc_width must be positive, got {fc_width}")
        self.stride = stride
        self.drop_rate = drop_rate
        loading = pretrained or weights is not None
        # Without weights to load, timm's (discarded) 4096-wide pre_logits would cost seconds
        # of random init; shrink it. With weights it must match the file.
        vgg = create_timm_model(
            backbone,
            pretrained=pretrained,
            weights=weights,
            in_chans=in_channels,
            mlp_ratio=1.0 if loading else 1 / 64,
        )
        from timm.models.vgg import VGG  # timm is loaded by now

        if not isinstance(vgg, VGG):
            raise ValueError(f"{backbone!r} is not a timm VGG")
        layers = list(vgg.features)
        pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
        if len(pools) != 5:
            raise ValueError(f"{backbone!r} does not have the 5 pooling stages of a VGG")
        self.stage3 = nn.Sequential(*layers[: pools[2] + 1])  # -> pool3, stride 8
        self.stage4 = nn.Sequential(*layers[pools[2] + 1 : pools[3] + 1])  # -> pool4, stride 16
        self.stage5 = nn.Sequential(*layers[pools[3] + 1 :])  # -> pool5, stride 32
        info = vgg.feature_info  # taps: conv1..conv5 (pre-pool) and pool5
        # timm types the taps as dict[str, object]; "num_chs" is an int
        c3, c4, c5 = (cast(int, info[tap]["num_chs"]) for tap in (2, 3, 5))

        fc1, fc2 = vgg.pre_logits.fc1, vgg.pre_logits.fc2
        assert isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d)  # timm's VGG head
        if loading and fc_width == fc1.out_channels and fc2.out_channels == fc_width:
            # take over the loaded ImageNet fc6/fc7 tensors (7x7 'same' padding instead of none)
            self.fc6 = _conv_with_params(fc1, padding=3)
            self.fc7 = _conv_with_params(fc2, padding=0)
        else:
            self.fc6 = nn.Conv2d(c5, fc_width, 7, padding=3)
            self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
            for conv in (self.fc6, self.fc7):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                assert conv.bias is not None  # made with one
                nn.init.zeros_(conv.bias)
        del vgg, fc1, fc2

        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        if stride == 32:
            self.upscore32 = _transposed_up(num_classes, 32)
        else:
            self.score_pool4 = nn.Conv2d(c4, num_classes, 1)
            self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
            for conv in (self.score_pool4, self.score_pool3):
                nn.init.zeros_(conv.weight)
                assert conv.bias is not None  # made with one
                nn.init.zeros_(conv.bias)
            self.upscore2 = _transposed_up(num_classes, 2)
            self.upscore_pool4 = _transposed_up(num_classes, 2)
            self.upscore8 = _transposed_up(num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes, H, W]``."""
        self.check_input(x)
        pool3 = self.stage3(x)
        pool4 = self.stage4(pool3)
        pool5 = self.stage5(pool4)
        h = F.dropout(F.relu(self.fc6(pool5)), self.drop_rate, self.training)
        h = F.dropout(F.relu(self.fc7(h)), self.drop_rate, self.training)
        score = self.score_fr(h)
        if self.stride == 32:
            return self.upscore32(score)
        score = self.upscore2(score) + self.score_pool4(pool4)
        score = self.upscore_pool4(score) + self.score_pool3(pool3)
        return self.upscore8(score)


_ARGS_DOC = """

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        backbone: timm VGG name: ``vgg16`` (default) or ``vgg16_bn``; other VGGs work too.
        fc_width: Width of fc6/fc7 (4096 in the paper; small values for tests).
        drop_rate: Dropout after fc6/fc7.
        pretrained: Load timm's ImageNet weights (online, or from the local HF cache).
        weights: Local ``.pth``/``.safetensors`` state dict of the same timm VGG.

    Returns:
        The model; ``forward`` returns logits ``[B, N, H, W]``.
    """


def _entrypoint(name: str, stride: int, summary: str) -> Callable[..., FCN]:
    """The entrypoint of the FCN of output ``stride``, named ``name`` (registered below)."""

    def build(
        num_classes: int,
        in_channels: int = 3,
        *,
        backbone: str = "vgg16",
        fc_width: int = 4096,
        drop_rate: float = 0.5,
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
    ) -> FCN:
        return FCN(
            num_classes,
            in_channels,
            stride=stride,
            backbone=backbone,
            fc_width=fc_width,
            drop_rate=drop_rate,
            pretrained=pretrained,
            weights=weights,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = summary + _ARGS_DOC
    return build


fcn8s = register_model(FCN_OPTIONS)(
    _entrypoint(
        "fcn8s",
        8,
        "FCN-8s: VGG trunk, pool4 and pool3 skip scores, x8 learned bilinear upsampling.",
    )
)
fcn32s = register_model(FCN_OPTIONS)(
    _entrypoint(
        "fcn32s",
        32,
        "FCN-32s: VGG trunk, scores at stride 32, one x32 learned bilinear upsampling.",
    )
)
