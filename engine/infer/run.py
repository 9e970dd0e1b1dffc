"""A prediction run over input files: what ``launch/predict.py`` does, as a library.

:func:`predict_files` takes :class:`PredictOptions` (the script's options, same names) and:

1. expands ``input`` (files, globs, folders) and loads the model;
2. before anything is written, checks every input's header against the pixel limit
   (:mod:`engine.infer.limits`), the ``--polygons`` request, and that no output would
   overwrite an input;
3. per input, just before writing it: checks the free disk space for its outputs, then
   predicts it in strips into ``<output>.partial`` files renamed when all are complete.

Every exit path removes what the run created and nothing else: on an error, Ctrl-C
(``KeyboardInterrupt``) or a signal turned into :class:`Interrupted` (:func:`signals_raise`,
installed by ``launch/predict.py``), the input being written loses its temporary files
(``*.partial``, ``*.bands``: only those that did not exist before it started), and an
output folder the run created is removed again when it is empty. Inputs, and the outputs
of inputs that completed, stay. A full disk is a one-line ``DiskFullError`` ("no space
left on device" with the path).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from engine.data.sources.formats import is_raster, suffix_list
from engine.errors import UserError
from engine.evaluate.shard_eval import context_window
from engine.infer.bands import model_normalization, open_model_raster
from engine.infer.limits import check_free_space, check_pixel_limits, disk_need
from engine.infer.outputs import output_paths, planned_format, temporary_paths
from engine.infer.polygons import polygon_driver, write_polygons
from engine.infer.sliding import predict_raster, resolve_device
from engine.infer.values import original_values
from engine.infer.windows import is_banded
from engine.infer.writer import OUTPUT_KINDS, format_for, prediction_writer
from engine.render.colors import class_info, display_rgb
from engine.train.export import load_exported

DEFAULT_TILE = 1024  # predict windows (a network that needs its training crop gets that)


@dataclass
class PredictOptions:
    """The options of ``launch/predict.py`` (same names and defaults; see its ``--help``)."""

    model: str
    input: list[str]
    out: str
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
    polygons: str | None = None
    min_area: float = 0.0
    simplify: float = 0.0
    overlay: bool = False
    alpha: float = 0.5
    values: str = "index"
    bands: list[str] | None = None
    nodata: float | None = None
    max_pixels: int | None = None
    no_progress: bool = False

    def output_options(self) -> dict[str, bool]:
        """The optional outputs chosen, as :func:`~engine.infer.outputs.output_paths` takes them."""
        return {
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "overlay": self.overlay,
        }


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM) stopping the run; exit code ``128 + signal``.

    Not an ``Exception``, so nothing catches it by accident, and ``finally`` blocks and
    context managers clean up on its way out.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; the unfinished outputs were removed")


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Turn ``signums`` into :class:`Interrupted` inside the block (main thread only).

    After the first, these signals are ignored until the block ends, so the cleanup that
    the exception runs is not interrupted in turn. The previous handlers come back after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signums}

    def stop(signum: int, _frame: Any) -> None:
        for other in signums:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    for signum in signums:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input rasters from files, globs and folders (a folder: its raster files).

    Raises:
        UserError: when a pattern matches nothing, there are no inputs at all, or two
            inputs would write the same outputs.
    """
    paths: list[Path] = []
    kinds = suffix_list()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if is_raster(p))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise UserError(f"{pattern}: folder holds no raster files ({kinds})")
        elif path.is_file():
            matches = [path]
        else:
            found = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in found if p.is_file() and is_raster(p)]
            if not matches:
                raise UserError(f"{pattern}: no raster file matches ({kinds})")
        paths.extend(matches)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    paths = list(unique.values())
    if not paths:
        raise UserError("no input files")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise UserError(f"{stems[path.stem]} and {path} would write the same outputs")
        stems[path.stem] = path
    return paths


def check_outputs(folder: Path, inputs: list[Path], options: PredictOptions) -> None:
    """Refuse when an output path is one of the inputs.

    Raises:
        UserError: naming the output, its input and the input it would overwrite.
    """
    resolved = {path.resolve(): path for path in inputs}
    for path in inputs:
        for fmt in planned_format(path, options.format):
            for target in output_paths(folder, path.stem, fmt, **options.output_options()):
                clash = resolved.get(target.resolve())
                if clash is None and target.exists():
                    clash = next((p for p in inputs if os.path.samefile(p, target)), None)
                if clash is not None:
                    raise UserError(
                        f"{target}: output of {path} would overwrite the input {clash}; "
                        "choose another --out"
                    )


@contextlib.contextmanager
def output_folder(out: str) -> Iterator[Path]:
    """Create ``out`` (and missing parents); on a failure, remove those it created if empty.

    Raises:
        UserError: when ``out`` is a file, cannot be created or is not writable.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create the folder ({error.strerror})") from error
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"--out {out}: folder is not writable")
        yield folder
    except BaseException:
        for path in created:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


@contextlib.contextmanager
def removing_temporaries(paths: list[Path]) -> Iterator[None]:
    """On any exception, delete those of ``paths`` that did not exist before the block."""
    existed = {path for path in paths if os.path.lexists(path)}
    try:
        yield
    except BaseException:
        for path in paths:
            if path not in existed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise


def polygon_targets(options: PredictOptions, inputs: list[Path], values: Any) -> dict[Path, Path]:
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


@dataclass
class LoadedModel:
    """The exported model with what prediction needs from its ``dataset.json``."""

    exported: Any
    device: Any
    names: list[str]
    palette: list
    num_classes: int
    normalization: Any
    values: Any
    tile: int


def load_model(options: PredictOptions) -> LoadedModel:
    """Load the export and check its classes, bands and (``--values original``) values.

    Raises:
        UserError: naming the export's file when its record does not fit the model.
    """
    device = resolve_device(options.device)
    exported = load_exported(options.model, device=device)
    manifest = exported.manifest
    where = f"{exported.path}/dataset.json"
    try:
        names, palette = class_info(manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{where}: bad classes ({error})") from error
    num_classes = int(exported.spec["num_classes"])
    if len(names) != num_classes:
        raise UserError(
            f"{exported.path}: the model has {num_classes} classes but dataset.json lists "
            f"{len(names)}"
        )
    in_channels = int(exported.spec.get("in_channels", 3))
    normalization = model_normalization(manifest, in_channels, where)
    values = original_values(manifest, where) if options.values == "original" else None
    tile = options.tile
    if tile is None:
        tile = context_window(exported.model, exported.train_crop) or DEFAULT_TILE
    return LoadedModel(exported, device, names, palette, num_classes, normalization, values, tile)


def _kinds(options: PredictOptions) -> list[str]:
    chosen = {"mask": True, "color": True, **options.output_options()}
    return [kind for kind in OUTPUT_KINDS if chosen[kind]]


def _write_raster(reader: Any, out: Path, model: LoadedModel, options: PredictOptions,
                  desc: str) -> dict[str, Path]:  # fmt: skip
    """Predict one opened raster into its outputs; return output kind → path."""
    with prediction_writer(
        reader,
        out,
        model.palette,
        fmt=options.format,
        confidence=options.confidence,
        probabilities=options.probabilities,
        overlay=options.overlay,
        overlay_alpha=options.alpha,
        overlay_rgb=partial(display_rgb, normalization=model.normalization, channels_last=True),
        mask_values=model.values,
    ) as writer:
        predict_raster(
            model.exported.model,
            reader,
            writer,
            num_classes=model.num_classes,
            normalization=model.normalization,
            tile=model.tile,
            overlap=options.overlap,
            batch_size=options.batch,
            tta=options.tta,
            device=model.device,
            amp_dtype=options.amp,
            weighting=options.weighting,
            band_width=options.band_width or None,
            progress=not options.no_progress,
            desc=desc,
        )
    return writer.paths


def predict_file(
    path: Path,
    out: Path,
    model: LoadedModel,
    options: PredictOptions,
    polygons: Path | None = None,
    desc: str | None = None,
) -> str:
    """Predict one input into ``out`` (its free space checked first); return a summary.

    Raises:
        UserError: for an input without the model's bands, a GeoJSON request for a raster
            without CRS, too little free disk, or a failed write (a full disk included);
            the input's temporary files are removed first.
    """
    reader = open_model_raster(
        path, model.normalization, bands=options.bands, nodata=options.nodata
    )
    with reader:
        height, width = reader.shape[:2]
        georef = reader.georef
        if polygons and polygon_driver(polygons) == "GeoJSON" and not (georef or {}).get("crs"):
            raise UserError(
                f"{path}: no CRS, but GeoJSON coordinates are longitude/latitude "
                f"(RFC 7946); give --polygons a .gpkg name"
            )
        fmt = format_for(path, height, width, options.format)
        banded = is_banded(width, model.tile, options.overlap, options.band_width or None)
        kinds = _kinds(options)
        need = disk_need(height, width, fmt, kinds, num_classes=model.num_classes,
                         mask_values=model.values, banded=banded)  # fmt: skip
        check_free_space(out, path, need)
        outputs = output_paths(out, path.stem, fmt, **options.output_options())
        temporaries = temporary_paths(outputs, path.stem)
        if polygons:
            temporaries.append(polygons.with_name(f"{polygons.stem}.partial{polygons.suffix}"))
        with removing_temporaries(temporaries):
            written = _write_raster(reader, out, model, options, desc or path.name)
            summary = ", ".join(p.name for p in written.values())
            if polygons:
                count = write_polygons(
                    written["mask"],
                    polygons,
                    model.names,
                    values=model.values,
                    min_area=options.min_area,
                    simplify=options.simplify,
                    georef=georef,
                )
                summary += f", {polygons} ({count} polygons)"
    return f"{path} ({width}x{height}) -> {summary}"


def predict_files(options: PredictOptions, log: Callable[[str], Any] = print) -> None:
    """Predict every input of ``options`` (see the module notes); ``log`` gets one line each.

    Raises:
        UserError: bad inputs, model, settings, sizes or disk space (before anything is
            written), or a failed write; what the run created is removed first.
        Interrupted: from a signal (see :func:`signals_raise`), after the same cleanup.
    """
    inputs = expand_inputs(options.input)
    model = load_model(options)
    check_pixel_limits(inputs, options.max_pixels)
    with output_folder(options.out) as out:
        check_outputs(out, inputs, options)
        polygons = polygon_targets(options, inputs, model.values)  # may be inside --out
        log(
            f"model {model.exported.spec['arch']} ({model.num_classes} classes) on "
            f"{model.device}; {len(inputs)} input(s); {model.tile}² windows"
        )
        for number, path in enumerate(inputs, 1):
            where = f"[{number}/{len(inputs)}]"
            line = predict_file(
                path, out, model, options, polygons.get(path), f"{where} {path.name}"
            )
            log(f"{where} {line}")
