"""Building blocks shared by several architectures."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Base class of terraseg networks: input checks and the attributes the engine reads.

    Attributes:
        num_classes: Number of output classes ``N``.
        in_channels: Number of input channels.
        size_divisor: Input height and width must be multiples of this.
        multitask: Whether ``forward`` returns :class:`archs.MultitaskOutput`.
        input_extent_matters: Whether the output at a pixel depends on the whole input's
            extent, not only on a neighbourhood (ResUNet-a: its PSP pooling takes a max
            over the whole input). Such a network is evaluated and predicts on windows of
            the crop it was trained on (:func:`engine.evaluate.shard_eval.context_window`).
    """

    multitask: bool = False
    input_extent_matters: bool = False

    def __init__(self, num_classes: int, in_channels: int, size_divisor: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.size_divisor = size_divisor

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is ``[B, in_channels, H, W]`` with H, W multiples.

        Args:
            x: The input batch.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected an input of shape [B, {self.in_channels}, H, W], got {list(x.shape)}"
            )
        h, w = x.shape[-2], x.shape[-1]
        d = self.size_divisor
        if h % d != 0 or w % d != 0:
            raise ValueError(
                f"{type(self).__name__} needs input height and width that are multiples of {d}, "
                f"got {h}x{w}; pad or crop the input (tile sizes must be multiples of {d})"
            )


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 1,
    *,
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """Return Conv2d (no bias, 'same' padding for stride 1) followed by BatchNorm2d."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    )


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    """Return Conv2d (no bias, 'same' padding) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(*conv_bn(in_channels, out_channels, kernel_size), nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """Two (Conv3x3 -> BN -> ReLU) layers, as in each UNet level."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            *conv_bn_relu(in_channels, out_channels), *conv_bn_relu(out_channels, out_channels)
        )


def bilinear_kernel(size: int) -> torch.Tensor:
    """Return the 2-D bilinear interpolation kernel ``[size, size]`` of a transposed conv.

    With ``kernel_size = 2 * f``, ``stride = f`` and ``padding = f // 2`` a transposed conv
    holding this kernel on its diagonal is bilinear upsampling by ``f`` (``align_corners=False``)
    away from the borders.
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    return filt[:, None] * filt[None, :]


@torch.no_grad()
def init_bilinear_(conv: nn.ConvTranspose2d) -> None:
    """Initialise a square, channel-preserving transposed conv to bilinear upsampling."""
    cin, cout, kh, kw = conv.weight.shape
    if cin != cout or kh != kw or conv.groups != 1:
        raise ValueError("bilinear init needs in_channels == out_channels and a square kernel")
    kernel = bilinear_kernel(kh).to(device=conv.weight.device, dtype=conv.weight.dtype)
    eye = torch.eye(cin, device=conv.weight.device, dtype=conv.weight.dtype)
    conv.weight.copy_(eye[:, :, None, None] * kernel)
    if conv.bias is not None:
        conv.bias.zero_()


def upsample_to(x: torch.Tensor, ref: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Resize ``x`` to the spatial size of ``ref`` (a no-op when they already match)."""
    size = (ref.shape[-2], ref.shape[-1])
    if x.shape[-2] == size[0] and x.shape[-1] == size[1]:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def conv_fan(conv: nn.Conv2d | nn.ConvTranspose2d, mode: str = "fan_in") -> int:
    """Connections per output value (``fan_in``) or per input value (``fan_out``) of a conv.

    ``fan_in``: ``in_channels / groups * kh * kw``, for a transposed conv divided by the
    stride area (each output value sees ``kh * kw / (sh * sw)`` taps per input channel).
    ``fan_out``: ``out_channels / groups * kh * kw`` for both kinds. ``torch.nn.init`` reads
    the fans off the weight's axes, which a ``ConvTranspose2d`` stores as
    ``[in, out / groups, kh, kw]``, so it swaps them for transposed convs.
    """
    kh, kw = conv.kernel_size
    if mode == "fan_out":
        return conv.out_channels // conv.groups * kh * kw
    if mode != "fan_in":
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    taps = kh * kw
    if isinstance(conv, nn.ConvTranspose2d):
        sh, sw = conv.stride
        taps = max(1, taps // (sh * sw))
    return conv.in_channels // conv.groups * taps


@torch.no_grad()
def init_conv_bn_(module: nn.Module, mode: str = "fan_in", distribution: str = "normal") -> None:
    """He-initialise every conv of ``module`` and reset its norm layers.

    Convs (``Conv2d`` and ``ConvTranspose2d``): std ``sqrt(2 / fan)`` (:func:`conv_fan`;
    ``fan_in`` by default, the scale of smp's decoders), ``distribution`` ``"normal"`` or
    ``"uniform"`` (bound ``sqrt(6 / fan)``, smp's ``kaiming_uniform_``), zero bias.
    Norms: scale 1, shift 0. PyTorch's default conv init (``kaiming_uniform_(a=sqrt(5))``,
    std ``1/sqrt(3 fan_in)``) is 0.41x that. A conv followed by BatchNorm computes the same
    function at any weight scale, but AdamW moves every weight by about ``lr`` per step
    whatever its size, so the small weights trained at a ~2.5x higher effective learning
    rate (docs/archs.md, "Initialisation").

    Apply it to freshly built layers only, never to a pretrained encoder.
    """
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            std = math.sqrt(2.0) / math.sqrt(conv_fan(m, mode))
            if distribution == "normal":
                m.weight.normal_(0.0, std)
            else:  # the arithmetic of nn.init.kaiming_uniform_, to the last bit
                m.weight.uniform_(-math.sqrt(3.0) * std, math.sqrt(3.0) * std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()


@torch.no_grad()
def init_head_(conv: nn.Conv2d) -> None:
    """Initialise a logits conv: Xavier-uniform weight, zero bias.

    The weight std is ``sqrt(2 / (fan_in + fan_out))``: over ReLU features of unit scale
    the initial logits spread by ~0.6-1 across classes at every architecture's width, as in
    smp's segmentation heads (PyTorch's default gives ~0.3-0.4 for ResUNet-34's 16 channels).
    """
    nn.init.xavier_uniform_(conv.weight)
    if conv.bias is not None:
        conv.bias.zero_()
