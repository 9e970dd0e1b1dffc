"""Normalisation of a uint8 batch with the manifest's statistics: the model's input contract."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Scale images to [0, 1] and standardise them per channel (evaluation path).

    Args:
        images: ``[B, 3, H, W]``, uint8 (divided by 255) or float already in [0, 1].
        mean: Per-channel mean on the 0-1 scale.
        std: Per-channel standard deviation on the 0-1 scale.

    Returns:
        float32 ``[B, 3, H, W]``, ``(images / 255 - mean) / std``.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean_t = torch.as_tensor(mean, dtype=torch.float32).to(x.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).to(x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
