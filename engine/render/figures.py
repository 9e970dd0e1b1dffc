"""Figures of masks and metrics: legends, prediction panels, mask figures, confusion heatmaps.

Deterministic and headless: figures are drawn with matplotlib's object API on an Agg canvas
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), so the global pyplot backend is never
touched and nothing needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.shards.normalize import Normalization
from engine.data.sources.band_select import BandSpec
from engine.render.colors import (
    ERROR_COLORS,
    IGNORE_INDEX,
    Color,
    RenderError,
    colorize,
    display_rgb,
    error_map,
    hex_to_rgb,
    overlay,
)


@dataclass(frozen=True)
class Display:
    """How a figure draws its image and how large it is.

    Attributes:
        normalization: The data's bands (``Manifest.normalization``) for a native image;
            without it (and without ``band``/``rgb``) the image must be a uint8 ``HxWx3``
            picture.
        band: Show this band (1-based number or name) in grey instead of true colour.
        rgb: Show these three bands (numbers or names) as red, green, blue.
        channels_last: A native image is ``[H, W, C]`` (else ``[C, H, W]``).
        panel_inches: Width of each panel in inches (pixels = inches x dpi); ``None``: the
            figure's own default (4 for :func:`panel`, 6 for :func:`mask_figure`).
        dpi: Resolution.
    """

    normalization: Normalization | None = None
    band: BandSpec | None = None
    rgb: Sequence[BandSpec] | None = None
    channels_last: bool = False
    panel_inches: float | None = None
    dpi: int = 100


def picture(image, display: Display = Display()) -> np.ndarray:
    """The uint8 ``HxWx3`` picture a figure shows for an image.

    Without the display's ``normalization``, ``band`` or ``rgb`` the image must already be
    a picture (uint8 ``HxWx3``) and is shown as it is; otherwise it is a native image drawn
    by :func:`engine.render.colors.display_rgb`.
    """
    normalization, band, rgb = display.normalization, display.band, display.rgb
    if normalization is None and band is None and rgb is None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise RenderError(
                f"image must be a uint8 HxWx3 picture, got {image.dtype} {image.shape}; "
                "pass normalization= (the data's bands) for a native [C, H, W] image"
            )
        return image
    return display_rgb(image, normalization, band, rgb=rgb, channels_last=display.channels_last)


def new_figure(width_in: float, height_in: float, dpi: int):
    """A matplotlib figure on its own Agg canvas (pyplot and its global state untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | Path | None, dpi: int) -> np.ndarray:
    """Draw the figure, optionally save it as PNG, and return its RGB pixels."""
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            figure.savefig(partial, dpi=dpi, format="png")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return pixels


def _fraction_rgb(color: Color) -> tuple[float, float, float]:
    """A colour as matplotlib's ``(r, g, b)`` in 0..1."""
    red, green, blue = hex_to_rgb(color)
    return red / 255.0, green / 255.0, blue / 255.0


def legend_handles(class_names: Sequence[str], palette: Sequence[Color]) -> list:
    """Matplotlib patches, one per class, for ``ax.legend(handles=...)``."""
    from matplotlib.patches import Patch

    if len(class_names) != len(palette):
        raise RenderError(f"{len(class_names)} class names but {len(palette)} colours")
    return [
        Patch(facecolor=_fraction_rgb(c), edgecolor="black", linewidth=0.5, label=n)
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
    figure = new_figure(max(2.5, width), 0.6 + 0.3 * rows, dpi)
    figure.legend(
        handles=legend_handles(class_names, palette), loc="center", title=title, frameon=False
    )
    return save_figure(figure, path, dpi)


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
    display: Display = Display(),
) -> np.ndarray:
    """Draw ``image | truth | prediction | error`` side by side with a class legend.

    The error panel (drawn when both masks are given) shows correct pixels green, wrong
    pixels red and ignored pixels (truth = ``ignore_index``) dark grey; its pixel accuracy
    over scored pixels is in its title. Either mask may be ``None`` to draw fewer panels.

    Args:
        image: A uint8 ``HxWx3`` picture, or with ``display.normalization`` a native
            ``[C, H, W]`` image of any band dtype (drawn by :func:`picture`: ``rgb_bands``
            or ``band`` stretched by the display range, nodata black).
        truth: Class-index ``HxW`` or ``None``.
        prediction: Class-index ``HxW`` or ``None``.
        class_names: Names in class-index order.
        palette: Colours in class-index order.
        path: Where to save the PNG (optional).
        ignore_index: Mask value of unscored pixels.
        title: Figure title.
        display: How the image is drawn and the figure sized (panels 4 inches wide
            unless it says otherwise).

    Returns:
        The rendered figure as uint8 RGB pixels.
    """
    image = picture(image, display)
    views: list[tuple[str, np.ndarray]] = [("Image", image)]
    for name, mask in (("Ground truth", truth), ("Prediction", prediction)):
        if mask is not None:
            if mask.shape != image.shape[:2]:
                raise RenderError(f"{name.lower()} {mask.shape} does not match image {image.shape}")
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
        panel_inches=4.0 if display.panel_inches is None else display.panel_inches,
        dpi=display.dpi,
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
    display: Display = Display(),
) -> np.ndarray:
    """Draw a class-index mask with a legend (and, given the image, an overlay beside it).

    The image and ``display`` mean what they mean for :func:`panel` (panels 6 inches wide
    unless ``display`` says otherwise).

    Returns:
        The rendered figure as uint8 RGB pixels (also saved as PNG when ``path`` is given).
    """
    rendered = colorize(mask, palette, ignore_index, ERROR_COLORS["ignored"])
    views = [("Mask", rendered)]
    if image is not None:
        image = picture(image, display)
        if image.shape != rendered.shape:
            raise RenderError(f"mask {mask.shape} does not match image {image.shape[:2]}")
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
        panel_inches=6.0 if display.panel_inches is None else display.panel_inches,
        dpi=display.dpi,
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
        Patch(facecolor=_fraction_rgb(c), edgecolor="black", linewidth=0.5, label=label)
        for label, c in extra_legend
    ]
    columns = max(1, min(len(handles), int(panel_inches * len(views) / 1.6)))
    legend_inches = 0.35 * math.ceil(len(handles) / columns) + 0.3
    title_inches = 0.8 if title else 0.45
    total = panel_inches * aspect + legend_inches + title_inches
    figure = new_figure(panel_inches * len(views), total, dpi)
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
    return save_figure(figure, path, dpi)


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
        raise RenderError(f"confusion matrix {counts.shape} does not match {n} class names")
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(totals > 0, counts / totals, np.nan)

    size = 2.5 + 0.55 * n
    figure = new_figure(size + 1.5, size, dpi)
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
    for empty in np.flatnonzero(totals[:, 0] == 0):
        ax.text(
            (n - 1) / 2, empty, "no true pixels", ha="center", va="center", fontsize=8, color="gray"
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
    return save_figure(figure, path, dpi)
