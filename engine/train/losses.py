"""Segmentation losses. Every loss takes **logits** and applies its own activation.

Single-task losses are called as ``loss(logits [B, N, H, W], target [B, H, W] int)``;
:class:`MultitaskLoss` as ``loss(outputs, targets)`` with the four multitask heads.
Pixels whose target is ``ignore_index`` contribute nothing to any loss.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "MultitaskLoss",
    "TanimotoLoss",
    "tanimoto_with_complement",
]


def _one_hot(
    target: torch.Tensor, num_classes: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the one-hot ``[B, N, H, W]`` (0 where ignored) and valid mask ``[B, 1, H, W]``."""
    target = target.long()
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    classes = torch.arange(num_classes, device=target.device).view(1, -1, 1, 1)
    one_hot = (target.unsqueeze(1) == classes) & valid.unsqueeze(1)
    return one_hot.float(), valid.unsqueeze(1).float()


def _tanimoto(p: torch.Tensor, l: torch.Tensor, eps: float) -> torch.Tensor:  # noqa: E741
    """Weighted Tanimoto coefficient per sample, ``[B]``; ``p``, ``l`` are ``[B, C, H, W]``."""
    volume = l.sum(dim=(2, 3)).mean(dim=0)  # V_j: batch mean of sum_i l_ij
    weights = volume.pow(-2)
    finite = torch.isfinite(weights)
    largest = torch.where(finite, weights, 0.0).amax()
    weights = torch.where(finite, weights, largest)
    intersection = (p * l).sum(dim=(2, 3))
    denominator = (p * p + l * l - p * l).sum(dim=(2, 3))
    return ((weights * intersection).sum(1) + eps) / ((weights * denominator).sum(1) + eps)


def tanimoto_with_complement(
    probs: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Tanimoto loss with complement (ResUNet-a), averaged over the batch.

    Per sample, ``T(p, l) = (sum_j w_j sum_i p_ij l_ij + eps) / (sum_j w_j sum_i
    (p_ij^2 + l_ij^2 - p_ij l_ij) + eps)`` with ``w_j = V_j^-2``, ``V_j`` the batch mean of
    ``sum_i l_ij`` (an infinite ``w_j``, for a class absent from the batch, becomes the
    largest finite one; all of them 0 when none is finite). The loss is
    ``1 - (T(p, l) + T(1 - p, 1 - l)) / 2``; each ``T`` derives its weights from its own
    labels. Invalid pixels are zeroed in both arguments of both terms (after taking the
    complement), so they contribute nothing.

    Args:
        probs: Activated predictions ``[B, C, H, W]`` in [0, 1].
        labels: Targets ``[B, C, H, W]`` in [0, 1] (one-hot or soft).
        valid: Optional mask ``[B, 1, H, W]`` (or broadcastable), 1 where pixels count.
        eps: Smoothing constant.

    Returns:
        Scalar loss.
    """
    p = probs.float()
    l = labels.float()  # noqa: E741
    p_dual, l_dual = 1.0 - p, 1.0 - l
    if valid is not None:
        valid = valid.float()
        p, l, p_dual, l_dual = p * valid, l * valid, p_dual * valid, l_dual * valid  # noqa: E741
    coefficient = 0.5 * (_tanimoto(p, l, eps) + _tanimoto(p_dual, l_dual, eps))
    return (1.0 - coefficient).mean()


class _SoftmaxOverlapLoss(nn.Module):
    """An overlap loss of softmax probabilities against one-hot targets, ignore-aware.

    Subclasses give :meth:`overlap_loss` of ``(probs, labels, valid)``, each ``[B, N, H, W]``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def overlap_loss(
        self, probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """The scalar loss of float32 probabilities against one-hot labels."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` ``[B, N, H, W]`` against class indices ``[B, H, W]``."""
        labels, valid = _one_hot(target, self.num_classes, self.ignore_index)
        return self.overlap_loss(logits.float().softmax(dim=1), labels, valid)


class TanimotoLoss(_SoftmaxOverlapLoss):
    """Tanimoto loss with complement on softmax probabilities against one-hot targets.

    Args:
        num_classes: Number of classes ``N``.
        ignore_index: Target value of ignored pixels.
        eps: Smoothing constant.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, eps: float = 1e-5) -> None:
        super().__init__(num_classes, ignore_index)
        self.eps = eps

    def overlap_loss(
        self, probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """``1 - mean`` Tanimoto coefficient with complement."""
        return tanimoto_with_complement(probs, labels, valid, self.eps)


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, optionally class-weighted and label-smoothed.

    Equals ``torch.nn.functional.cross_entropy(..., reduction="mean")`` (weighted mean
    over valid pixels), except that a batch with no valid pixel gives 0, not NaN.

    Args:
        weight: Optional per-class weights ``[N]``.
        ignore_index: Target value of ignored pixels.
        label_smoothing: Label smoothing amount in [0, 1).
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        weight: torch.Tensor | Sequence[float] | None = None,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` ``[B, N, H, W]`` against class indices ``[B, H, W]``."""
        target = target.long()
        per_pixel = F.cross_entropy(
            logits.float(),
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        valid = target != self.ignore_index
        if self.weight is None:
            total = valid.sum()
        else:
            safe = torch.where(valid, target, 0)
            total = (self.weight[safe] * valid).sum()
        return per_pixel.sum() / total.clamp(min=1e-12)


class DiceLoss(_SoftmaxOverlapLoss):
    """Soft Dice loss on softmax probabilities, ignore-aware.

    Per class over the whole batch, ``dice_c = (2 sum p l + smooth) / (sum p + sum l +
    smooth)``; the loss is ``1 - mean_c dice_c``. Ignored pixels are zeroed in ``p`` and ``l``.

    Args:
        num_classes: Number of classes ``N``.
        ignore_index: Target value of ignored pixels.
        smooth: Additive smoothing.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__(num_classes, ignore_index)
        self.smooth = smooth

    def overlap_loss(
        self, probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """``1 - mean`` soft Dice over the classes."""
        probs = probs * valid
        intersection = (probs * labels).sum(dim=(0, 2, 3))
        cardinality = probs.sum(dim=(0, 2, 3)) + labels.sum(dim=(0, 2, 3))
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1.0 - dice.mean()


class CombinedLoss(nn.Module):
    """Weighted sum of single-task losses that share the ``(logits, target)`` signature.

    Args:
        terms: ``name -> (weight, loss module)``.
    """

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one term")
        self.weights = {name: float(weight) for name, (weight, _) in terms.items()}
        self.losses = nn.ModuleDict({name: module for name, (_, module) in terms.items()})

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute every unweighted term, by name (for logging).

        Args:
            logits: ``[B, N, H, W]``.
            target: Class indices ``[B, H, W]``.

        Returns:
            ``name -> scalar loss``.
        """
        return {name: loss(logits, target) for name, loss in self.losses.items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the terms for ``logits`` [B, N, H, W] and ``target`` [B, H, W]."""
        return self.combine(self.terms(logits, target))

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the terms returned by :meth:`terms`."""
        weighted = [self.weights[name] * value for name, value in terms.items()]
        return functools.reduce(operator.add, weighted)


class MultitaskLoss(nn.Module):
    """Equal-weight mean of the Tanimoto-with-complement losses of the four multitask heads.

    Activations: softmax for segmentation and distance, sigmoid for boundary and colour.
    Pixels whose segmentation target is ``ignore_index`` are masked out of every head.

    Args:
        num_classes: Number of classes ``N``.
        ignore_index: Segmentation target value of ignored pixels.
        eps: Tanimoto smoothing constant.
    """

    heads = ("segmentation", "boundary", "distance", "colour")

    def __init__(self, num_classes: int, ignore_index: int = 255, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.eps = eps

    def terms(self, outputs: Any, targets: Any) -> dict[str, torch.Tensor]:
        """Compute the loss of each head (for logging).

        Args:
            outputs: Logits with attributes ``segmentation``, ``boundary``, ``distance``
                (``[B, N, H, W]``) and ``colour`` (``[B, 3, H, W]``), e.g.
                ``archs.MultitaskOutput``.
            targets: ``engine.train.targets.MultitaskTargets`` or a dict with the same keys:
                int segmentation ``[B, H, W]`` and float boundary, distance, colour.

        Returns:
            ``head -> scalar loss``.
        """
        if isinstance(targets, Mapping):
            seg, boundary, distance, colour = (targets[h] for h in self.heads)
        else:
            seg, boundary, distance, colour = (getattr(targets, h) for h in self.heads)
        labels, valid = _one_hot(seg, self.num_classes, self.ignore_index)
        eps = self.eps
        return {
            "segmentation": tanimoto_with_complement(
                outputs.segmentation.float().softmax(dim=1), labels, valid, eps
            ),
            "boundary": tanimoto_with_complement(
                outputs.boundary.float().sigmoid(), boundary, valid, eps
            ),
            "distance": tanimoto_with_complement(
                outputs.distance.float().softmax(dim=1), distance, valid, eps
            ),
            "colour": tanimoto_with_complement(
                outputs.colour.float().sigmoid(), colour, valid, eps
            ),
        }

    def forward(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Compute the mean of the four head losses.

        Args:
            outputs: See :meth:`terms`.
            targets: See :meth:`terms`.

        Returns:
            Scalar loss.
        """
        return self.combine(self.terms(outputs, targets))

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Equal-weight mean of the head losses returned by :meth:`terms`."""
        return torch.stack(list(terms.values())).mean()
