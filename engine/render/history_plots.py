"""Plots of a run's ``history.csv``: loss, learning rate, mIoU and per-class IoU over steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from engine.render.figures import new_figure, save_figure


def _read_history(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return math.nan
    return value


def _series(rows: list[dict[str, Any]], column: str, x_column: str | None) -> dict[str, tuple]:
    """Split one column into ``{split: (x, y)}`` series, dropping blank cells."""
    by_split: dict[str, tuple[list[float], list[float]]] = {}
    for number, row in enumerate(rows):
        y = _number(row.get(column))
        if not math.isfinite(y):
            continue
        x = _number(row.get(x_column)) if x_column else float(number)
        if not math.isfinite(x):
            x = float(number)
        split = (row.get("split") or "").strip() or "all"
        xs, ys = by_split.setdefault(split, ([], []))
        xs.append(x)
        ys.append(y)
    return {k: v for k, v in by_split.items() if v[0]}


def plot_history(history_csv: str | Path, out_dir: str | Path, *, dpi: int = 100) -> list[Path]:
    """Plot a run's ``history.csv``: loss, learning rate, mIoU and per-class IoU over steps.

    Reads whichever columns are present: ``step`` (else ``epoch``, else the row number) for
    the x axis, ``split`` to draw one line per split, ``loss``, ``lr``, ``miou`` and every
    ``iou/<class>`` column. Absent or empty columns are skipped; blank cells are ignored.

    Args:
        history_csv: The CSV file.
        out_dir: Folder for ``loss.png``, ``lr.png``, ``miou.png``, ``iou_per_class.png``
            and ``loss_terms.png``.
        dpi: Resolution.

    Returns:
        Paths of the PNGs written (only for columns holding data).

    Raises:
        FileNotFoundError: naming the CSV when it is missing.
    """
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise FileNotFoundError(f"{history_csv}: history file not found")
    rows = _read_history(history_csv)
    columns = list(rows[0].keys()) if rows else []
    x_column = next((c for c in ("step", "epoch") if c in columns), None)
    x_label = x_column or "row"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def single(column: str, name: str, title: str, ylabel: str, log_if_wide: bool) -> None:
        if column not in columns:
            return
        series = _series(rows, column, x_column)
        if not series:
            return
        figure = new_figure(8, 4.5, dpi)
        ax = figure.add_subplot(1, 1, 1)
        for split, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, label=split, marker="o" if len(xs) < 30 else None, markersize=3)
        values = np.concatenate([np.asarray(ys) for _, ys in series.values()])
        positive = values[values > 0]
        if log_if_wide and positive.size and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(title="split")
        figure.tight_layout()
        path = out_dir / name
        save_figure(figure, path, dpi)
        written.append(path)

    single("loss", "loss.png", "Loss", "loss", log_if_wide=True)
    single("lr", "lr.png", "Learning rate", "learning rate", log_if_wide=True)
    single("miou", "miou.png", "Mean IoU", "mIoU", log_if_wide=False)

    def grouped(prefix: str, name: str, title: str, ylabel: str, legend: str) -> None:
        curves = []
        for column in (c for c in columns if c.startswith(prefix)):
            series = _series(rows, column, x_column)
            if series:
                curves.append((column[len(prefix) :], series))
        if not curves:
            return
        splits = sorted({s for _, series in curves for s in series})
        width = 6.5 * len(splits) + 2.5
        figure = new_figure(width, 4.8, dpi)
        axes = figure.subplots(1, len(splits), squeeze=False, sharey=True)[0]
        handles: dict[str, Any] = {}
        for ax, split in zip(axes, splits):
            for label, series in curves:
                if split in series:
                    xs, ys = series[split]
                    (line,) = ax.plot(
                        xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3
                    )
                    handles.setdefault(label, line)
            ax.set_title(f"{title} ({split})")
            ax.set_xlabel(x_label)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(ylabel)
        figure.legend(
            list(handles.values()), list(handles), loc="center right", title=legend, fontsize=9
        )
        figure.tight_layout(rect=(0, 0, 1 - 2.3 / width, 1))
        path = out_dir / name
        save_figure(figure, path, dpi)
        written.append(path)

    grouped("iou/", "iou_per_class.png", "Per-class IoU", "IoU", "class")
    grouped("loss/", "loss_terms.png", "Loss terms", "loss", "term")
    return written
