"""What terraseg models return, and helpers that accept either kind of output.

Every model returns **logits** (pre-activation scores):

* single-task models return one tensor ``[B, N, H, W]``;
* multitask models (``resuneta_*_mtsk``) return :class:`MultitaskOutput`, a NamedTuple
  ``(segmentation, boundary, distance, colour)`` of logits. ``segmentation``, ``boundary``
  and ``distance`` have ``N`` channels (one per class), ``colour`` has 3 (HSV).

Activations are applied by the losses and by inference, never by the model output:
softmax over classes for ``segmentation`` and ``distance``, sigmoid for ``boundary`` and
``colour``. (Inside the conditioned multitask head the activated distance and boundary maps
condition the later branches, as in the ResUNet-a authors' code; only the returned values
are logits.)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class MultitaskOutput(NamedTuple):
    """Logits of the conditioned multitask head of ResUNet-a.

    Attributes:
        segmentation: ``[B, N, H, W]`` class logits (softmax over ``N`` gives probabilities).
        boundary: ``[B, N, H, W]`` per-class boundary logits (sigmoid per channel).
        distance: ``[B, N, H, W]`` distance-transform logits (softmax over ``N``).
        colour: ``[B, 3, H, W]`` HSV reconstruction logits (sigmoid per channel).
    """

    segmentation: torch.Tensor
    boundary: torch.Tensor
    distance: torch.Tensor
    colour: torch.Tensor


def segmentation_logits(output: torch.Tensor | MultitaskOutput) -> torch.Tensor:
    """Return the segmentation logits ``[B, N, H, W]`` of a single- or multitask output.

    Args:
        output: What a terraseg model returned: a tensor or a :class:`MultitaskOutput`
            (also accepted: any object with a tensor attribute ``segmentation``, such as the
            NamedTuple rebuilt by ``torch.export``).

    Returns:
        The segmentation logits tensor.

    Raises:
        TypeError: ``output`` is neither.
    """
    if isinstance(output, torch.Tensor):
        return output
    seg = getattr(output, "segmentation", None)
    if isinstance(seg, torch.Tensor):
        return seg
    raise TypeError(
        f"expected a logits tensor or archs.MultitaskOutput, got {type(output).__name__}"
    )


def unwrap_model(model: nn.Module) -> nn.Module:
    """Return the terraseg model inside ``torch.compile``, DDP/FSDP-style or EMA wrappers.

    Args:
        model: A model, possibly wrapped (``_orig_mod`` or ``module`` attributes).

    Returns:
        The innermost module.
    """
    for _ in range(16):
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner
    return model


def is_multitask(model: nn.Module) -> bool:
    """Tell whether ``model`` returns :class:`MultitaskOutput` (looks through wrappers).

    Args:
        model: A model built by :func:`archs.create_model`, possibly wrapped.

    Returns:
        ``True`` for the ``*_mtsk`` models, ``False`` otherwise.
    """
    return bool(getattr(unwrap_model(model), "multitask", False))
