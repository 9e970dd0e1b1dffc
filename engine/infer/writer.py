"""The prediction writer: streamed class probabilities to mask, colour, confidence, overlay.

:class:`PredictionWriter` turns streamed probability rows into a class-index mask
(``<stem>_mask``), a colour rendering (``<stem>_color``), and optionally a confidence map
(``<stem>_confidence``, max probability x 255 as uint8) and an overlay (``<stem>_overlay``),
through the sinks of :mod:`engine.infer.sinks`; rasters predicted in column bands are staged
on disk first. The format defaults to TIFF for TIFF inputs and for images over
:data:`PNG_MAX_PIXELS`, PNG otherwise. Every output is written to ``<name>.partial`` and
renamed when complete. With ``mask_values`` (see :mod:`engine.infer.values`) the mask holds
the dataset's own label values (uint8 or uint16, or RGB colours) instead of class indices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.raster_base import TIFF_SUFFIXES, RasterReader
from engine.infer.sinks import BLOCK, PNGSink, RasterioSink, Sink, Staging, TiffSink
from engine.render.colors import colorize, overlay

#: Above this many pixels predictions are written as TIFF even for PNG/JPEG inputs.
PNG_MAX_PIXELS = 64_000_000


OUTPUT_KINDS = ("mask", "color", "confidence", "overlay")


class PredictionWriter:
    """Writes streamed class probabilities as mask / colour / confidence / overlay images.

    The inference loop calls :meth:`write` with blocks of probabilities: full-width row
    blocks in order (streamed straight to the outputs; nothing is kept beyond what the
    chosen format needs, see the module notes), or, for rasters predicted in column bands,
    blocks anywhere. Those are rendered at once and staged as uint8 pixels in a raw file
    beside each output (``<output>.bands``: the output's uncompressed size on disk, not in
    memory), which :meth:`close` replays in row order. Use as a context manager: on an
    exception the partial and staging files are removed, otherwise :meth:`close`
    finalises every output and checks that every pixel was written.

    Args:
        out_dir: Output folder (created).
        stem: File name stem; outputs are ``<stem>_mask.<ext>`` and so on.
        height: Image height in pixels.
        width: Image width in pixels.
        palette: One colour per class, for the colour rendering and overlay.
        fmt: ``"png"`` or ``"tif"``.
        georef: ``reader.georef``: GeoTIFF outputs keep it (rasterio CRS/transform, or
            GeoTIFF tags with tifffile). Ignored for PNG.
        color: Write ``<stem>_color``.
        confidence: Write ``<stem>_confidence`` (max probability x 255, uint8).
        overlay_reader: When given, write ``<stem>_overlay``: the colour rendering blended
            over the rows read back from this reader.
        overlay_alpha: Opacity of the mask in the overlay.
        mask_values: Optional lookup table from class index (0..255) to the value written in
            ``<stem>_mask``: ``[256]`` uint8/uint16 (one band) or ``[256, 3]`` uint8 (RGB).
            Default: the class index itself.
    """

    def __init__(
        self,
        out_dir: str | Path,
        stem: str,
        height: int,
        width: int,
        palette: Sequence,
        *,
        fmt: str = "png",
        georef: dict[str, Any] | None = None,
        color: bool = True,
        confidence: bool = False,
        overlay_reader: RasterReader | None = None,
        overlay_alpha: float = 0.5,
        mask_values: np.ndarray | None = None,
    ) -> None:
        if fmt not in ("png", "tif"):
            raise ValueError(f"fmt must be 'png' or 'tif', not {fmt!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.height, self.width = int(height), int(width)
        self.palette = list(palette)
        self.overlay_reader = overlay_reader
        self.overlay_alpha = overlay_alpha
        self.mask_values = None if mask_values is None else np.asarray(mask_values)
        self.next_row = 0
        self.staging: dict[str, Staging] = {}
        self.staged_pixels = 0
        self.closed = False
        kinds = ["mask"] + (["color"] if color else []) + (["confidence"] if confidence else [])
        if overlay_reader is not None:
            kinds.append("overlay")
        self.sinks: dict[str, Sink] = {}
        try:
            for kind in kinds:
                channels, dtype = (3 if kind in ("color", "overlay") else 1), np.uint8
                if kind == "mask" and self.mask_values is not None:
                    lut = self.mask_values
                    channels, dtype = (lut.shape[1] if lut.ndim == 2 else 1), lut.dtype
                path = self.out_dir / f"{stem}_{kind}.{fmt}"
                self.sinks[kind] = self._sink(path, channels, fmt, georef, dtype)
        except BaseException:
            self.abort()
            raise

    def _sink(self, path: Path, channels: int, fmt: str, georef: dict | None, dtype: Any) -> Sink:
        h, w = self.height, self.width
        if fmt == "png":
            return PNGSink(path, h, w, channels, dtype)
        if georef and ("crs" in georef or "transform" in georef):
            crs, transform = georef.get("crs"), georef.get("transform")
            return RasterioSink(path, h, w, channels, crs, transform, dtype)
        tags = georef.get("geotiff_tags", ()) if georef else ()
        return TiffSink(path, h, w, channels, tags, dtype)

    @property
    def paths(self) -> dict[str, Path]:
        """Output kind → file path."""
        return {kind: sink.path for kind, sink in self.sinks.items()}

    def write(self, row0: int, probs: np.ndarray, col0: int = 0) -> None:
        """Add a block of probabilities.

        Args:
            row0: First image row of the block. Full-width blocks must arrive in order,
                without gaps, unless narrower blocks came first.
            probs: float ``[N, rows, cols]`` class probabilities.
            col0: First image column of the block.
        """
        if probs.ndim != 3:
            raise ValueError(f"expected probabilities [N, rows, cols], got {probs.shape}")
        rows, cols = probs.shape[1:]
        if row0 < 0 or col0 < 0 or row0 + rows > self.height or col0 + cols > self.width:
            raise ValueError(
                f"block rows {row0}:{row0 + rows}, columns {col0}:{col0 + cols} outside the "
                f"{self.height}x{self.width} image"
            )
        streamed = col0 == 0 and cols == self.width and not self.staging
        if streamed and row0 != self.next_row:
            raise ValueError(f"rows must arrive in order: expected row {self.next_row}, got {row0}")
        if not streamed and self.next_row:
            raise ValueError("a column block after full-width rows: write one way per image")
        mask = probs.argmax(axis=0).astype(np.uint8)
        rendered = None
        for kind, sink in self.sinks.items():
            if kind == "mask":
                block = mask if self.mask_values is None else self.mask_values[mask]
            elif kind == "confidence":
                block = np.rint(np.clip(probs.max(axis=0), 0, 1) * 255).astype(np.uint8)
            else:
                if rendered is None:
                    rendered = colorize(mask, self.palette)
                if kind == "color":
                    block = rendered
                else:
                    assert self.overlay_reader is not None
                    image = self.overlay_reader.read(row0, row0 + rows, col0, col0 + cols)
                    block = overlay(image, rendered, self.overlay_alpha)
            if streamed:
                sink.write(row0, block)
            else:
                if kind not in self.staging:
                    path = sink.path.with_name(sink.path.name + ".bands")
                    self.staging[kind] = Staging(
                        path, self.height, self.width, sink.channels, sink.dtype
                    )
                self.staging[kind].write(row0, col0, block)
        if streamed:
            self.next_row += rows
        else:
            self.staged_pixels += rows * cols

    def close(self) -> None:
        """Finalise every output.

        Raises:
            RuntimeError: when fewer rows (or pixels) than the image holds were written.
        """
        if self.closed:
            return
        total = self.height * self.width
        if self.staging and self.staged_pixels != total:
            self.abort()
            raise RuntimeError(f"{self.staged_pixels} of {total} pixels were written")
        if not self.staging and self.next_row != self.height:
            self.abort()
            raise RuntimeError(f"only {self.next_row} of {self.height} rows were written")
        try:
            for kind, staged in self.staging.items():
                for row0 in range(0, self.height, BLOCK):
                    self.sinks[kind].write(row0, staged.read(row0, min(row0 + BLOCK, self.height)))
                staged.remove()
            for sink in self.sinks.values():
                sink.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Stop and delete the partial outputs."""
        for staged in self.staging.values():
            staged.remove()
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                sink.abort()
        self.closed = True

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def output_format(reader: RasterReader) -> str:
    """Default output format for a reader: TIFF for TIFF or very large inputs, else PNG."""
    height, width = reader.shape[:2]
    return "tif" if reader.is_tiff or height * width > PNG_MAX_PIXELS else "png"


def prediction_writer(
    reader: RasterReader,
    out_dir: str | Path,
    palette: Sequence,
    *,
    stem: str | None = None,
    fmt: str = "auto",
    color: bool = True,
    confidence: bool = False,
    overlay: bool = False,
    overlay_alpha: float = 0.5,
    mask_values: np.ndarray | None = None,
) -> PredictionWriter:
    """Make the :class:`PredictionWriter` for one input (stem, format and georef from it).

    Args:
        reader: The input being predicted.
        out_dir: Output folder.
        palette: One colour per class.
        stem: Output stem (default: the input's file stem).
        fmt: ``"auto"`` (see :func:`output_format`), ``"png"`` or ``"tif"``.
        color: Write the colour rendering.
        confidence: Write the confidence map.
        overlay: Write the overlay (reads the input rows a second time).
        overlay_alpha: Opacity of the mask in the overlay.
        mask_values: See :class:`PredictionWriter`.

    Returns:
        The writer.
    """
    if stem is None:
        if reader.path is None:
            raise ValueError("an in-memory reader needs an explicit stem")
        stem = reader.path.stem
    if fmt == "auto":
        fmt = output_format(reader)
    height, width = reader.shape[:2]
    return PredictionWriter(
        out_dir,
        stem,
        height,
        width,
        palette,
        fmt=fmt,
        georef=reader.georef if fmt == "tif" else None,
        color=color,
        confidence=confidence,
        overlay_reader=reader if overlay else None,
        overlay_alpha=overlay_alpha,
        mask_values=mask_values,
    )


def output_paths(
    out_dir: str | Path,
    stem: str,
    fmt: str,
    *,
    color: bool = True,
    confidence: bool = False,
    overlay: bool = False,
) -> list[Path]:
    """The files a :class:`PredictionWriter` with these settings writes (``fmt`` resolved).

    Args:
        out_dir: Output folder.
        stem: Output stem.
        fmt: ``"png"`` or ``"tif"``.
        color: Whether the colour rendering is written.
        confidence: Whether the confidence map is written.
        overlay: Whether the overlay is written.

    Returns:
        The output paths, in :data:`OUTPUT_KINDS` order.
    """
    chosen = {"mask": True, "color": color, "confidence": confidence, "overlay": overlay}
    return [Path(out_dir) / f"{stem}_{kind}.{fmt}" for kind in OUTPUT_KINDS if chosen[kind]]


def planned_format(path: str | Path, fmt: str = "auto") -> tuple[str, ...]:
    """The output format(s) :func:`prediction_writer` will choose for an input, undecoded.

    ``fmt="auto"``: TIFF for TIFF inputs and images over :data:`PNG_MAX_PIXELS` (read from
    the header); both formats when the header cannot be read.

    Args:
        path: The input raster.
        fmt: ``"auto"``, ``"png"`` or ``"tif"``.

    Returns:
        One format, or ``("png", "tif")`` when it cannot be told.
    """
    if fmt != "auto":
        return (fmt,)
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return ("tif",)
    try:
        from PIL import Image

        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - unreadable here: open_raster names the problem later
        return ("png", "tif")
    return ("tif",) if width * height > PNG_MAX_PIXELS else ("png",)
