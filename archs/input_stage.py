"""A fixed per-channel affine input stage: the scaling pretrained weights expect, in the model.

terraseg feeds every network standardised bands, ``z = (x - mean_d) / std_d`` with the
dataset's statistics (nodata → 0). Weights pretrained elsewhere expect their own scaling of
native values, ``(x - offset) / divisor`` (a weight card's). :class:`InputAffine` turns one
into the other per channel, ``z * scale + shift``, with

    scale = std_d / divisor,   shift = (mean_d - offset) / divisor

for bands matched to a card band (since ``x = z * std_d + mean_d``), and ``scale = 1``,
``shift = 0`` (``z`` unchanged) for bands the weights lack. Both are buffers: they are
saved in the state dict, so an export, prediction and an ONNX graph apply them too, and a
model rebuilt from ``model.json`` (the ``input_card`` option) gets them from its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class InputAffine(nn.Module):
    """``x * scale + shift`` per input channel; ``scale``/``shift`` are fixed buffers.

    Args:
        channels: Number of input channels (starts as the identity).
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the affine map to ``[B, C, H, W]``."""
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)

    @torch.no_grad()
    def set_(self, scale: Sequence[float], shift: Sequence[float]) -> None:
        """Set the per-channel values (one per channel each)."""
        count = self.scale.numel()
        if len(scale) != count or len(shift) != count:
            raise ValueError(f"the input stage needs {count} scales and shifts")
        self.scale.copy_(torch.tensor(list(scale), dtype=self.scale.dtype))
        self.shift.copy_(torch.tensor(list(shift), dtype=self.shift.dtype))


def card_affine(
    offset: Sequence[float],
    divisor: Sequence[float],
    source: Sequence[int | None],
    means: Sequence[float],
    stds: Sequence[float],
) -> tuple[list[float], list[float]]:
    """``(scale, shift)`` per dataset band (see the module docs).

    Args:
        offset: The card's per-band offsets (card band order).
        divisor: The card's per-band divisors.
        source: Per dataset band, the index of its card band, or None.
        means: The dataset bands' means, native units.
        stds: Their standard deviations (floored at 1e-12 as the standardisation does).

    Returns:
        Two lists with one value per dataset band.
    """
    scale, shift = [], []
    for index, mean, std in zip(source, means, stds, strict=True):
        if index is None:
            scale.append(1.0)
            shift.append(0.0)
            continue
        std = max(float(std), 1e-12)
        scale.append(std / divisor[index])
        shift.append((float(mean) - offset[index]) / divisor[index])
    return scale, shift
