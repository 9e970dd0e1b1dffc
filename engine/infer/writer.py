"""The prediction writer: streamed class probabilities to mask, colour, confidence, overlay.

:class:`PredictionWriter` turns streamed probability rows into a class-index mask
(``<stem>_mask``), a colour rendering (``<stem>_color``), and optionally a confidence map
(``<stem>_confidence``, max probability x 255 as uint8), the class probabilities
(``<stem>_probabilities``, float32, one band per class; GeoTIFF/COG only) and an overlay
(``<stem>_overlay``), through the sinks of :mod:`engine.infer.sinks`; rasters predicted in
column bands are staged on disk first. What is written is an
:class:`~engine.infer.outputs.OutputSpec`; its format defaults to GeoTIFF for every input but
PNG/JPEG/WebP/BMP ones up to :data:`~engine.infer.outputs.PNG_MAX_PIXELS`, which get PNG;
``"cog"`` writes Cloud-Optimised GeoTIFFs. Every output is written to ``<name>.partial`` and
renamed when complete. With ``mask_values`` (see :mod:`engine.infer.values`) the mask holds
the dataset's own label values (uint8 or uint16, or RGB colours) instead of class indices.

Nodata: pixels the input marks invalid (``reader.read_valid`` False: a band's nodata value,
GDAL's mask, alpha 0) are written as each output's nodata value, which GeoTIFF outputs
declare: the mask :data:`MASK_NODATA` (255, the ignore index; with ``mask_values`` the
dataset's ignore value), the confidence :data:`CONFIDENCE_NODATA` (0: a real confidence is
at least 1/N), the probabilities NaN. Colour renderings, the overlay and RGB-valued masks,
whose every value is a legal colour, keep GDAL's per-dataset mask band instead (0 where
invalid; invalid pixels are black in the colour rendering and the plain image in the
overlay). PNG outputs have the values but no declaration.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.infer.outputs import FORMATS, OutputSpec
from engine.infer.sinks import BLOCK, GeoTiffSink, PixelSpec, PNGSink, Sink, Staging
from engine.render.colors import colorize, overlay

MASK_NODATA = 255
CONFIDENCE_NODATA = 0


class OutputError(UserError):
    """Output settings that cannot be written (e.g. probabilities as PNG)."""


def _extension(fmt: str) -> str:
    return "png" if fmt == "png" else "tif"


def output_pixels(kind: str, num_classes: int, mask_values: np.ndarray | None = None) -> PixelSpec:
    """What each pixel of one output kind holds (see the module notes).

    Args:
        kind: One of :data:`~engine.infer.outputs.OUTPUT_KINDS`.
        num_classes: Classes of the model (bands of the probabilities).
        mask_values: The :class:`~engine.infer.outputs.OutputSpec`'s lookup table, if any.
    """
    if kind == "mask":
        if mask_values is None:
            return PixelSpec(1, np.uint8, MASK_NODATA)
        lut = np.asarray(mask_values)
        if lut.ndim == 2:
            return PixelSpec(lut.shape[1], lut.dtype, None, masked=True)
        return PixelSpec(1, lut.dtype, float(lut[MASK_NODATA]))
    if kind == "confidence":
        return PixelSpec(1, np.uint8, CONFIDENCE_NODATA)
    if kind == "probabilities":
        return PixelSpec(num_classes, np.float32, math.nan)
    return PixelSpec(3, np.uint8, None, masked=True)  # colour, overlay


class PredictionWriter:
    """Writes streamed class probabilities as mask / colour / confidence / overlay images.

    The inference loop calls :meth:`write` with blocks of probabilities: full-width row
    blocks in order (streamed straight to the outputs; nothing is kept beyond what the
    chosen format needs, see the module notes), or, for rasters predicted in column bands,
    blocks anywhere. Those are rendered at once and staged as pixels in a raw file beside
    each output (``<output>.bands``: the output's uncompressed size on disk, not in
    memory), which :meth:`close` replays in row order. Use as a context manager: on an
    exception the partial and staging files are removed, otherwise :meth:`close`
    finalises every output and checks that every pixel was written.

    Args:
        out_dir: Output folder (created).
        stem: File name stem; outputs are ``<stem>_mask.<ext>`` and so on.
        height: Image height in pixels.
        width: Image width in pixels.
        palette: One colour per class, for the colour rendering and overlay.
        spec: What is written (default: mask and colour, PNG for in-memory images).
        source: The input being predicted: its ``georef`` is kept by GeoTIFF outputs, its
            ``read_valid(row0, row1, col0, col1)`` marks the invalid pixels, which become
            nodata (see the module notes), and the overlay reads its rows.

    Attributes:
        class_pixels: int64 ``[N]``: pixels written per class so far (nodata excluded).
    """

    def __init__(
        self,
        out_dir: str | Path,
        stem: str,
        height: int,
        width: int,
        palette: Sequence,
        spec: OutputSpec | None = None,
        source: Any = None,
    ) -> None:
        spec = (spec or OutputSpec()).resolved(getattr(source, "path", None), height, width)
        if spec.fmt not in FORMATS:
            raise OutputError(f"format must be one of {', '.join(FORMATS)}, not {spec.fmt!r}")
        if spec.probabilities and spec.fmt == "png":
            raise OutputError("probabilities are float32 bands: write them as tif or cog")
        if spec.overlay and source is None:
            raise ValueError("an overlay needs the source image")
        self.spec = spec
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.height, self.width = int(height), int(width)
        self.palette = list(palette)
        self.source = source
        self.mask_values = None if spec.mask_values is None else np.asarray(spec.mask_values)
        self.valid_reader = source if hasattr(source, "read_valid") else None
        self.class_pixels = np.zeros(len(self.palette), np.int64)
        self.next_row = 0
        self.staging: dict[str, Staging] = {}
        self.staged_pixels = 0
        self.closed = False
        self.sinks: dict[str, Sink] = {}
        georef = getattr(source, "georef", None) if spec.fmt != "png" else None
        try:
            for kind in spec.kinds():
                path = self.out_dir / f"{stem}_{kind}.{_extension(spec.fmt)}"
                self.sinks[kind] = self._sink(kind, path, georef)
        except BaseException:
            self.abort()
            raise

    def _sink(self, kind: str, path: Path, georef: dict | None) -> Sink:
        pixels = output_pixels(kind, len(self.palette), self.mask_values)
        h, w, fmt = self.height, self.width, self.spec.fmt
        if fmt == "png":
            return PNGSink(path, h, w, pixels)
        return GeoTiffSink(path, h, w, pixels, georef=georef, cog=fmt == "cog")

    @property
    def paths(self) -> dict[str, Path]:
        """Output kind → file path."""
        return {kind: sink.path for kind, sink in self.sinks.items()}

    def _valid(self, row0: int, rows: int, col0: int, cols: int) -> np.ndarray | None:
        """Bool ``rows x cols`` validity of the input, or ``None`` when every pixel is valid."""
        if self.valid_reader is None:
            return None
        valid = np.asarray(self.valid_reader.read_valid(row0, row0 + rows, col0, col0 + cols))
        return None if valid.all() else valid

    def _blocks(self, row0: int, col0: int, probs: np.ndarray, valid: np.ndarray | None):
        """Yield ``(kind, block)`` for every output of one probability block."""
        rows, cols = probs.shape[1:]
        invalid = None if valid is None else ~valid
        mask = probs.argmax(axis=0).astype(np.uint8)
        if invalid is not None:
            mask[invalid] = MASK_NODATA
        counts = np.bincount(mask.ravel(), minlength=MASK_NODATA + 1)
        self.class_pixels += counts[: len(self.class_pixels)]
        rendered = None
        for kind in self.sinks:
            if kind == "mask":
                block = mask if self.mask_values is None else self.mask_values[mask]
            elif kind == "confidence":
                block = np.rint(np.clip(probs.max(axis=0), 0, 1) * 255).astype(np.uint8)
                if invalid is not None:
                    block[invalid] = CONFIDENCE_NODATA
            elif kind == "probabilities":
                block = np.moveaxis(probs, 0, -1).astype(np.float32)  # a copy, HxWxN
                if invalid is not None:
                    block[invalid] = np.nan
            else:
                if rendered is None:
                    rendered = colorize(mask, self.palette)
                if kind == "color":
                    block = rendered
                else:
                    image = self.source.read(row0, row0 + rows, col0, col0 + cols)
                    if self.spec.overlay_rgb is not None:
                        image = self.spec.overlay_rgb(image)
                    block = overlay(image, rendered, self.spec.overlay_alpha)
                    if invalid is not None:
                        block[invalid] = image[invalid]
            yield kind, block

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
        valid = self._valid(row0, rows, col0, cols)
        if not streamed and any(sink.masked for sink in self.sinks.values()):
            flags = np.ones((rows, cols), np.uint8) if valid is None else valid.astype(np.uint8)
            self._stage("valid", self.out_dir / f"{self.stem}_valid.bands", 1, np.uint8)
            self.staging["valid"].write(row0, col0, flags)
        for kind, block in self._blocks(row0, col0, probs, valid):
            sink = self.sinks[kind]
            if streamed:
                sink.write(row0, block, valid)
            else:
                path = sink.path.with_name(sink.path.name + ".bands")
                self._stage(kind, path, sink.channels, sink.dtype)
                self.staging[kind].write(row0, col0, block)
        if streamed:
            self.next_row += rows
        else:
            self.staged_pixels += rows * cols

    def _stage(self, kind: str, path: Path, channels: int, dtype: Any) -> None:
        if kind not in self.staging:
            self.staging[kind] = Staging(path, self.height, self.width, channels, dtype)

    def close(self) -> None:
        """Finalise every output: each is finished before any is renamed into place.

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
            flags = self.staging.get("valid")
            outputs = {k: v for k, v in self.staging.items() if k != "valid"}
            for row0 in range(0, self.height if outputs else 0, BLOCK):
                row1 = min(row0 + BLOCK, self.height)
                valid = None if flags is None else flags.read(row0, row1).astype(bool)
                for kind, staged in outputs.items():
                    self.sinks[kind].write(row0, staged.read(row0, row1), valid)
            for staged in self.staging.values():
                staged.remove()
            for sink in self.sinks.values():
                sink.finish()
            for sink in self.sinks.values():
                sink.commit()
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Stop and delete the partial outputs (outputs already renamed into place stay)."""
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


def prediction_writer(
    reader: Any,
    out_dir: str | Path,
    palette: Sequence,
    spec: OutputSpec | None = None,
    stem: str | None = None,
) -> PredictionWriter:
    """Make the :class:`PredictionWriter` for one input (its stem, size, georef, validity).

    Args:
        reader: The input being predicted (see ``source`` of :class:`PredictionWriter`).
        out_dir: Output folder.
        palette: One colour per class.
        spec: What is written (default :class:`~engine.infer.outputs.OutputSpec`: mask and
            colour in the input's default format).
        stem: Output stem (default: the input's file stem).

    Returns:
        The writer.
    """
    if stem is None:
        if getattr(reader, "path", None) is None:
            raise ValueError("an in-memory reader needs an explicit stem")
        stem = Path(reader.path).stem
    height, width = reader.shape[:2]
    return PredictionWriter(out_dir, stem, height, width, palette, spec, reader)
