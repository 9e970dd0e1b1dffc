"""Predict segmentation masks for images of any size with a trained model.

Writes, per input, ``<stem>_mask`` (class indices; 255 = nodata where the input is nodata),
``<stem>_color`` (palette rendering) and optionally ``<stem>_confidence``,
``<stem>_probabilities`` and ``<stem>_overlay`` into --out: PNG for PNG/JPEG inputs,
GeoTIFF with the input's CRS, transform and nodata for every other raster (--format cog:
Cloud-Optimised GeoTIFF). --polygons FILE.gpkg|FILE.geojson also vectorises each mask (one
feature per connected region; see engine/infer/polygons.py for the CRS and units).
Rasters are processed in strips, and rasters wider than --band-width in column bands, so
memory does not grow with the raster size.

Bands: the model reads the bands it was trained on (the export's dataset.json), by name
from the file's band descriptions, else by position when the counts agree; --bands chooses
them (numbers or names) for other files. Pixel values are used at native precision, never
rescaled (see engine/infer/bands.py).

--input takes files, globs and folders (a folder: its .tif/.png/.jpg/... files). Outputs never
overwrite an input: --out may be the input folder as long as no output name is an input.
--values original writes the dataset's own label values in <stem>_mask instead of class
indices (from the model's dataset.json: integer values as uint8/uint16, colour-coded classes
as RGB; see engine/infer/values.py for ignored pixels).

Example:
    python launch/predict.py --model runs/dubai --input "scenes/*.tif" --out preds --tta flip
    python launch/predict.py --model runs/dubai/best --input scenes/ --out preds --values original
    python launch/predict.py --model runs/s2 --input S2/chip.tif --out preds --format cog \
        --polygons preds/chip.gpkg --min-area 4
"""

import argparse
import glob
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

from engine.cli import HelpFormatter
from engine.data.raster_base import PIL_SUFFIXES, TIFF_SUFFIXES
from engine.errors import UserError
from engine.evaluate.shard_eval import context_window
from engine.infer.bands import model_normalization, open_model_raster
from engine.infer.outputs import output_paths, planned_format
from engine.infer.polygons import polygon_driver, write_polygons
from engine.infer.sliding import AMP_DTYPES, predict_raster, resolve_device
from engine.infer.values import VALUE_MODES, original_values
from engine.infer.windows import TTA_MODES
from engine.infer.writer import FORMATS, prediction_writer
from engine.render.colors import class_info, display_rgb
from engine.train.export import load_exported

RASTER_SUFFIXES = TIFF_SUFFIXES | PIL_SUFFIXES
DEFAULT_TILE = 1024  # predict windows (a network that needs its training crop gets that)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input rasters from files, globs and folders (a folder: its raster files).

    Raises:
        UserError: when a pattern matches nothing, there are no inputs at all, or two
            inputs would write the same outputs.
    """
    paths: list[Path] = []
    kinds = ", ".join(sorted(RASTER_SUFFIXES))
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise UserError(f"{pattern}: folder holds no raster files ({kinds})")
        elif path.is_file():
            matches = [path]
        else:
            found = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in found if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES]
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


def prepare_out(out: str, inputs: list[Path], args: argparse.Namespace) -> Path:
    """Create --out and check that no output would overwrite an input.

    Raises:
        UserError: when --out is a file, cannot be created or written, or an output path
            is one of the inputs.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create the folder ({error.strerror})") from error
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: folder is not writable")
    resolved = {path.resolve(): path for path in inputs}
    for path in inputs:
        for fmt in planned_format(path, args.format):
            options = {
                "confidence": args.confidence,
                "probabilities": args.probabilities,
                "overlay": args.overlay,
            }
            for target in output_paths(folder, path.stem, fmt, **options):
                clash = resolved.get(target.resolve())
                if clash is None and target.exists():
                    clash = next((p for p in inputs if os.path.samefile(p, target)), None)
                if clash is not None:
                    raise UserError(
                        f"{target}: output of {path} would overwrite the input {clash}; "
                        "choose another --out"
                    )
    return folder


def parse_nodata(text: str) -> float:
    """``--nodata``: a number or ``nan``."""
    try:
        return float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a number or nan: {text!r}") from error


def polygon_targets(args: argparse.Namespace, inputs: list[Path], values: Any) -> dict[Path, Path]:
    """Input → ``--polygons`` file (``{stem}`` replaced by the input's stem); checked early.

    Raises:
        UserError: for an unknown suffix, several inputs without ``{stem}``, a folder that
            is missing or not writable, negative --min-area/--simplify, or RGB-valued masks
            (--values original of colour classes).
    """
    if not args.polygons:
        return {}
    polygon_driver(args.polygons)
    if len(inputs) > 1 and "{stem}" not in args.polygons:
        raise UserError(
            f"--polygons {args.polygons}: {len(inputs)} inputs would write the same file; "
            "put {stem} in the name"
        )
    if args.min_area < 0 or args.simplify < 0:
        raise UserError("--min-area and --simplify must be >= 0")
    if values is not None and values.ndim == 2:
        raise UserError("--polygons needs a one-band mask: colour-coded --values original masks")
    targets = {path: Path(args.polygons.replace("{stem}", path.stem)) for path in inputs}
    for target in targets.values():
        folder = target.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(
                f"--polygons {target}: folder {folder} does not exist or is not writable"
            )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model", required=True, help="run folder, export folder (RUN/best) or model.safetensors"
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="image file(s), glob(s) (quote them) or folder(s) (their raster files)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--tile",
        type=int,
        help="window edge in pixels (default: 1024, or the crop it was trained on for a "
        "network whose output depends on its input's extent: ResUNet-a)",
    )
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    parser.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation")
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        default="none",
        choices=sorted(AMP_DTYPES),
        help="autocast dtype for the forward pass",
    )
    parser.add_argument(
        "--weighting",
        default="gaussian",
        choices=("gaussian", "uniform"),
        help="blending of overlapping windows",
    )
    parser.add_argument(
        "--band-width",
        type=int,
        default=16384,
        help="columns per band for wider rasters (bounds memory; 0 = one band). A strip "
        "holds tile x (band width + tile) pixels of every input band, twice while read: "
        "lower it for many-band 16-bit rasters (13 int16 bands: ~9x the bytes of RGB)",
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", *FORMATS),
        help="output format: png, tif (GeoTIFF) or cog (Cloud-Optimised GeoTIFF); auto: PNG "
        "for PNG/JPEG inputs up to 64 M pixels, GeoTIFF otherwise",
    )
    parser.add_argument("--confidence", action="store_true", help="also write max-probability maps")
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write the class probabilities (float32, one band per class; tif/cog)",
    )
    parser.add_argument(
        "--polygons",
        metavar="FILE",
        help="also vectorise each mask: FILE.gpkg (the raster's CRS) or FILE.geojson "
        "(EPSG:4326); with several inputs FILE must contain {stem}",
    )
    parser.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        help="with --polygons: drop regions of fewer pixels than this",
    )
    parser.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="with --polygons: simplification tolerance in pixel widths (0 = none)",
    )
    parser.add_argument(
        "--overlay", action="store_true", help="also write mask-over-image overlays"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument(
        "--values",
        default="index",
        choices=VALUE_MODES,
        help="mask values: class indices, or the dataset's own label values (original)",
    )
    parser.add_argument(
        "--bands",
        nargs="+",
        help="bands to read, in the model's channel order: 1-based numbers or band names "
        "(comma- or space-separated; default: the model's band names, or by position for "
        "files without band descriptions)",
    )
    parser.add_argument(
        "--nodata", type=parse_nodata, help="input nodata value overriding the file's (or nan)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    try:
        inputs = expand_inputs(args.input)
        device = resolve_device(args.device)
        exported = load_exported(args.model, device=device)
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
        values = original_values(manifest, where) if args.values == "original" else None
        out = prepare_out(args.out, inputs, args)
        polygons = polygon_targets(args, inputs, values)
        tile = args.tile
        if tile is None:
            tile = context_window(exported.model, exported.train_crop) or DEFAULT_TILE
        print(
            f"model {exported.spec['arch']} ({num_classes} classes) on {device}; "
            f"{len(inputs)} input(s); {tile}² windows"
        )
        for number, path in enumerate(inputs, 1):
            opened = open_model_raster(path, normalization, bands=args.bands, nodata=args.nodata)
            with opened as reader:
                height, width = reader.shape[:2]
                georef = reader.georef
                target = polygons.get(path)
                if target and polygon_driver(target) == "GeoJSON" and not (georef or {}).get("crs"):
                    raise UserError(
                        f"{path}: no CRS, but GeoJSON coordinates are longitude/latitude "
                        f"(RFC 7946); give --polygons a .gpkg name"
                    )
                with prediction_writer(
                    reader,
                    out,
                    palette,
                    fmt=args.format,
                    confidence=args.confidence,
                    probabilities=args.probabilities,
                    overlay=args.overlay,
                    overlay_alpha=args.alpha,
                    overlay_rgb=partial(
                        display_rgb, normalization=normalization, channels_last=True
                    ),
                    mask_values=values,
                ) as writer:
                    predict_raster(
                        exported.model,
                        reader,
                        writer,
                        num_classes=num_classes,
                        normalization=normalization,
                        tile=tile,
                        overlap=args.overlap,
                        batch_size=args.batch,
                        tta=args.tta,
                        device=device,
                        amp_dtype=args.amp,
                        weighting=args.weighting,
                        band_width=args.band_width or None,
                        progress=not args.no_progress,
                        desc=f"[{number}/{len(inputs)}] {path.name}",
                    )
            written = ", ".join(p.name for p in writer.paths.values())
            if path in polygons:
                count = write_polygons(
                    writer.paths["mask"],
                    polygons[path],
                    names,
                    values=values,
                    min_area=args.min_area,
                    simplify=args.simplify,
                    georef=georef,
                )
                written += f", {polygons[path]} ({count} polygons)"
            print(f"[{number}/{len(inputs)}] {path} ({width}x{height}) -> {written}")
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
