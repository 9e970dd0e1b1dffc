"""Pictures of masks and training: palettes, overlays, panels, confusion heatmaps, history.

Everything here is deterministic and headless. Array helpers (:func:`colorize`,
:func:`overlay`, :func:`error_map`) use NumPy only; figures are drawn with matplotlib's
object API on an Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so the
global pyplot backend is never touched and nothing needs a display.

Palettes are sequences of ``"#RRGGBB"`` strings or ``(r, g, b)`` triples, one per class
in class-index order (as in ``dataset.json``'s ``classes[i].color``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = 255

#: Colours of the error map: correct pixel, wrong pixel, ignored pixel (no truth).
ERROR_COLORS = {"correct": (46, 160, 67), "wrong": (214, 39, 40), "ignored": (40, 40, 40)}

Color = str | Sequence[int]


def hex_to_rgb(color: Color) -> tuple[int, int, int]:
    """Convert ``"#RRGGBB"`` (or ``"RRGGBB"``, ``"#RGB"``) or an RGB triple to ints.

    Args:
        color: The colour.

    Returns:
        ``(r, g, b)`` with each value in 0..255.

    Raises:
        ValueError: when the text is not a hex colour or a triple is out of range.
    """
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        if len(text) != 6:
            raise ValueError(f"not a #RRGGBB colour: {color!r}")
        try:
            return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
        except ValueError as error:
            raise ValueError(f"not a #RRGGBB colour: {color!r}") from error
    values = tuple(int(c) for c in color)
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise ValueError(f"not an (r, g, b) colour in 0..255: {color!r}")
    return values  # type: ignore[return-value]


def palette_array(palette: Sequence[Color]) -> np.ndarray:
    """Return the palette as a uint8 ``[N, 3]`` array."""
    return np.array([hex_to_rgb(c) for c in palette], dtype=np.uint8).reshape(-1, 3)


def colorize(
    mask: np.ndarray,
    palette: Sequence[Color],
    ignore_index: int = IGNORE_INDEX,
    ignore_color: Color = (0, 0, 0),
) -> np.ndarray:
    """Render a class-index mask as an RGB image.

    Args:
        mask: Integer ``HxW`` class indices.
        palette: One colour per class.
        ignore_index: Value drawn with ``ignore_color``.
        ignore_color: Colour of ignored pixels.

    Returns:
        uint8 ``HxWx3``.

    Raises:
        ValueError: when the mask holds values that are neither a class nor ``ignore_index``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"colorize expects an HxW mask, got shape {mask.shape}")
    colors = palette_array(palette)
    lut_size = max(256, len(colors), ignore_index + 1)
    lut = np.zeros((lut_size, 3), np.uint8)
    known = np.zeros(lut_size, bool)
    lut[: len(colors)] = colors
    known[: len(colors)] = True
    if 0 <= ignore_index < lut_size:
        lut[ignore_index] = hex_to_rgb(ignore_color)
        known[ignore_index] = True
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        raise ValueError(f"colorize expects integer class indices, got {mask.dtype}")
    if mask.size:
        if mask.min() < 0 or mask.max() >= lut_size:
            bad = (mask < 0) | (mask >= lut_size)
        else:
            bad = ~known[mask]
        if bad.any():
            raise ValueError(
                f"mask values {np.unique(mask[bad])[:10].tolist()} are neither a class "
                f"(0..{len(colors) - 1}) nor ignore_index {ignore_index}"
            )
    return lut[mask]


def overlay(image: np.ndarray, mask_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a rendered mask over an image: ``(1 - alpha) * image + alpha * mask_rgb``.

    Args:
        image: uint8 ``HxWx3``.
        mask_rgb: uint8 ``HxWx3`` (e.g. from :func:`colorize`).
        alpha: Opacity of the mask, 0..1.

    Returns:
        uint8 ``HxWx3``.
    """
    if image.shape != mask_rgb.shape:
        raise ValueError(f"image {image.shape} and mask {mask_rgb.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    blended = image.astype(np.float32) * (1.0 - alpha) + mask_rgb.astype(np.float32) * alpha
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def error_map(
    truth: np.ndarray, prediction: np.ndarray, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Render where a prediction is right, wrong, or unscored (see :data:`ERROR_COLORS`).

    Returns:
        uint8 ``HxWx3``.
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    out = np.empty((*truth.shape, 3), np.uint8)
    out[:] = ERROR_COLORS["wrong"]
    out[truth == prediction] = ERROR_COLORS["correct"]
    out[truth == ignore_index] = ERROR_COLORS["ignored"]
    return out


def _figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path | None, dpi: int) -> np.ndarray:
    """Draw the figure, optionally save it as PNG, and return its RGB pixels."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=dpi, format="png")
    return pixels


def legend_handles(class_names: Sequence[str], palette: Sequence[Color]) -> list:
    """Matplotlib patches, one per class, for ``ax.legend(handles=...)``."""
    from matplotlib.patches import Patch

    if len(class_names) != len(palette):
        raise ValueError(f"{len(class_names)} class names but {len(palette)} colours")
    return [
        Patch(facecolor=np.array(hex_to_rgb(c)) / 255.0, edgecolor="black", linewidth=0.5, label=n)
        for n, c in zip(class_names, palette)
    ]


def legend_image(
    class_names: Sequence[str],
    palette: Sequence[Color],
    path: str | Path | None = None,
    *,
    title: str = "Classes",
    dpi: int = 100,
) -> np.ndarray:
    """Draw a stand-alone legend (colour swatch + class name per row).

    Returns:
        The rendered legend as uint8 RGB pixels (also saved as PNG when ``path`` is given).
    """
    rows = len(class_names)
    width = 0.9 + 0.09 * max((len(n) for n in class_names), default=4)
    figure = _figure(max(2.5, width), 0.6 + 0.3 * rows, dpi)
    figure.legend(
        handles=legend_handles(class_names, palette), loc="center", title=title, frameon=False
    )
    return _save(figure, path, dpi)


def panel(
    image: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray | None,
    class_names: Sequence[str],
    palette: Sequence[Color],
    path: str | Path | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    title: str | None = None,
    panel_inches: float = 4.0,
    dpi: int = 100,
) -> np.ndarray:
    """Draw ``image | truth | prediction | error`` side by side with a class legend.

    The error panel (drawn when both masks are given) shows correct pixels green, wrong
    pixels red and ignored pixels (truth = ``ignore_index``) dark grey; its pixel accuracy
    over scored pixels is in its title. Either mask may be ``None`` to draw fewer panels.

    Args:
        image: uint8 ``HxWx3``.
        truth: Class-index ``HxW`` or ``None``.
        prediction: Class-index ``HxW`` or ``None``.
        class_names: Names in class-index order.
        palette: Colours in class-index order.
        path: Where to save the PNG (optional).
        ignore_index: Mask value of unscored pixels.
        title: Figure title.
        panel_inches: Width of each panel in inches (pixels = inches x dpi).
        dpi: Resolution.

    Returns:
        The rendered figure as uint8 RGB pixels.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    views: list[tuple[str, np.ndarray]] = [("Image", image)]
    for name, mask in (("Ground truth", truth), ("Prediction", prediction)):
        if mask is not None:
            if mask.shape != image.shape[:2]:
                raise ValueError(f"{name.lower()} {mask.shape} does not match image {image.shape}")
            views.append((name, colorize(mask, palette, ignore_index, ERROR_COLORS["ignored"])))
    if truth is not None and prediction is not None:
        scored = truth != ignore_index
        accuracy = float((truth == prediction)[scored].mean()) if scored.any() else math.nan
        views.append(
            (f"Errors (accuracy {accuracy:.1%})", error_map(truth, prediction, ignore_index))
        )

    extra: list[tuple[str, Color]] = []
    if truth is not None and prediction is not None:
        extra += [("correct", ERROR_COLORS["correct"]), ("wrong", ERROR_COLORS["wrong"])]
    if any(m is not None and (m == ignore_index).any() for m in (truth, prediction)) or extra:
        extra.append(("ignored", ERROR_COLORS["ignored"]))
    return _figure_row(
        views,
        class_names,
        palette,
        path,
        title=title,
        extra_legend=extra,
        panel_inches=panel_inches,
        dpi=dpi,
    )


def mask_figure(
    mask: np.ndarray,
    class_names: Sequence[str],
    palette: Sequence[Color],
    path: str | Path | None = None,
    *,
    image: np.ndarray | None = None,
    alpha: float = 0.5,
    ignore_index: int = IGNORE_INDEX,
    title: str | None = None,
    panel_inches: float = 6.0,
    dpi: int = 100,
) -> np.ndarray:
    """Draw a class-index mask with a legend (and, given the image, an overlay beside it).

    Returns:
        The rendered figure as uint8 RGB pixels (also saved as PNG when ``path`` is given).
    """
    rendered = colorize(mask, palette, ignore_index, ERROR_COLORS["ignored"])
    views = [("Mask", rendered)]
    if image is not None:
        views = [
            ("Image", image),
            ("Mask", rendered),
            (f"Overlay (alpha {alpha:g})", overlay(image, rendered, alpha)),
        ]
    extra = [("ignored", ERROR_COLORS["ignored"])] if (mask == ignore_index).any() else []
    return _figure_row(
        views,
        class_names,
        palette,
        path,
        title=title,
        extra_legend=extra,
        panel_inches=panel_inches,
        dpi=dpi,
    )


def _figure_row(
    views: Sequence[tuple[str, np.ndarray]],
    class_names: Sequence[str],
    palette: Sequence[Color],
    path: str | Path | None,
    *,
    title: str | None,
    extra_legend: Sequence[tuple[str, Color]] = (),
    panel_inches: float,
    dpi: int,
) -> np.ndarray:
    """Images side by side, each titled, above one legend of classes (+ extra entries)."""
    from matplotlib.patches import Patch

    height, width = views[0][1].shape[:2]
    aspect = height / max(width, 1)
    handles = legend_handles(class_names, palette) + [
        Patch(
            facecolor=np.array(hex_to_rgb(c)) / 255.0, edgecolor="black", linewidth=0.5, label=label
        )
        for label, c in extra_legend
    ]
    columns = max(1, min(len(handles), int(panel_inches * len(views) / 1.6)))
    legend_inches = 0.35 * math.ceil(len(handles) / columns) + 0.3
    title_inches = 0.8 if title else 0.45
    total = panel_inches * aspect + legend_inches + title_inches
    figure = _figure(panel_inches * len(views), total, dpi)
    axes = figure.subplots(1, len(views), squeeze=False)[0]
    figure.subplots_adjust(
        left=0.01,
        right=0.99,
        bottom=legend_inches / total,
        top=1 - title_inches / total,
        wspace=0.04,
    )
    for ax, (name, pixels) in zip(axes, views):
        ax.imshow(pixels, interpolation="nearest")
        ax.set_title(name, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    if title:
        figure.suptitle(title, fontsize=12)
    return _save(figure, path, dpi)


def confusion_heatmap(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | Path | None = None,
    *,
    title: str = "Confusion matrix (row-normalised)",
    dpi: int = 100,
) -> np.ndarray:
    """Draw a confusion matrix normalised by row (each true class sums to 100 %).

    Rows are true classes, columns predicted classes. Cells are annotated with the row
    percentage when there are at most 20 classes; rows without any true pixel are blank
    and say so.

    Args:
        cm: ``[N, N]`` counts (rows = truth, columns = prediction), NumPy or torch.
        class_names: ``N`` names.
        path: Where to save the PNG (optional).
        title: Figure title.
        dpi: Resolution.

    Returns:
        The rendered figure as uint8 RGB pixels.
    """
    if hasattr(cm, "detach"):
        cm = cm.detach().cpu().numpy()
    counts = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix {counts.shape} does not match {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(totals > 0, counts / totals, np.nan)

    size = 2.5 + 0.55 * n
    figure = _figure(size + 1.5, size, dpi)
    ax = figure.add_subplot(1, 1, 1)
    shown = np.ma.masked_invalid(normalised)
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class's pixels")
    ax.set_xticks(
        range(n), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor"
    )
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    for i in np.flatnonzero(totals[:, 0] == 0):
        ax.text(
            (n - 1) / 2, i, "no true pixels", ha="center", va="center", fontsize=8, color="gray"
        )
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = normalised[i, j]
                if np.isfinite(value):
                    ax.text(
                        j,
                        i,
                        f"{100 * value:.1f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > 0.5 else "black",
                    )
    figure.tight_layout()
    return _save(figure, path, dpi)


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
        figure = _figure(8, 4.5, dpi)
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
        _save(figure, path, dpi)
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
        figure = _figure(width, 4.8, dpi)
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
        _save(figure, path, dpi)
        written.append(path)

    grouped("iou/", "iou_per_class.png", "Per-class IoU", "IoU", "class")
    grouped("loss/", "loss_terms.png", "Loss terms", "loss", "term")
    return written


def class_info(manifest: dict | None = None, classes: Any = None) -> tuple[list[str], list[str]]:
    """Class names and palette from a ``dataset.json`` mapping or a parsed classes file.

    Args:
        manifest: ``dataset.json`` contents (``classes: [{name, color}]``).
        classes: An :class:`engine.classes.ClassesFile`.

    Returns:
        ``(names, palette)`` in class-index order.
    """
    if manifest is not None:
        entries = manifest.get("classes")
        if not entries:
            raise ValueError("manifest has no 'classes' entry")
        names = [e["name"] if isinstance(e, dict) else str(e) for e in entries]
        palette = [e.get("color") if isinstance(e, dict) else None for e in entries]
        if any(c is None for c in palette):
            palette = list(manifest.get("palette") or [])
        if len(palette) != len(names):
            raise ValueError("manifest classes lack colours")
        return names, [f"#{''.join(f'{v:02X}' for v in hex_to_rgb(c))}" for c in palette]
    if classes is not None:
        return list(classes.names), [spec.color for spec in classes.classes]
    raise ValueError("need a manifest or a classes file for class names and colours")
