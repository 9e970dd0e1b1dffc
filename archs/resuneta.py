"""ResUNet-a d6 / d7 (Diakogiannis et al. 2020) and its conditioned multitask head.

Blocks (as in the authors' code; defined in :mod:`archs.resuneta_blocks`):

* ``ResBlockA``: ``y = x + sum_d F_d(x)``, parallel branches
  ``F_d = BN -> ReLU -> Conv3x3(dilation d) -> BN -> ReLU -> Conv3x3(dilation d)``.
* ``DownSample``: Conv ``down_kernel_size`` (default 3, pad 1; the paper's table says 1),
  stride 2, doubling the filters.
* ``UpSample``: nearest up-sampling to the skip's size (x2) -> Conv1x1 + BN halving the filters.
* ``Combine(lo, hi)``: ``concat(ReLU(lo), hi) -> Conv1x1 + BN`` to ``hi``'s channels.
* ``PSPPooling``: branch ``k`` max-pools the input over a ``2**k x 2**k`` grid (``k = 0`` is
  global), upsamples back (nearest), Conv1x1 + BN to ``C/4``; the output is Conv1x1 + BN over
  ``concat(x, branches)``. Adaptive grids, so any spatial size works.

Layout (``base_width`` 32): a Conv1x1 + BN first layer, then encoder levels of
32, 64, ..., 1024 filters (d7: ... 2048) with ResBlock-a dilation sets
``{1,3,15,31}, {1,3,15,31}, {1,3,15}, {1,3,15}, {1}, {1}`` (d7: one more ``{1}``),
PSPPooling in the middle (depth 4 for d6, 3 for d7), and a decoder of UpSample -> Combine ->
ResBlock-a per level. The default decoder dilation sets are chosen to reproduce the parameter
counts of the authors' code (d6 ~58 M, d7 ~184 M): the decoder level with ``C`` filters uses
the set of the encoder level with ``C/2`` filters (the one just above it), i.e. ``{1,3,15}`` at
512 and 256, ``{1,3,15,31}`` at 128, 64 and 32 (d7: ``{1}`` at 1024), giving d6 58.5 M and
d7 183.3 M. A same-level mirror of the encoder sets would give 48.8 M for d6 and the paper
table's ``{1}`` everywhere 45.5 M, both far from 58 M. ``decoder_dilations`` overrides it.

Heads: the single-task models end with ``Combine(first layer, last decoder level) ->
PSPPooling -> ReLU -> Conv1x1`` (logits). The ``_mtsk`` models use the conditioned multitask
head (distance -> boundary -> segmentation, independent HSV colour) and return
:class:`archs.MultitaskOutput` of **logits**; inside the head the softmax of the distance and
the sigmoid of the boundary condition the later branches, as in the authors' code.

Sizes: inputs must have sides that are multiples of 32. d6 has output stride 32. d7 has one
more level (stride 64): when a side is an odd multiple of 32 that level has ``ceil(side/64)``
cells and is upsampled back to the stride-32 size, so d7 also accepts any multiple of 32. In
training with batch size 1, BatchNorm needs more than one value per channel at the deepest
level (d7 at 64x64 has a 1x1 bottleneck), so use larger crops or batches there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .layers import SegmentationModel, conv_bn, init_conv_bn_, init_head_
from .options import Option
from .outputs import MultitaskOutput
from .resuneta_blocks import (
    Combine,
    ConditionedMultitaskHead,
    DownSample,
    PSPPooling,
    ResBlockA,
    UpSample,
)

Dilations = Sequence[Sequence[int]]

D6_DILATIONS: tuple[tuple[int, ...], ...] = (
    (1, 3, 15, 31),
    (1, 3, 15, 31),
    (1, 3, 15),
    (1, 3, 15),
    (1,),
    (1,),
)
D7_DILATIONS: tuple[tuple[int, ...], ...] = (*D6_DILATIONS, (1,))


def _options(levels: int) -> dict[str, Option]:
    """The option declarations of the ResUNet-a models with ``levels`` levels."""
    sets = (1, 8)  # parallel branches of one ResBlock-a
    return {
        "base_width": Option(int, 4, 512),
        "dilations": Option(int, 1, 128, lengths=((levels, levels), sets)),
        "decoder_dilations": Option(int, 1, 128, optional=True, lengths=((levels - 1,) * 2, sets)),
        "down_kernel_size": Option(int, 1, 7),
        "psp_depth": Option(int, 1, 6),
    }


D6_OPTIONS = _options(6)
D7_OPTIONS = _options(7)


def default_decoder_dilations(dilations: Dilations) -> tuple[tuple[int, ...], ...]:
    """Return the authors'-code decoder dilation sets for encoder sets ``dilations``.

    The decoder level ``i`` (``0`` = full resolution, up to ``len(dilations) - 2``) uses the
    encoder set of level ``max(i - 1, 0)``.
    """
    return tuple(tuple(dilations[max(i - 1, 0)]) for i in range(len(dilations) - 1))


class ResUNetA(SegmentationModel):
    """ResUNet-a encoder-decoder with a single-task or conditioned multitask head.

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        dilations: Encoder ResBlock-a dilation sets, one per level (the level count is
            ``len(dilations)``: 6 for d6, 7 for d7).
        decoder_dilations: Decoder sets for levels ``0 .. len(dilations) - 2`` (full
            resolution first); default :func:`default_decoder_dilations`.
        base_width: Filters of the first level (doubling per level); a multiple of 4.
        down_kernel_size: Kernel of the stride-2 down-sampling convs.
        psp_depth: Depth of the middle PSPPooling.
        multitask: Use the conditioned multitask head.
    """

    input_extent_matters = True  # PSP pooling: a max over the whole input (docs/archs.md)

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        *,
        dilations: Dilations = D6_DILATIONS,
        decoder_dilations: Dilations | None = None,
        base_width: int = 32,
        down_kernel_size: int = 3,
        psp_depth: int = 4,
        multitask: bool = False,
    ) -> None:
        super().__init__(num_classes, in_channels, size_divisor=32)
        dilations = tuple(tuple(int(d) for d in ds) for ds in dilations)
        levels = len(dilations)
        if levels < 2:
            raise ValueError("ResUNet-a needs at least 2 levels")
        if decoder_dilations is None:
            decoder_dilations = default_decoder_dilations(dilations)
        decoder_dilations = tuple(tuple(int(d) for d in ds) for ds in decoder_dilations)
        if len(decoder_dilations) != levels - 1:
            raise ValueError(
                f"decoder_dilations needs {levels - 1} sets (one per decoder level), "
                f"got {len(decoder_dilations)}"
            )
        if base_width < 4 or base_width % 4 != 0:
            raise ValueError(f"base_width must be a positive multiple of 4, got {base_width}")
        if down_kernel_size < 1:
            raise ValueError(f"down_kernel_size must be positive, got {down_kernel_size}")
        self.multitask = multitask
        self.dilations = dilations
        self.decoder_dilations = decoder_dilations
        widths = [base_width * 2**i for i in range(levels)]

        self.first = conv_bn(in_channels, base_width, 1)
        self.encoder = nn.ModuleList(ResBlockA(widths[i], dilations[i]) for i in range(levels))
        self.downs = nn.ModuleList(
            DownSample(widths[i], widths[i + 1], down_kernel_size) for i in range(levels - 1)
        )
        self.middle = PSPPooling(widths[-1], widths[-1], depth=psp_depth)
        order = list(reversed(range(levels - 1)))  # decoder levels, deepest first
        self.ups = nn.ModuleList(UpSample(widths[i + 1], widths[i]) for i in order)
        self.combines = nn.ModuleList(Combine(widths[i], widths[i]) for i in order)
        self.decoder = nn.ModuleList(ResBlockA(widths[i], decoder_dilations[i]) for i in order)
        if multitask:
            self.head = ConditionedMultitaskHead(2 * base_width, base_width, num_classes)
        else:
            self.head_combine = Combine(base_width, base_width)
            self.head_psp = PSPPooling(base_width, base_width, depth=4)
            self.classifier = nn.Conv2d(base_width, num_classes, 1)
        # He init where a BatchNorm follows (scale-free: only the effective learning rate
        # changes); the residual stream keeps PyTorch's default scale, see docs/archs.md
        for block in (*self.encoder, *self.decoder):
            for branch in block.branches:
                init_conv_bn_(branch[2])  # BN-ReLU-[Conv]-BN-ReLU-Conv: the conv before a BN
        heads = [self.head] if multitask else [self.head_combine, self.head_psp]
        for module in (self.first, self.middle, *self.ups, *self.combines, *heads):
            init_conv_bn_(module)
        for conv in self.logit_convs():
            init_head_(conv)

    def logit_convs(self) -> list[nn.Conv2d]:
        """The convs that output logits (initialised by :func:`archs.layers.init_head_`)."""
        if self.multitask:
            return self.head.logit_convs()
        return [self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor | MultitaskOutput:
        """Return logits ``[B, N, H, W]``, or :class:`MultitaskOutput` for ``multitask``."""
        self.check_input(x)
        first = self.first(x)
        h = first
        skips = []
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = self.downs[i - 1](h)
            h = block(h)
            skips.append(h)
        h = self.middle(h)
        skips.pop()  # the deepest level feeds the middle, it is not a skip
        for up, combine, block in zip(self.ups, self.combines, self.decoder):
            skip = skips.pop()
            h = block(combine(up(h, skip), skip))
        if self.multitask:
            return self.head(first, h)
        h = F.relu(self.head_psp(self.head_combine(first, h)))
        return self.classifier(h)


class _Variant(NamedTuple):
    """One registered ResUNet-a: its depth, head and defaults (the entrypoints are data)."""

    levels: int
    multitask: bool
    psp_depth: int
    summary: str


_VARIANTS = {
    "resuneta_d6": _Variant(6, False, 4, "ResUNet-a d6, single-task (~58.5 M parameters)."),
    "resuneta_d6_mtsk": _Variant(6, True, 4, "ResUNet-a d6 with the conditioned multitask head."),
    "resuneta_d7": _Variant(
        7, False, 3, "ResUNet-a d7, single-task (one more level of 2048 filters; ~183.3 M)."
    ),
    "resuneta_d7_mtsk": _Variant(
        7, True, 3, "ResUNet-a d7 with the conditioned multitask head (the paper's best model)."
    ),
}

_ARGS_DOC = """

    Args:
        num_classes: Number of classes.
        in_channels: Input channels.
        base_width: Filters of the first level (32 in the paper); a multiple of 4.
        dilations: {levels} encoder dilation sets (the authors' code uses ``(1, 3, 5)`` at
            level 4 of d6).
        decoder_dilations: {decoder} decoder sets, full resolution first; default: the
            authors' layout (see the module docstring).
        down_kernel_size: Down-sampling conv kernel (3 in the authors' code, 1 in the paper).
        psp_depth: Depth of the middle PSPPooling (default {psp}).

    Returns:
        The model; ``forward`` returns {returns}.
    """


def _entrypoint(name: str, variant: _Variant) -> Callable[..., ResUNetA]:
    """The entrypoint function of ``variant``, named ``name`` (registered below)."""
    default_dilations = D7_DILATIONS if variant.levels == 7 else D6_DILATIONS

    def build(
        num_classes: int,
        in_channels: int = 3,
        *,
        base_width: int = 32,
        dilations: Dilations = default_dilations,
        decoder_dilations: Dilations | None = None,
        down_kernel_size: int = 3,
        psp_depth: int = variant.psp_depth,
    ) -> ResUNetA:
        if len(dilations) != variant.levels:
            raise ValueError(f"{name} needs {variant.levels} dilation sets, got {len(dilations)}")
        return ResUNetA(
            num_classes,
            in_channels,
            multitask=variant.multitask,
            base_width=base_width,
            dilations=dilations,
            decoder_dilations=decoder_dilations,
            down_kernel_size=down_kernel_size,
            psp_depth=psp_depth,
        )

    returns = (
        ":class:`archs.MultitaskOutput` of logits ``(segmentation, boundary, distance, colour)``"
        if variant.multitask
        else "logits ``[B, N, H, W]``"
    )
    build.__name__ = build.__qualname__ = name
    build.__doc__ = variant.summary + _ARGS_DOC.format(
        levels=variant.levels, decoder=variant.levels - 1, psp=variant.psp_depth, returns=returns
    )
    return build


resuneta_d6 = register_model(D6_OPTIONS)(_entrypoint("resuneta_d6", _VARIANTS["resuneta_d6"]))
resuneta_d6_mtsk = register_model(D6_OPTIONS)(
    _entrypoint("resuneta_d6_mtsk", _VARIANTS["resuneta_d6_mtsk"])
)
resuneta_d7 = register_model(D7_OPTIONS)(_entrypoint("resuneta_d7", _VARIANTS["resuneta_d7"]))
resuneta_d7_mtsk = register_model(D7_OPTIONS)(
    _entrypoint("resuneta_d7_mtsk", _VARIANTS["resuneta_d7_mtsk"])
)
