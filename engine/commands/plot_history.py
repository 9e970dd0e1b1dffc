"""Plot a run's training history (loss, learning rate, mIoU, per-class IoU).

Reads RUN/history.csv and writes PNGs into RUN (or --out): the same place and names as the
trainer's plots, so running it again refreshes them. Per-class IoU uses the class colours of
RUN/best/dataset.json; the final best-model row (split "<split>@best") is a labelled star.
When RUN/metrics.json holds a confusion matrix (``confusion_matrix`` at the top level or
under a split name) it is drawn as a row-normalised heatmap too.

Example:
    python launch/plot_history.py runs/dubai
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from engine.cli import HelpFormatter
from engine.errors import UserError
from engine.jsonfile import read_json
from engine.render.figures import confusion_heatmap
from engine.render.history_plots import plot_history, run_classes


def find_confusions(metrics: dict) -> dict[str, list]:
    """``{name: matrix}`` for every confusion matrix found in a metrics.json mapping."""
    found: dict[str, list] = {}
    for key in ("confusion_matrix", "confusion"):
        if isinstance(metrics.get(key), list):
            found["metrics"] = metrics[key]
    for split, value in metrics.items():
        if isinstance(value, dict):
            for key in ("confusion_matrix", "confusion"):
                if isinstance(value.get(key), list):
                    found[split] = value[key]
    return found


def class_names(run: Path, metrics: dict, size: int) -> list[str]:
    """The run's class names (from its dataset.json), else ``class 0`` … for ``size`` classes."""
    names, _ = run_classes(run) or ([], [])
    if len(names) == size:
        return names
    rows = metrics.get("per_class")
    if isinstance(rows, list):
        given = [row.get("name") for row in rows if isinstance(row, dict)]
        names = [name for name in given if isinstance(name, str) and name]
        if len(names) == len(given) == size:
            return names
    return [f"class {i}" for i in range(size)]


def square_counts(matrix: list) -> np.ndarray | None:
    """A confusion matrix from metrics.json as ``[N, N]`` float counts, or None if it is not."""
    if not matrix or any(not isinstance(r, list) or len(r) != len(matrix) for r in matrix):
        return None
    try:
        counts = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):  # an entry that is not a number
        return None
    return counts if np.isfinite(counts).all() else None


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("run", help="run folder holding history.csv (or the CSV itself)")
    parser.add_argument("--out", help="output folder (default: the run folder)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    history = run / "history.csv"
    if run.is_file():
        run, history = run.parent, run
    out = Path(args.out) if args.out else run
    if out.exists() and not out.is_dir():
        print(f"error: --out {out}: is a file, not a folder", file=sys.stderr)
        return 2
    try:
        written = plot_history(history, out)
    except (UserError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics_path = run / "metrics.json"
    if metrics_path.is_file():
        written += plot_confusions(metrics_path, run, out)
    if not written:
        print(f"nothing to plot in {run / 'history.csv'}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def plot_confusions(metrics_path: Path, run: Path, out: Path) -> list[Path]:
    """Heatmaps of the confusion matrices in ``metrics_path`` (warnings for unusable ones)."""
    try:
        metrics = read_json(metrics_path)
    except (OSError, UserError) as error:
        print(f"warning: {error}; no heatmap", file=sys.stderr)
        return []
    if not isinstance(metrics, dict):
        print(f"warning: {metrics_path}: not a JSON object; no heatmap", file=sys.stderr)
        return []
    written = []
    for name, matrix in find_confusions(metrics).items():
        counts = square_counts(matrix)
        if counts is None:
            print(
                f"warning: {metrics_path}: {name} matrix is not square (finite numbers)",
                file=sys.stderr,
            )
            continue
        path = out / f"confusion_{name}.png"
        names = class_names(run, metrics, len(counts))
        confusion_heatmap(counts, names, path, title=f"Confusion matrix ({name}, row-normalised)")
        written.append(path)
    return written
