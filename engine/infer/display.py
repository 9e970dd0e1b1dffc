"""A true-colour (or grey) uint8 view of native multispectral rows, for the overlay output."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.data.normalize import Normalization


def display_rgb(normalization: Normalization) -> Callable[[np.ndarray], np.ndarray] | None:
    """A function from native ``HxWxC`` rows to uint8 ``HxWx3`` for overlays.

    The ``rgb_bands`` (else the first band, in grey) are stretched linearly from each band's
    unit range (uint8: 0–255 unchanged; other types: the display percentiles recorded in the
    manifest) to 0–255 and clipped; NaN shows black.

    Args:
        normalization: The model's bands (``Normalization.from_manifest``).

    Returns:
        ``None`` for 3-band uint8 RGB in channel order (the rows are already the view),
        else the conversion.
    """
    rgb = normalization.rgb_bands
    dtypes = {band.dtype for band in normalization.bands}
    if rgb == (0, 1, 2) and normalization.in_channels == 3 and dtypes == {"uint8"}:
        return None
    picks = list(rgb) if rgb is not None else [0, 0, 0]
    lo, span = normalization.unit_scale()
    low = np.array([lo[i] for i in picks], np.float32)
    scale = np.array([255.0 / span[i] for i in picks], np.float32)

    def view(rows: np.ndarray) -> np.ndarray:
        chosen = rows[..., picks].astype(np.float32)
        scaled = np.nan_to_num((chosen - low) * scale, nan=0.0)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    return view
