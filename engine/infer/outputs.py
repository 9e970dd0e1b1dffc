"""Which files a prediction writes, decided before any input is decoded.

:class:`OutputSpec` names what is written for an input besides its mask (format, colour,
confidence, probabilities, overlay, the mask's values); :func:`format_for` resolves the
``"auto"`` format. ``predict.py`` checks with these that no output would overwrite an input
before it starts, and after a failure removes the temporary files (:func:`temporary_paths`)
a raster's run created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.sources.formats import reader_of

#: Above this many pixels predictions are written as GeoTIFF even for PNG/JPEG inputs.
PNG_MAX_PIXELS = 64_000_000
FORMATS = ("png", "tif", "cog")
OUTPUT_KINDS = ("mask", "color", "confidence", "probabilities", "overlay")


@dataclass(frozen=True)
class OutputSpec:
    """What a :class:`~engine.infer.writer.PredictionWriter` writes for one input.

    Attributes:
        fmt: ``"auto"`` (see :func:`format_for`), ``"png"``, ``"tif"`` (GeoTIFF) or
            ``"cog"`` (Cloud-Optimised GeoTIFF).
        color: Write ``<stem>_color``.
        confidence: Write ``<stem>_confidence`` (max probability x 255, uint8).
        probabilities: Write ``<stem>_probabilities`` (float32, one band per class; GeoTIFF
            or COG only).
        overlay: Write ``<stem>_overlay``: the colour rendering blended over the input's
            rows, read a second time.
        overlay_alpha: Opacity of the mask in the overlay.
        overlay_rgb: Turns the input's native ``HxWxC`` rows into uint8 ``HxWx3`` for the
            overlay (default: the rows themselves, for uint8 RGB inputs).
        mask_values: Optional lookup table from class index (0..255) to the value written in
            ``<stem>_mask``: ``[256]`` uint8/uint16 (one band) or ``[256, 3]`` uint8 (RGB).
            Default: the class index itself.
    """

    fmt: str = "auto"
    color: bool = True
    confidence: bool = False
    probabilities: bool = False
    overlay: bool = False
    overlay_alpha: float = 0.5
    overlay_rgb: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    mask_values: Any = field(default=None, compare=False)

    def kinds(self) -> list[str]:
        """The outputs written, in :data:`OUTPUT_KINDS` order (the mask always)."""
        chosen = {"mask": True, "color": self.color, "confidence": self.confidence}
        chosen |= {"probabilities": self.probabilities, "overlay": self.overlay}
        return [kind for kind in OUTPUT_KINDS if chosen[kind]]

    def resolved(self, path: str | Path | None, height: int, width: int) -> OutputSpec:
        """The spec with ``"auto"`` replaced by the format for that input (:func:`format_for`)."""
        return replace(self, fmt=format_for(path, height, width, self.fmt))


def format_for(path: str | Path | None, height: int, width: int, fmt: str = "auto") -> str:
    """The output format: ``fmt``, or for ``"auto"`` the default.

    The default is PNG for PNG/JPEG/WebP/BMP inputs up to :data:`PNG_MAX_PIXELS` (and for
    in-memory images, ``path=None``), GeoTIFF for every other input.
    """
    if fmt != "auto":
        return fmt
    small = height * width <= PNG_MAX_PIXELS
    pictured = path is None or reader_of(path) == "pil"
    return "png" if small and pictured else "tif"


def output_paths(out_dir: str | Path, stem: str, spec: OutputSpec) -> list[Path]:
    """The files a :class:`~engine.infer.writer.PredictionWriter` of ``spec`` writes.

    Args:
        out_dir: Output folder.
        stem: Output stem.
        spec: The outputs, with a resolved format (not ``"auto"``).

    Returns:
        The output paths, in :data:`OUTPUT_KINDS` order.
    """
    if spec.fmt == "auto":
        raise ValueError("output_paths needs a resolved format, not 'auto'")
    ext = "png" if spec.fmt == "png" else "tif"
    return [Path(out_dir) / f"{stem}_{kind}.{ext}" for kind in spec.kinds()]


def planned_format(path: str | Path, fmt: str = "auto") -> tuple[str, ...]:
    """The output format(s) :func:`~engine.infer.writer.prediction_writer` will choose.

    ``fmt="auto"``: PNG for PNG/JPEG/WebP/BMP inputs up to :data:`PNG_MAX_PIXELS` (read
    from the header), GeoTIFF for every other input; both when the header cannot be read.

    Args:
        path: The input raster.
        fmt: ``"auto"``, ``"png"``, ``"tif"`` or ``"cog"``.

    Returns:
        One format, or ``("png", "tif")`` when it cannot be told.
    """
    if fmt != "auto":
        return (fmt,)
    path = Path(path)
    if reader_of(path) != "pil":
        return ("tif",)
    try:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - unreadable here: open_raster names the problem later
        return ("png", "tif")
    return (format_for(path, height, width),)


def temporary_paths(outputs: list[Path], stem: str) -> list[Path]:
    """Every temporary file a writer of ``outputs`` (of input ``stem``) may create.

    The sinks' ``<output>.partial`` and ``<output>.cog.partial``, the staging files
    ``<output>.bands`` and ``<stem>_valid.bands`` (see :mod:`engine.infer.sinks` and
    :mod:`engine.infer.writer`).
    """
    names = [".partial", ".cog.partial", ".bands"]
    paths = [output.with_name(output.name + suffix) for output in outputs for suffix in names]
    if outputs:
        paths.append(outputs[0].with_name(f"{stem}_valid.bands"))
    return paths
