"""Evaluation reports: ``metrics.json``, a Markdown table and a confusion-matrix heatmap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.evaluate.metrics import SegmentationMetrics


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def markdown_table(metrics: dict[str, Any], title: str) -> str:
    """A Markdown report of :meth:`SegmentationMetrics.to_dict` output (scores in %)."""
    lines = [
        f"# {title}",
        "",
        f"mIoU **{_pct(metrics['miou'])}**, overall accuracy {_pct(metrics['overall_accuracy'])}, "
        f"kappa {_pct(metrics['kappa'])}, mean F1 {_pct(metrics['mean_f1'])}, "
        f"mean precision {_pct(metrics.get('mean_precision'))}, "
        f"mean recall {_pct(metrics.get('mean_recall'))} "
        f"({metrics['total']:,} pixels; ignore excluded)",
        "",
        "Means of F1, precision and recall are macro averages over the classes present in the "
        "truth (a class never predicted counts as precision 0).",
        "",
        "| class | IoU | F1 | precision | recall | pixels |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in metrics["per_class"]:
        lines.append(
            f"| {row['name']} | {_pct(row['iou'])} | {_pct(row['f1'])} | {_pct(row['precision'])} "
            f"| {_pct(row['recall'])} | {row['support']:,} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    confusion: np.ndarray,
    class_names: list[str],
    title: str,
    extra: dict | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.md`` and ``confusion.png`` into ``out_dir``.

    Args:
        out_dir: Output folder (created).
        confusion: ``[N, N]`` counts, rows = truth, columns = prediction.
        class_names: ``N`` names.
        title: Report title (e.g. the split and model).
        extra: More keys for ``metrics.json`` (e.g. the split, the model path).

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    from engine.render.figures import confusion_heatmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = (extra or {}) | SegmentationMetrics.from_confusion(confusion, class_names).to_dict()
    metrics["confusion"] = np.asarray(confusion).tolist()
    temporary = out / ".metrics.json.tmp"
    temporary.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(temporary, out / "metrics.json")
    (out / "metrics.md").write_text(markdown_table(metrics, title))
    confusion_heatmap(
        np.asarray(confusion),
        class_names,
        out / "confusion.png",
        title=f"{title}: confusion (row %)",
    )
    return metrics
