"""Export a trained model to a self-contained ONNX file (QGIS Deepness, onnxruntime).

The file takes the raw bands in their native units (float32 [B, C, H, W], the model's bands
in its order, or --input-bands) and returns class probabilities [B, N, H, W] (--output
labels: int64 [B, H, W]); band selection, nodata, normalisation and the softmax are inside.
Its metadata holds the classes (names, colours, values), the bands (names, dtype, nodata,
statistics), the tile size and overlap, the ground resolution when given, terraseg's
version, and the keys QGIS's Deepness plugin reads (see docs/export.md).

Batch, height and width are dynamic (sides: multiples of the model's size_divisor), except
with --fixed-size (height = width = --tile: what Deepness needs, as it takes the tile size
from the input shape) and for ResUNet-a (fixed to its training crop).

Example:
    terraseg export --model runs/dubai/best --format onnx --out dubai.onnx --fixed-size \
        --tile 512 --resolution 50
    terraseg export --model runs/s2 --format onnx --out s2.onnx \
        --input-bands B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B10,B11,B12
    terraseg predict --model dubai.onnx --input scene.tif --out preds
"""

import argparse
import sys

from engine.cli import HelpFormatter
from engine.errors import UserError
from engine.export.graph import OUTPUTS
from engine.export.onnx import EXPORTERS, export_onnx, written_metadata


def band_names(text: str) -> list[str]:
    """``--input-bands``: band names, comma-separated."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"blank band name in {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command line (defaults shown by ``--help``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", required=True, help="run folder, RUN/best or model.safetensors")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="file format")
    parser.add_argument("--out", required=True, help="the file to write (e.g. model.onnx)")
    parser.add_argument(
        "--input-bands", type=band_names,
        help="the input layer's bands by name, comma-separated (a superset of the model's; "
        "default: exactly the model's bands)",
    )  # fmt: skip
    parser.add_argument("--output", default="probabilities", choices=OUTPUTS, help="output")
    parser.add_argument(
        "--tile", type=int,
        help="tile size recorded for tiled prediction (default: the training crop for "
        "ResUNet-a, else 1024)",
    )  # fmt: skip
    parser.add_argument("--overlap", type=float, default=0.25, help="overlap fraction recorded")
    parser.add_argument(
        "--fixed-size", action="store_true", help="fix height and width to --tile (Deepness)"
    )
    parser.add_argument("--resolution", type=float, help="ground resolution in cm per pixel "
                        "(default: the training images' median, when georeferenced)")  # fmt: skip
    parser.add_argument("--exporter", default="torchscript", choices=EXPORTERS,
                        help="PyTorch's ONNX exporter")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        path = export_onnx(
            args.model, args.out, input_bands=args.input_bands, output=args.output,
            tile=args.tile, overlap=args.overlap, fixed_size=args.fixed_size,
            resolution_cm=args.resolution, exporter=args.exporter,
        )  # fmt: skip
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    if not args.fixed_size:
        print("note: height and width are dynamic; for QGIS Deepness export with --fixed-size")
    if args.resolution is None and "resolution" not in written_metadata(path):
        print("note: the shards record no ground resolution (not georeferenced): give "
              "--resolution CM_PER_PX, or Deepness uses the resolution set in its panel")
    return 0
