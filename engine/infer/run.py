"""Prediction as a library: one raster (:func:`predict_file`), or the command's inputs.

Three lines are enough::

    from engine.infer.run import PredictOptions, predict_file
    result = predict_file("runs/r34", "scene.tif", "preds", PredictOptions(tile=512))
    print(result.summary, result.paths["mask"])

:class:`PredictOptions` holds the per-file settings (those of ``terraseg predict``, with its
defaults); the model may be a run or export folder or a :class:`~engine.infer.model.LoadedModel`
loaded once for many files. :func:`predict_files` is the command: it takes the inputs (files,
globs, folders) and the output folder, and

1. expands the inputs and loads the model;
2. before anything is written, checks every input's header against the pixel limit
   (:mod:`engine.infer.limits`), the ``--polygons`` request, and that no output would
   overwrite an input;
3. per input, just before writing it: checks the free disk space for its outputs, then
   predicts it in strips into ``<output>.partial`` files renamed when all are complete.

:func:`predict_file` does the same for one raster. Every exit path removes what the run
created and nothing else: on an error, Ctrl-C (``KeyboardInterrupt``) or a signal turned
into :class:`~engine.infer.session.Interrupted` (:func:`~engine.infer.session.signals_raise`,
installed by ``terraseg predict``), the input being written loses its temporary files
(``*.partial``, ``*.bands``: only those that did not exist before it started), and an
output folder the run created is removed again when it is empty. Inputs, and the outputs
of inputs that completed, stay. A full disk is a one-line ``DiskFullError`` ("no space
left on device" with the path).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.infer.bands import first_band_files, open_model_raster
from engine.infer.limits import check_free_space, check_pixel_limits, disk_need
from engine.infer.model import LoadedModel, load_model
from engine.infer.outputs import OutputSpec, format_for, output_paths, temporary_paths
from engine.infer.polygons import (
    DEFAULT_MIN_AREA,
    polygon_class_indices,
    polygon_driver,
    write_polygons,
)
from engine.infer.session import (
    check_outputs,
    expand_inputs,
    output_folder,
    removing_temporaries,
)
from engine.infer.sliding import SlidingOptions, predict_raster
from engine.infer.windows import is_banded
from engine.infer.writer import PredictionWriter, prediction_writer
from engine.render.colors import display_rgb

__all__ = [
    "LoadedModel",
    "PredictOptions",
    "PredictResult",
    "expand_inputs",
    "load_model",
    "predict_file",
    "predict_files",
]


@dataclass(frozen=True)
class PredictOptions:
    """The settings of one prediction, per input file (``terraseg predict --help``).

    Attributes:
        tile: Window edge in pixels (``None``: the model's, see
            :attr:`~engine.infer.model.LoadedModel.tile`).
        overlap: Window overlap fraction, in ``[0, 1)``.
        tta: Test-time augmentation: ``"none"``, ``"flip"`` or ``"d4"``.
        batch: Tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (used when the model is
            loaded here; a :class:`~engine.infer.model.LoadedModel` stays where it is).
        amp: Autocast dtype of the forward pass: ``"none"``, ``"bf16"`` or ``"fp16"``.
        weighting: Blending of overlapping windows: ``"gaussian"`` or ``"uniform"``.
        band_width: Columns per band for wider rasters (0: one band).
        format: ``"auto"``, ``"png"``, ``"tif"`` or ``"cog"``.
        confidence: Also write the max-probability map.
        probabilities: Also write the class probabilities (tif/cog).
        overlay: Also write the mask over the image.
        alpha: Overlay opacity.
        polygons: Also vectorise the mask into this ``.gpkg``/``.geojson`` file (``{stem}``
            is replaced by the input's stem).
        min_area: With ``polygons``: regions of fewer pixels join their largest neighbour
            (or are dropped when none is that large); 0 or 1 keeps every region.
        simplify: With ``polygons``: simplification tolerance in pixel widths (shared
            edges kept).
        polygon_classes: With ``polygons``: ``"foreground"`` (every class but the
            background), ``"all"`` or comma-separated class names.
        values: Mask values: ``"index"`` (class indices) or ``"original"`` (the dataset's).
        bands: Bands to read, in the model's channel order (numbers or names).
        band_files: Band names of inputs kept one band per file: the input is the first
            band's file, the others replace that name in its file name (see
            :mod:`engine.infer.bands`).
        nodata: Input nodata value overriding the file's.
        max_pixels: Largest input in pixels (default: ``TERRASEG_MAX_PIXELS``).
        progress: Show a progress bar per input.
    """

    tile: int | None = None
    overlap: float = 0.25
    tta: str = "none"
    batch: int = 4
    device: str = "auto"
    amp: str = "none"
    weighting: str = "gaussian"
    band_width: int = 16384
    format: str = "auto"
    confidence: bool = False
    probabilities: bool = False
    overlay: bool = False
    alpha: float = 0.5
    polygons: str | None = None
    min_area: float = DEFAULT_MIN_AREA
    simplify: float = 0.0
    polygon_classes: str = "foreground"
    values: str = "index"
    bands: Sequence[int | str] | None = None
    band_files: Sequence[str] | None = None
    nodata: float | None = None
    max_pixels: int | None = None
    progress: bool = True

    def outputs(self, fmt: str | None = None) -> OutputSpec:
        """The outputs chosen (``fmt`` overriding :attr:`format`), without model tables."""
        return OutputSpec(
            fmt=fmt or self.format,
            confidence=self.confidence,
            probabilities=self.probabilities,
            overlay=self.overlay,
            overlay_alpha=self.alpha,
        )


@dataclass(frozen=True)
class PredictResult:
    """What one input's prediction wrote.

    Attributes:
        source: The input raster.
        height: Its rows.
        width: Its columns.
        paths: Output kind (``"mask"``, ``"color"``, ..., ``"polygons"``) → file.
        class_pixels: Class name → pixels predicted as that class (nodata not counted).
        polygons: Features written to ``paths["polygons"]`` (``None`` without polygons).
    """

    source: Path
    height: int
    width: int
    paths: dict[str, Path]
    class_pixels: dict[str, int] = field(default_factory=dict)
    polygons: int | None = None

    @property
    def summary(self) -> str:
        """One line: ``SOURCE (WxH) -> outputs[, POLYGONS (N polygons)]``."""
        names = ", ".join(p.name for kind, p in self.paths.items() if kind != "polygons")
        line = f"{self.source} ({self.width}x{self.height}) -> {names}"
        if "polygons" in self.paths:
            line += f", {self.paths['polygons']} ({self.polygons} polygons)"
        return line


def polygon_targets(
    options: PredictOptions, inputs: list[Path], values: np.ndarray | None
) -> dict[Path, Path]:
    """Input → ``--polygons`` file (``{stem}`` replaced by the input's stem); checked early.

    Raises:
        UserError: for an unknown suffix, several inputs without ``{stem}``, a folder that
            is missing or not writable, negative --min-area/--simplify, or RGB-valued masks
            (--values original of colour classes).
    """
    if not options.polygons:
        return {}
    polygon_driver(options.polygons)
    if len(inputs) > 1 and "{stem}" not in options.polygons:
        raise UserError(
            f"--polygons {options.polygons}: {len(inputs)} inputs would write the same file; "
            "put {stem} in the name"
        )
    if options.min_area < 0 or options.simplify < 0:
        raise UserError("--min-area and --simplify must be >= 0")
    if values is not None and values.ndim == 2:
        raise UserError("--polygons needs a one-band mask: colour-coded --values original masks")
    targets = {path: Path(options.polygons.replace("{stem}", path.stem)) for path in inputs}
    for target in targets.values():
        folder = target.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(
                f"--polygons {target}: folder {folder} does not exist or is not writable"
            )
    return targets


@dataclass(frozen=True)
class _Run:
    """What every input of one prediction run shares."""

    model: LoadedModel
    options: PredictOptions
    out: Path
    values: np.ndarray | None  # the mask's value table (--values original), or None

    @property
    def tile(self) -> int:
        return self.model.tile if self.options.tile is None else self.options.tile

    def outputs(self, fmt: str) -> OutputSpec:
        overlay_rgb = partial(display_rgb, normalization=self.model.normalization,
                              channels_last=True)  # fmt: skip
        spec = self.options.outputs(fmt)
        return replace(spec, overlay_rgb=overlay_rgb, mask_values=self.values)

    def sliding(self) -> SlidingOptions:
        o = self.options
        return SlidingOptions(tile=self.tile, overlap=o.overlap, batch_size=o.batch, tta=o.tta,
                              weighting=o.weighting, band_width=o.band_width or None,
                              device=self.model.device, amp_dtype=o.amp)  # fmt: skip


def _check_disk(run: _Run, path: Path, reader: Any, spec: OutputSpec) -> None:
    """Refuse ``path`` when the output folder lacks room for its outputs."""
    height, width = reader.shape[:2]
    options = run.options
    banded = is_banded(width, run.tile, options.overlap, options.band_width or None)
    need = disk_need(height, width, spec.fmt, spec.kinds(), num_classes=run.model.num_classes,
                     mask_values=run.values, banded=banded)  # fmt: skip
    check_free_space(run.out, path, need)


def _write_raster(run: _Run, reader: Any, spec: OutputSpec, desc: str) -> PredictionWriter:
    """Predict one opened raster into its outputs; return the closed writer."""
    model = run.model
    with prediction_writer(reader, run.out, model.palette, spec) as writer:
        predict_raster(
            model.exported.model,
            reader,
            writer,
            num_classes=model.num_classes,
            normalization=model.normalization,
            options=run.sliding(),
            progress=desc if run.options.progress else None,
        )
    return writer


def _predict_input(run: _Run, path: Path, polygons: Path | None, desc: str) -> PredictResult:
    """Predict one input into ``run.out`` (its free space checked first).

    Raises:
        UserError: for an input without the model's bands, a GeoJSON request for a raster
            without CRS, too little free disk, or a failed write (a full disk included);
            the input's temporary files are removed first.
    """
    options, model = run.options, run.model
    reader = open_model_raster(path, model.normalization, bands=options.bands,
                               nodata=options.nodata, band_files=options.band_files)  # fmt: skip
    with reader:
        for note in reader.notes:  # a band tagged alpha read as data
            print(f"note: {note}", file=sys.stderr)
        height, width = reader.shape[:2]
        georef = reader.georef
        if polygons and polygon_driver(polygons) == "GeoJSON" and not (georef or {}).get("crs"):
            raise UserError(
                f"{path}: no CRS, but GeoJSON coordinates are longitude/latitude "
                f"(RFC 7946); give --polygons a .gpkg name"
            )
        spec = run.outputs(format_for(path, height, width, options.format))
        _check_disk(run, path, reader, spec)
        temporaries = temporary_paths(output_paths(run.out, path.stem, spec), path.stem)
        if polygons:
            temporaries.append(polygons.with_name(f"{polygons.stem}.partial{polygons.suffix}"))
        with removing_temporaries(temporaries):
            writer = _write_raster(run, reader, spec, desc)
            paths, count = dict(writer.paths), None
            if polygons:
                count = write_polygons(paths["mask"], polygons, model.names, values=run.values,
                                       min_area=options.min_area, simplify=options.simplify,
                                       classes=options.polygon_classes, georef=georef)  # fmt: skip
                paths["polygons"] = polygons
    pixels = dict(zip(model.names, writer.class_pixels.tolist(), strict=True))
    return PredictResult(path, height, width, paths, pixels, count)


def _predict_all(
    model: LoadedModel,
    inputs: list[Path],
    out: str | Path,
    options: PredictOptions,
    log: Callable[[str], Any] | None,
) -> list[PredictResult]:
    """Check everything, then predict every input into ``out`` (see the module notes)."""
    values = model.mask_values(options.values)
    check_pixel_limits(inputs, options.max_pixels)
    with output_folder(str(out)) as folder:
        check_outputs(folder, inputs, options.outputs())
        polygons = polygon_targets(options, inputs, values)  # may be inside out
        if polygons:
            polygon_class_indices(options.polygon_classes, model.names)  # names checked early
        run = _Run(model, options, folder, values)
        if log:
            log(
                f"model {model.exported.spec['arch']} ({model.num_classes} classes) on "
                f"{model.device}; {len(inputs)} input(s); {run.tile}² windows"
            )
        results = []
        for number, path in enumerate(inputs, 1):
            where = f"[{number}/{len(inputs)}]"
            result = _predict_input(run, path, polygons.get(path), f"{where} {path.name}")
            results.append(result)
            if log:
                log(f"{where} {result.summary}")
    return results


def predict_file(
    model: str | Path | LoadedModel,
    path: str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
) -> PredictResult:
    """Predict one raster into the folder ``out``.

    Args:
        model: A run folder, export folder (``RUN/best``) or ``model.safetensors``, loaded
            on ``options.device``; or a :class:`~engine.infer.model.LoadedModel`
            (:func:`~engine.infer.model.load_model`), used as it is.
        path: The input raster.
        out: The output folder (created, with its parents).
        options: The settings (default :class:`PredictOptions`).

    Returns:
        The files written, the raster's size and its pixels per class.

    Raises:
        UserError: bad input, model, settings, size or disk space (before anything is
            written), or a failed write; what the call created is removed first.
    """
    options = options or PredictOptions()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options.device)
    return _predict_all(loaded, [path], out, options, log=None)[0]


def predict_files(
    model: str | Path | LoadedModel,
    inputs: list[str],
    out: str | Path,
    options: PredictOptions | None = None,
    log: Callable[[str], Any] = print,
) -> list[PredictResult]:
    """Predict every input into ``out``: ``terraseg predict`` (see the module notes).

    Args:
        model: As for :func:`predict_file`.
        inputs: Files, globs and folders (a folder: its raster files; with
            ``options.band_files`` only the first band's files are inputs).
        out: The output folder.
        options: The settings (default :class:`PredictOptions`).
        log: Gets a header line, then one line per input.

    Raises:
        UserError: bad inputs, model, settings, sizes or disk space (before anything is
            written), or a failed write; what the run created is removed first.
        Interrupted: from a signal (see :func:`~engine.infer.session.signals_raise`),
            after the same cleanup.
    """
    options = options or PredictOptions()
    paths = expand_inputs(inputs)
    if options.band_files:
        paths = first_band_files(paths, options.band_files)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, options.device)
    return _predict_all(loaded, paths, out, options, log)
