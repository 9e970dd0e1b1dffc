"""Plots of a run's ``history.csv``: loss, learning rate, mIoU and per-class IoU over steps.

Rows whose ``split`` ends in ``@best`` (e.g. ``test@best``, written once after training: the
best model evaluated on that split, at ``step`` = the best step) are single results, not a
series: they are drawn as a labelled star, never joined to a line. Per-class IoU curves use
the class colours of the run's ``dataset.json`` (``RUN/best/dataset.json`` or
``RUN/dataset.json`` beside ``history.csv``) when there is one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.jsonfile import read_json
from engine.render.colors import class_info
from engine.render.figures import new_figure, save_figure

BEST_SUFFIX = "@best"


class HistoryError(UserError, FileNotFoundError):
    """A history file is missing or unreadable; the message names it."""


def _read_history(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise HistoryError(f"{path}: cannot read the history ({error})") from error


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


def run_classes(run: str | Path) -> tuple[list[str], list[str]] | None:
    """The class names and colours of a run folder (its ``best/`` or own ``dataset.json``).

    Plots are a courtesy: a missing, oversized or malformed file gives None, never an error.
    """
    for candidate in (Path(run) / "best" / "dataset.json", Path(run) / "dataset.json"):
        if candidate.is_file():
            try:
                manifest = read_json(candidate)
                if isinstance(manifest, dict):
                    return class_info(manifest)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
    return None


def run_palette(history_csv: str | Path) -> dict[str, str]:
    """``{class name: "#RRGGBB"}`` from the run's ``dataset.json``, or ``{}`` without one."""
    names, palette = run_classes(Path(history_csv).parent) or ([], [])
    return dict(zip(names, palette))


def _draw(ax: Any, split: str, xs: list, ys: list, **style: Any) -> Any:
    """A split's series as a line, or a ``@best`` result as a labelled star."""
    if split.endswith(BEST_SUFFIX):
        label = style.pop("label", split)
        handle = ax.scatter(
            xs, ys, marker="*", s=180, zorder=3, edgecolors="black", linewidths=0.6,
            label=label, color=style.get("color"),
        )  # fmt: skip
        for x, y in zip(xs, ys):
            ax.annotate(
                f"{split} {y:.3g}", (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8
            )
        return handle
    (line,) = ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, **style)
    return line


def _base(split: str) -> str:
    return split[: -len(BEST_SUFFIX)] if split.endswith(BEST_SUFFIX) else split


@dataclass
class _Plotter:
    """Draws a history's figures into ``out_dir`` (and ``figures``), listing them in ``written``."""

    rows: list[dict[str, str]]
    x_column: str | None  # None: the row number
    out_dir: Path
    dpi: int
    figures: dict[str, Any] | None
    written: list[Path] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0].keys()) if self.rows else []

    @property
    def x_label(self) -> str:
        return self.x_column or "row"

    def _save(self, figure: Any, name: str) -> None:
        path = self.out_dir / name
        save_figure(figure, path, self.dpi)
        self.written.append(path)
        if self.figures is not None:
            self.figures[name] = figure

    def single(self, column: str, name: str, title: str, ylabel: str, log_if_wide: bool) -> None:
        """One figure of ``column``, a line per split (log scale when ``log_if_wide`` fits)."""
        if column not in self.columns:
            return
        series = _series(self.rows, column, self.x_column)
        if not series:
            return
        figure = new_figure(8, 4.5, self.dpi)
        ax = figure.add_subplot(1, 1, 1)
        for split, (xs, ys) in sorted(series.items()):
            _draw(ax, split, xs, ys, label=split)
        values = np.concatenate([np.asarray(ys) for _, ys in series.values()])
        positive = values[values > 0]
        if log_if_wide and positive.size and positive.max() / positive.min() > 100:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(self.x_label)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(title="split")
        figure.tight_layout()
        self._save(figure, name)

    def _curves(self, prefix: str) -> list[tuple[str, dict]]:
        """``(name after the prefix, series by split)`` of each column with data."""
        curves = []
        for column in (c for c in self.columns if c.startswith(prefix)):
            series = _series(self.rows, column, self.x_column)
            if series:
                curves.append((column[len(prefix) :], series))
        return curves

    def grouped(self, prefix: str, name: str, labels: tuple[str, str, str], colors: dict) -> None:
        """One panel per split with a curve per ``prefix*`` column, one shared legend.

        Args:
            prefix: Column prefix (``iou/``, ``loss/``).
            name: File name.
            labels: ``(title, y-axis label, legend title)``.
            colors: ``{curve name: colour}``; others take matplotlib's cycle.
        """
        title, ylabel, legend = labels
        curves = self._curves(prefix)
        if not curves:
            return
        splits = sorted({_base(s) for _, series in curves for s in series})
        width = 6.5 * len(splits) + 2.5
        figure = new_figure(width, 4.8, self.dpi)
        axes = figure.subplots(1, len(splits), squeeze=False, sharey=True)[0]
        handles: dict[str, Any] = {}
        for ax, split in zip(axes, splits):
            for label, series in curves:
                color = colors.get(label)
                for key in (split, split + BEST_SUFFIX):
                    if key in series:
                        xs, ys = series[key]
                        handle = _draw(ax, key, xs, ys, label=label, color=color)
                        if not key.endswith(BEST_SUFFIX):
                            handles.setdefault(label, handle)
            ax.set_title(f"{title} ({split})")
            ax.set_xlabel(self.x_label)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(ylabel)
        figure.legend(
            list(handles.values()), list(handles), loc="center right", title=legend, fontsize=9
        )
        figure.tight_layout(rect=(0, 0, 1 - 2.3 / width, 1))
        self._save(figure, name)


def plot_history(
    history_csv: str | Path,
    out_dir: str | Path,
    *,
    dpi: int = 100,
    palette: dict[str, str] | None = None,
    figures: dict[str, Any] | None = None,
) -> list[Path]:
    """Plot a run's ``history.csv``: loss, learning rate, mIoU and per-class IoU over steps.

    Reads whichever columns are present: ``step`` (else ``epoch``, else the row number) for
    the x axis, ``split`` to draw one line per split, ``loss``, ``lr``, ``miou`` and every
    ``iou/<class>`` column. Absent or empty columns are skipped; blank cells are ignored.
    ``<split>@best`` rows are drawn as labelled stars (see the module notes).

    Args:
        history_csv: The CSV file.
        out_dir: Folder for ``loss.png``, ``lr.png``, ``miou.png``, ``iou_per_class.png``
            and ``loss_terms.png``.
        dpi: Resolution.
        palette: ``{class name: colour}`` for the per-class IoU; default
            :func:`run_palette` of the CSV's folder.
        figures: When given, receives ``{file name: matplotlib figure}`` (for inspection).

    Returns:
        Paths of the PNGs written (only for columns holding data).

    Raises:
        HistoryError: naming the CSV when it is missing or unreadable (a
            ``FileNotFoundError`` and a :class:`~engine.errors.UserError`).
    """
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        raise HistoryError(f"{history_csv}: history file not found")
    rows = _read_history(history_csv)
    columns = list(rows[0].keys()) if rows else []
    x_column = next((c for c in ("step", "epoch") if c in columns), None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plotter = _Plotter(rows, x_column, out_dir, dpi, figures)
    plotter.single("loss", "loss.png", "Loss", "loss", log_if_wide=True)
    plotter.single("lr", "lr.png", "Learning rate", "learning rate", log_if_wide=True)
    plotter.single("miou", "miou.png", "Mean IoU", "mIoU", log_if_wide=False)
    colors = run_palette(history_csv) if palette is None else dict(palette)
    plotter.grouped("iou/", "iou_per_class.png", ("Per-class IoU", "IoU", "class"), colors)
    plotter.grouped("loss/", "loss_terms.png", ("Loss terms", "loss", "term"), {})
    return plotter.written
