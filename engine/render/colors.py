"""Colours of masks: palettes, colourised masks, overlays, error maps, class names and colours.

NumPy only. Palettes are sequences of ``"#RRGGBB"`` strings or ``(r, g, b)`` triples, one per
class in class-index order (as in ``dataset.json``'s ``classes[i].color``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.data.classes import parse_color
from engine.errors import UserError

IGNORE_INDEX = 255


class RenderError(UserError):
    """Inputs that cannot be drawn: a bad colour, mismatched shapes, values that are no class."""


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
        RenderError: when the text is not a hex colour or a triple is out of range.
    """
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        try:
            return parse_color(text)
        except ValueError as error:
            raise RenderError(f"not a #RRGGBB colour: {color!r}") from error
    values = tuple(int(c) for c in color)
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise RenderError(f"not an (r, g, b) colour in 0..255: {color!r}")
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
        RenderError: when the mask holds values that are neither a class nor ``ignore_index``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RenderError(f"colorize expects an HxW mask, got shape {mask.shape}")
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
        raise RenderError(f"colorize expects integer class indices, got {mask.dtype}")
    if mask.size:
        if mask.min() < 0 or mask.max() >= lut_size:
            bad = (mask < 0) | (mask >= lut_size)
        else:
            bad = ~known[mask]
        if bad.any():
            raise RenderError(
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
        raise RenderError(f"image {image.shape} and mask {mask_rgb.shape} differ in shape")
    if not 0.0 <= alpha <= 1.0:
        raise RenderError(f"alpha must be in [0, 1], got {alpha}")
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
        raise RenderError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    out = np.empty((*truth.shape, 3), np.uint8)
    out[:] = ERROR_COLORS["wrong"]
    out[truth == prediction] = ERROR_COLORS["correct"]
    out[truth == ignore_index] = ERROR_COLORS["ignored"]
    return out


def class_info(manifest: dict | None = None, classes: Any = None) -> tuple[list[str], list[str]]:
    """Class names and palette from a ``dataset.json`` mapping or a parsed classes file.

    Args:
        manifest: ``dataset.json`` contents (``classes: [{name, color}]``).
        classes: An :class:`engine.data.classes.ClassesFile`.

    Returns:
        ``(names, palette)`` in class-index order.
    """
    if manifest is not None:
        entries = manifest.get("classes")
        if not entries:
            raise RenderError("manifest has no 'classes' entry")
        names = [e["name"] if isinstance(e, dict) else str(e) for e in entries]
        palette = [e.get("color") if isinstance(e, dict) else None for e in entries]
        if any(c is None for c in palette):
            palette = list(manifest.get("palette") or [])
        if len(palette) != len(names):
            raise RenderError("manifest classes lack colours")
        return names, [f"#{''.join(f'{v:02X}' for v in hex_to_rgb(c))}" for c in palette]
    if classes is not None:
        return list(classes.names), [spec.color for spec in classes.classes]
    raise RenderError("need a manifest or a classes file for class names and colours")
