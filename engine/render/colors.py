"""Colours: palettes, colourised masks, overlays, error maps, class names, pictures of images.

NumPy only. :func:`display_rgb` is the one way a native multi-band image (any band dtype)
becomes a picture: true colour from ``rgb_bands``, or one band in grey, stretched per band
from the manifest's display range, nodata black. Palettes are sequences of ``"#RRGGBB"``
strings or ``(r, g, b)`` triples, one per class in class-index order (as in
``dataset.json``'s ``classes[i].color``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.data.shards.normalize import BandStats, Normalization
from engine.data.sources.band_select import BandSpec, band_positions
from engine.data.sources.classes import parse_color
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
    return values


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
        classes: An :class:`engine.data.sources.classes.ClassesFile`.

    Returns:
        ``(names, palette)`` in class-index order.
    """
    if manifest is not None:
        entries = manifest.get("classes")
        if not entries:
            raise RenderError("manifest has no 'classes' entry")
        names = [e["name"] if isinstance(e, dict) else str(e) for e in entries]
        palette: list[Color] = [
            e["color"] for e in entries if isinstance(e, dict) and e.get("color") is not None
        ]
        if len(palette) != len(entries):  # some class has no colour: use the palette list
            palette = list(manifest.get("palette") or [])
        if len(palette) != len(names):
            raise RenderError("manifest classes lack colours")
        return names, [f"#{''.join(f'{v:02X}' for v in hex_to_rgb(c))}" for c in palette]
    if classes is not None:
        return list(classes.names), [spec.color for spec in classes.classes]
    raise RenderError("need a manifest or a classes file for class names and colours")


# --- Pictures of input images -------------------------------------------------------------

#: Colour of image pixels that are nodata in any band (or NaN) in :func:`display_rgb`.
NODATA_COLOR = (0, 0, 0)


def _as_numpy(image: Any) -> np.ndarray:
    """A NumPy view of an array or a (CPU or device) torch tensor."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    return np.asarray(image)


def image_normalization(
    image: Any, nodata: float | None = None, names: Sequence[str] | None = None
) -> Normalization:
    """Display statistics of one native ``[C, H, W]`` image, for data without a manifest.

    uint8 bands keep the full ``(0, 255)`` range (a 3-band uint8 image is drawn as it is);
    other bands get their 2nd and 98th percentiles over valid pixels (not ``nodata``, not
    NaN; at most about a million pixels sampled on a regular grid). Three bands are taken
    as red, green, blue; any other count has no ``rgb_bands`` (the first band is drawn grey).

    Args:
        image: Native ``[C, H, W]`` array or tensor.
        nodata: The image's no-data value (``nan`` allowed), or ``None``.
        names: Band names (default ``band1``, ``band2``...).

    Returns:
        A :class:`~engine.data.shards.normalize.Normalization` for :func:`display_rgb`.
    """
    image = _as_numpy(image)
    if image.ndim != 3:
        raise RenderError(f"expected an image [C, H, W], got shape {image.shape}")
    channels = image.shape[0]
    names = list(names) if names is not None else [f"band{i + 1}" for i in range(channels)]
    step = max(1, int(math.sqrt(image.shape[1] * image.shape[2] / 1_000_000)))
    sample = image[:, ::step, ::step].reshape(channels, -1).astype(np.float64)
    valid = ~np.isnan(sample).any(0)
    if nodata is not None:
        valid &= ~(np.isnan(sample) if math.isnan(nodata) else sample == nodata).any(0)
    bands = []
    for name, values in zip(names, sample[:, valid] if valid.any() else np.zeros((channels, 1))):
        dtype = str(image.dtype)
        low, high = (0.0, 255.0) if dtype == "uint8" else np.percentile(values, (2, 98))
        mean, std = float(values.mean()), float(values.std())
        bands.append(BandStats(name, dtype, mean, std, (float(low), float(high)), nodata))
    return Normalization(tuple(bands), (0, 1, 2) if channels == 3 else None)


def _shown_bands(
    normalization: Normalization, band: BandSpec | None, rgb: Sequence[BandSpec] | None
) -> list[int]:
    """Positions of the bands drawn as red, green, blue (see :func:`display_rgb`)."""
    names = normalization.names
    if band is not None:
        return band_positions(band, names, "band to show", error=RenderError) * 3
    if rgb is not None:
        if isinstance(rgb, str) or len(rgb) != 3:
            raise RenderError(f"rgb needs 3 bands (red, green, blue), got {rgb!r}")
        return band_positions(rgb, names, "bands to show", distinct=False, error=RenderError)
    if normalization.rgb_bands is not None:
        return list(normalization.rgb_bands)
    return [0, 0, 0]


def _nodata_pixels(image: np.ndarray, normalization: Normalization) -> np.ndarray:
    """``HxW``: pixels that are their band's nodata value in any band of ``[C, H, W]``."""
    invalid = np.zeros(image.shape[1:], bool)
    for channel, stats in enumerate(normalization.bands):
        if stats.nodata is not None:
            values = image[channel]
            if math.isnan(stats.nodata):
                if np.issubdtype(values.dtype, np.floating):
                    invalid |= np.isnan(values)
            else:
                invalid |= values == stats.nodata
    return invalid


def display_rgb(
    image: Any,
    normalization: Normalization | None = None,
    band: BandSpec | None = None,
    *,
    rgb: Sequence[BandSpec] | None = None,
    channels_last: bool = False,
    nodata_color: Color = NODATA_COLOR,
) -> np.ndarray:
    """A picture of a native multi-band image: true colour, a chosen band in grey, or bands.

    Which bands: ``band`` (one band, grey) if given, else ``rgb`` (three bands as red, green,
    blue: a false-colour view), else the normalization's ``rgb_bands``, else the first band
    in grey. Each shown band is stretched linearly from its unit range ``(lo, hi)``
    (:attr:`BandStats.unit_range`: the manifest's 2nd and 98th percentiles, native units;
    0..255 for uint8 bands, so 8-bit pictures are the stored pixels unchanged) to 0..255:
    ``round(clip((x - lo) * 255 / (hi - lo), 0, 255))``, halves rounded up.
    Pixels that are nodata in *any* band (the pixels the shards mark ignore), or NaN in a
    shown band, are drawn ``nodata_color`` (black by default).

    Args:
        image: Native ``[C, H, W]`` (``[H, W, C]`` with ``channels_last``) array or tensor of
            any band dtype (uint8, uint16, int16, float32...).
        normalization: The data's per-band statistics (``Manifest.normalization``,
            ``Normalization.from_manifest(export_manifest)``); ``None``: the image's own
            (:func:`image_normalization`).
        band: One band to show in grey: its 1-based number or its name
            (:func:`~engine.data.sources.band_select.band_positions`).
        rgb: Three bands (numbers or names) to show as red, green, blue.
        channels_last: The image is ``[H, W, C]`` (as raster readers return it).
        nodata_color: Colour of nodata pixels.

    Returns:
        uint8 ``[H, W, 3]``.

    Raises:
        RenderError: when the image does not have the normalization's bands, or a band is
            unknown.
    """
    image = _as_numpy(image)
    if image.ndim != 3:
        raise RenderError(f"expected an image [C, H, W] (or [H, W, C]), got shape {image.shape}")
    if channels_last:
        image = image.transpose(2, 0, 1)
    if normalization is None:
        normalization = image_normalization(image)
    if image.shape[0] != normalization.in_channels:
        raise RenderError(
            f"image has {image.shape[0]} bands (shape {image.shape}), the data has "
            f"{normalization.in_channels} ({', '.join(normalization.names)})"
        )
    shown = _shown_bands(normalization, band, rgb)
    out = np.empty((*image.shape[1:], 3), np.uint8)
    invalid = np.zeros(image.shape[1:], bool)
    for channel in dict.fromkeys(shown):
        stats = normalization.bands[channel]
        low, high = stats.unit_range  # uint8: 0..255 as stored; others: display range
        values = image[channel].astype(np.float64)
        invalid |= np.isnan(values)
        stretched = np.floor(np.clip((values - low) * 255.0 / (high - low), 0, 255) + 0.5)
        for position in (i for i, c in enumerate(shown) if c == channel):
            out[..., position] = np.nan_to_num(stretched)
    invalid |= _nodata_pixels(image, normalization)
    out[invalid] = hex_to_rgb(nodata_color)
    return out
