"""Confusion-matrix segmentation metrics, accumulated on the device.

The matrix is ``[N, N]`` int64 with rows = truth and columns = prediction. Per-class
scores that are undefined (a zero denominator, e.g. a class absent from both truth and
prediction) are NaN; in the JSON form they are written as ``null``. mIoU is the NaN-ignoring
mean of the per-class IoU (classes present in the truth or the prediction). Mean precision,
recall and F1 are scikit-learn's macro averages over the classes present in the truth
(``precision_recall_fscore_support(average="macro", labels=<classes in truth>,
zero_division=0)``): a class that occurs but is never predicted counts as precision 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "metrics_from_confusion"]


class ConfusionMatrix:
    """Accumulates a ``[N, N]`` confusion matrix on the device, without host syncs.

    Args:
        num_classes: Number of classes ``N``.
        ignore_index: Target value excluded from the counts.
        class_names: Optional names, one per class, used by :meth:`compute`.
        device: Device holding the matrix (moved to the inputs' device on first update).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Set every count back to zero."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch of predictions.

        Target pixels equal to ``ignore_index`` or outside ``[0, N)`` are not counted, and
        neither are predictions outside ``[0, N)``.

        Args:
            pred: Predicted class indices ``[B, H, W]`` (any integer dtype).
            target: True class indices ``[B, H, W]`` (any integer dtype).
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        n = self.num_classes
        if self.matrix.device != target.device:
            self.matrix = self.matrix.to(target.device)
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < n)
        valid &= (pred >= 0) & (pred < n)
        # Same counts as torch.bincount(target * n + pred, minlength=n * n) over the valid
        # pixels, but boolean selection and CUDA bincount both read a size back to the host;
        # a scatter-add into a spare bin (n * n) for invalid pixels keeps the update sync-free.
        index = torch.where(valid, target * n + pred, n * n)
        counts = torch.zeros(n * n + 1, dtype=torch.int64, device=target.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        self.matrix += counts[: n * n].view(n, n)

    def all_reduce(
        self, reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> ConfusionMatrix:
        """Sum the matrix across processes, in place; call once, after the last update.

        Args:
            reduce_fn: Optional function returning the cross-process sum of a tensor (for
                example ``lambda t: accelerator.reduce(t, "sum")``). Without it,
                ``torch.distributed.all_reduce`` is used when a process group is
                initialised, and nothing happens otherwise.

        Returns:
            This object, for chaining.
        """
        if reduce_fn is not None:
            self.matrix = reduce_fn(self.matrix).to(torch.int64)
        elif dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegmentationMetrics:
        """Compute every score from the current counts (copies the matrix to the host).

        Returns:
            The metrics; see :class:`SegmentationMetrics`.
        """
        return SegmentationMetrics.from_confusion(self.matrix, self.class_names)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Scores derived from a confusion matrix (rows = truth, columns = prediction).

    Per-class lists hold NaN where a score is undefined: IoU and F1 when the class is
    absent from both truth and prediction, precision when it is never predicted, recall
    when it never occurs in the truth. ``miou`` is the NaN-ignoring mean of ``iou``;
    ``mean_precision``, ``mean_recall`` and ``mean_f1`` are macro averages over the classes
    present in the truth, an undefined precision (never predicted) counting as 0, as
    scikit-learn's ``average="macro", labels=<classes in truth>, zero_division=0``.

    Attributes:
        class_names: One name per class.
        iou: Per-class intersection over union, ``TP / (TP + FP + FN)``.
        precision: Per-class ``TP / (TP + FP)``.
        recall: Per-class ``TP / (TP + FN)``.
        f1: Per-class ``2 TP / (2 TP + FP + FN)``.
        support: Per-class number of true pixels.
        miou: Mean IoU over the classes in truth or prediction.
        mean_f1: Macro F1 over the classes present in the truth.
        mean_precision: Macro precision over the classes present in the truth (0 for one
            never predicted).
        mean_recall: Macro recall over the classes present in the truth.
        overall_accuracy: Fraction of counted pixels predicted correctly.
        kappa: Cohen's kappa.
        total: Number of counted pixels.
    """

    class_names: list[str]
    iou: list[float]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    miou: float
    mean_f1: float
    mean_precision: float
    mean_recall: float
    overall_accuracy: float
    kappa: float
    total: int

    @classmethod
    def from_confusion(
        cls, cm: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None
    ) -> SegmentationMetrics:
        """Compute the scores of a confusion matrix.

        Args:
            cm: ``[N, N]`` counts, rows = truth, columns = prediction.
            class_names: Optional names, one per class (default ``class_<i>``).

        Returns:
            The metrics.
        """
        if isinstance(cm, torch.Tensor):
            cm = cm.detach().cpu().numpy()
        m = np.asarray(cm, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"confusion matrix must be square, got shape {m.shape}")
        n = m.shape[0]
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"{len(names)} class names for {n} classes")

        tp = np.diag(m)
        support = m.sum(axis=1)
        predicted = m.sum(axis=0)
        total = m.sum()
        iou = _divide(tp, support + predicted - tp)
        precision = _divide(tp, predicted)
        recall = _divide(tp, support)
        f1 = _divide(2 * tp, support + predicted)
        present = support > 0

        accuracy = float(tp.sum() / total) if total > 0 else math.nan
        kappa = math.nan
        if total > 0:
            expected = float((support * predicted).sum() / total**2)
            if expected < 1.0:
                kappa = (accuracy - expected) / (1.0 - expected)
        return cls(
            class_names=names,
            iou=iou.tolist(),
            precision=precision.tolist(),
            recall=recall.tolist(),
            f1=f1.tolist(),
            support=[int(s) for s in support],
            miou=_nanmean(iou),
            mean_f1=_mean_in_truth(f1, present),
            mean_precision=_mean_in_truth(precision, present),
            mean_recall=_mean_in_truth(recall, present),
            overall_accuracy=accuracy,
            kappa=kappa,
            total=int(total),
        )

    @property
    def per_class(self) -> list[dict[str, Any]]:
        """One ``{"name", "iou", "precision", "recall", "f1", "support"}`` dict per class."""
        return [
            {"name": name, "iou": iou, "precision": p, "recall": r, "f1": f, "support": s}
            for name, iou, p, r, f, s in zip(
                self.class_names, self.iou, self.precision, self.recall, self.f1, self.support
            )
        ]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict; NaN becomes ``None``.

        Returns:
            ``{"miou", "mean_f1", "mean_precision", "mean_recall", "overall_accuracy",
            "kappa", "total", "per_class": [{"name", "iou", "precision", "recall", "f1",
            "support"}, ...]}``.
        """
        per_class = [
            {k: _json_float(v) if isinstance(v, float) else v for k, v in row.items()}
            for row in self.per_class
        ]
        return {
            "miou": _json_float(self.miou),
            "mean_f1": _json_float(self.mean_f1),
            "mean_precision": _json_float(self.mean_precision),
            "mean_recall": _json_float(self.mean_recall),
            "overall_accuracy": _json_float(self.overall_accuracy),
            "kappa": _json_float(self.kappa),
            "total": self.total,
            "per_class": per_class,
        }


def metrics_from_confusion(
    cm: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Compute segmentation scores from a confusion matrix as a JSON-serialisable dict.

    Args:
        cm: ``[N, N]`` counts, rows = truth, columns = prediction.
        class_names: Optional names, one per class (default ``class_<i>``).

    Returns:
        See :meth:`SegmentationMetrics.to_dict`; undefined scores are ``None``.
    """
    return SegmentationMetrics.from_confusion(cm, class_names).to_dict()


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full_like(num, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _mean_in_truth(values: np.ndarray, present: np.ndarray) -> float:
    """Macro mean over the classes present in the truth; undefined scores count as 0."""
    if not present.any():
        return math.nan
    return float(np.nan_to_num(values[present], nan=0.0).mean())


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def summary_line(metrics: dict[str, Any]) -> str:
    """One line with the headline scores of a :meth:`SegmentationMetrics.to_dict` result."""

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    return (
        f"mIoU {show(metrics['miou'])}  OA {show(metrics['overall_accuracy'])}  "
        f"kappa {show(metrics['kappa'])}  mF1 {show(metrics['mean_f1'])}"
    )
