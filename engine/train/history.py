"""The run's history: one CSV row per log interval and per evaluation."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

BASE_COLUMNS = [
    "step", "epoch", "split", "time_s", "lr", "loss", "grad_norm", "images_per_s",
    "data_wait", "peak_mem_mb", "miou", "mean_f1", "overall_accuracy", "kappa",
]  # fmt: skip


def history_columns(loss_terms: list[str], class_names: list[str]) -> list[str]:
    """The history's columns: base, one per loss term, IoU and F1 per class."""
    return (
        BASE_COLUMNS
        + [f"loss/{t}" for t in loss_terms]
        + [f"iou/{c}" for c in class_names]
        + [f"f1/{c}" for c in class_names]
    )


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


class History:
    """Appends rows to ``history.csv``; on resume, drops rows past the resumed step.

    Args:
        path: The CSV file.
        columns: Column names (see :func:`history_columns`).
        resume_step: When resuming, the checkpoint's step: rows with a larger step (written
            after that checkpoint, before the interruption) are removed so that no step
            appears twice, and so is a final best-model row (split ``<split>@best``): the
            resumed run writes its own at its end.
        enabled: Write at all (only the main process writes).
    """

    def __init__(
        self, path: str | Path, columns: list[str], resume_step: int | None, enabled: bool
    ):
        self.path, self.columns, self.enabled = Path(path), columns, enabled
        if not enabled:
            return
        kept: list[dict] = []
        if resume_step is not None and self.path.exists():
            with self.path.open(newline="") as handle:
                kept = [
                    r
                    for r in csv.DictReader(handle)
                    if int(r["step"]) <= resume_step and not r["split"].endswith("@best")
                ]
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        os.replace(temporary, self.path)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (unknown keys are an error, missing ones stay empty)."""
        if not self.enabled:
            return
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"history has no columns {sorted(unknown)}")
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow({k: _cell(v) for k, v in row.items()})
