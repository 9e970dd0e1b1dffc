"""Predict segmentation masks for images of any size with a trained model.

Writes, per input, ``<stem>_mask`` (class indices; 255 = nodata where the input is nodata),
``<stem>_color`` (palette rendering) and optionally ``<stem>_confidence``,
``<stem>_probabilities`` and ``<stem>_overlay`` into --out: PNG for PNG/JPEG inputs,
GeoTIFF with the input's CRS, transform and nodata for every other raster (--format cog:
Cloud-Optimised GeoTIFF). --polygons FILE.gpkg|FILE.geojson also vectorises each mask (one
feature per connected region of a class but the background, regions under --min-area 4
pixels merged into their neighbours; see engine/infer/polygons.py for the CRS and units).
Rasters are processed in strips, and rasters wider than --band-width in column bands, so
memory does not grow with the raster size.

Bands: the model reads the bands it was trained on (the export's dataset.json), by name
from the file's band descriptions, else by position when the counts agree; --bands chooses
them (numbers or names) for other files. Pixel values are used at native precision, never
rescaled (see engine/infer/bands.py). Bands kept one per file (red_X.TIF, green_X.TIF, ...):
--band-files red,green,blue,nir as for the build; --input takes the first band's files (a
folder or glob may hold the others: they are skipped), the band names are these names.

--input takes files, globs and folders (a folder: its .tif/.png/.jpg/... files). Outputs never
overwrite an input: --out may be the input folder as long as no output name is an input.
--values original writes the dataset's own label values in <stem>_mask instead of class
indices (from the model's dataset.json: integer values as uint8/uint16, colour-coded classes
as RGB; see engine/infer/values.py for ignored pixels).

ONNX: --model model.onnx (written by terraseg export) runs the same sliding window on
onnxruntime (CPU; CUDA with --device cuda when onnxruntime has it), with the bands, classes
and window recorded in the file's metadata; --amp does not apply.

Limits, checked before anything is written: every input's rows x cols against
TERRASEG_MAX_PIXELS (default 1.5 G pixels, the shard builder's limit; --max-pixels raises it
for one run, see engine/infer/limits.py), and, just before each input, the free space of
--out against its outputs' uncompressed size (with the *.bands staging of rasters wider than
--band-width, the COG copy): "OUT: needs ~X GB for RASTER, Y GB free".

Stopping: Ctrl-C, SIGTERM, an error or a full disk ("no space left on device") removes the
unfinished input's temporary files (*.partial, *.bands) and an --out folder the run created
if it stays empty; inputs and the outputs of finished inputs stay. Exit codes: 0 done,
2 error (one line: "error: ..."), 130 Ctrl-C (SIGINT), 143 SIGTERM.

Example:
    python launch/predict.py --model runs/dubai --input "scenes/*.tif" --out preds --tta flip
    python launch/predict.py --model runs/dubai/best --input scenes/ --out preds --values original
    python launch/predict.py --model runs/s2 --input S2/chip.tif --out preds --format cog \
        --polygons preds/chip.gpkg --simplify 1
    python launch/predict.py --model runs/rgbn --input "scene/red_*.TIF" --out preds \
        --band-files red,green,blue,nir

STAC items instead of --input (docs/stac.md): --stac ITEMS or --stac-api URL; each item's
assets (--assets, default the model's band names matched to asset keys and eo:bands names)
are read by windows onto one grid and predicted into <item id>_mask.tif (a COG), and a STAC
catalog of the predictions (catalog.json, one item per mask linked to its source) is written
into --out:
    python launch/predict.py --model runs/s2 --stac items.json --out preds
"""

import argparse
import signal
import sys

from engine.cli import HelpFormatter
from engine.commands.stac_args import (
    add_stac_arguments,
    asset_list,
    check_stac_arguments,
    stac_items,
    uses_stac,
)
from engine.errors import UserError
from engine.infer.outputs import FORMATS
from engine.infer.polygons import DEFAULT_MIN_AREA
from engine.infer.run import PredictOptions, predict_files
from engine.infer.session import Interrupted, signals_raise
from engine.infer.sliding import AMP_DTYPES
from engine.infer.values import VALUE_MODES
from engine.infer.windows import TTA_MODES


def parse_nodata(text: str) -> float:
    """``--nodata``: a number or ``nan``."""
    try:
        return float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a number or nan: {text!r}") from error


def band_file_names(text: str) -> tuple[str, ...]:
    """``--band-files``: distinct band names, comma-separated (a number names no file)."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names) or any(name.isdigit() for name in names):
        raise argparse.ArgumentTypeError(f"give band names, not numbers or blanks: {text!r}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"band names repeat: {text!r}")
    return names


def positive_int(text: str) -> int:
    """``--max-pixels``: a positive integer (``1_500_000_000`` or ``1500000000``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults shown by ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="run folder, export folder (RUN/best), model.safetensors, or an ONNX export "
        "(model.onnx, run on onnxruntime)",
    )
    parser.add_argument(
        "--input",
        nargs="+",
        help="image file(s), glob(s) (quote them) or folder(s) (their raster files); or --stac",
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
    add_output_options(parser)
    add_stac_arguments(
        parser,
        "with --stac/--stac-api: the bands to read, by asset key or eo:bands name or\n"
        "common name (default: the model's band names)",
    )
    return parser


STAC_OPTIONS = (
    "stac", "stac_api", "collections", "bbox", "datetime", "query", "max_items", "assets",
    "resolution",
)  # fmt: skip


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """What is written, and the checks on the inputs."""
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
        default=DEFAULT_MIN_AREA,
        help="with --polygons: regions of fewer pixels join their largest neighbour (sieve),\n"
        "or are dropped when none is that large; 0 keeps every region",
    )
    parser.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        help="with --polygons: simplification tolerance in pixel widths (0 = none); edges\n"
        "shared by two polygons are simplified once, so neighbours still meet",
    )
    parser.add_argument(
        "--polygon-classes",
        default="foreground",
        help="with --polygons: foreground (every class but the background: the class named\n"
        "background, else the first), all, or class names (comma-separated)",
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
        "--band-files",
        type=band_file_names,
        help="bands kept one per file: comma list of band names (red,green,blue,nir); "
        "--input gives the first band's files, the others replace that name in the file name",
    )
    parser.add_argument(
        "--nodata", type=parse_nodata, help="input nodata value overriding the file's (or nan)"
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        help="largest input in pixels (rows x cols), checked from the headers before "
        "anything is written (default: TERRASEG_MAX_PIXELS, else 1,500,000,000); "
        "PNG/JPEG inputs, decoded whole, stay under TERRASEG_MAX_PIXELS",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def predict_options(args: argparse.Namespace) -> PredictOptions:
    """The per-file settings of parsed arguments (all but --model, --input and --out)."""
    skipped = ("model", "input", "out", *STAC_OPTIONS)
    settings = {k: v for k, v in vars(args).items() if k not in skipped}
    settings["progress"] = not settings.pop("no_progress")
    return PredictOptions(**settings)


def _predict_stac(args: argparse.Namespace) -> None:
    """``--stac``/``--stac-api``: predict each item and write the predictions' catalog."""
    from engine.infer.stac_predict import predict_items

    items, _ = stac_items(args)
    predict_items(args.model, items, args.out, predict_options(args),
                  assets=asset_list(args.assets), resolution=args.resolution)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_stac_arguments(parser, args)
    if bool(args.input) == uses_stac(args):
        parser.error("give --input, or --stac/--stac-api")
    if uses_stac(args) and args.band_files:
        parser.error("--band-files does not go with --stac/--stac-api (use --assets)")
    try:
        with signals_raise(signal.SIGINT, signal.SIGTERM):
            if uses_stac(args):
                _predict_stac(args)
            else:
                predict_files(args.model, args.input, args.out, predict_options(args))
    except Interrupted as stop:
        print(f"error: {stop}", file=sys.stderr)
        return stop.exit_code
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
