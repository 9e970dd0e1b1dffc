"""Predict segmentation masks for images of any size with a trained model.

Writes, per input, ``<stem>_mask`` (class indices), ``<stem>_color`` (palette rendering) and
optionally ``<stem>_confidence`` and ``<stem>_overlay`` into --out: PNG for PNG/JPEG inputs,
TIFF (GeoTIFF with the input's CRS and transform) for TIFF inputs and very large images.
Rasters are processed in strips, and rasters wider than --band-width in column bands, so
memory does not grow with the raster size.

Example:
    python launch/predict.py --model runs/dubai --input "scenes/*.tif" --out preds --tta flip
"""

import argparse
import glob
import sys
from pathlib import Path

from engine.data.raster_base import RasterError
from engine.data.rasters import open_raster
from engine.infer.sliding import AMP_DTYPES, predict_raster, resolve_device
from engine.infer.windows import TTA_MODES
from engine.infer.writer import prediction_writer
from engine.render.colors import class_info
from engine.train.export import ExportError, load_exported


def expand_inputs(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches and Path(pattern).exists():
            matches = [pattern]
        if not matches:
            raise FileNotFoundError(f"{pattern}: no input matches")
        paths.extend(Path(m) for m in matches if Path(m).is_file())
    stems = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(f"{stems[path.stem]} and {path} would write the same outputs")
        stems[path.stem] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="run folder, export folder (RUN/best) or model.safetensors"
    )
    parser.add_argument(
        "--input", required=True, nargs="+", help="image file(s) or glob(s) (quote globs)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile", type=int, default=1024, help="window edge in pixels")
    parser.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    parser.add_argument("--tta", default="none", choices=TTA_MODES)
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp",
        default="none",
        choices=sorted(AMP_DTYPES),
        help="autocast dtype for the forward pass",
    )
    parser.add_argument("--weighting", default="gaussian", choices=("gaussian", "uniform"))
    parser.add_argument(
        "--band-width",
        type=int,
        default=16384,
        help="columns per band for wider rasters (bounds memory; 0 = one band)",
    )
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", "png", "tif"),
        help="output format (auto: TIFF for TIFF or very large inputs)",
    )
    parser.add_argument("--confidence", action="store_true", help="also write max-probability maps")
    parser.add_argument(
        "--overlay", action="store_true", help="also write mask-over-image overlays"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--uint16-max", type=int, help="uint16 input value that maps to 255")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    try:
        inputs = expand_inputs(args.input)
        device = resolve_device(args.device)
        exported = load_exported(args.model, device=device)
        manifest = exported.manifest
        names, palette = class_info(manifest)
        num_classes = int(exported.spec["num_classes"])
        if len(names) != num_classes:
            raise ValueError(f"model has {num_classes} classes but the manifest lists {len(names)}")
        for key in ("mean", "std"):
            if key not in manifest:
                raise ValueError(f"{exported.path}/dataset.json: no {key!r} for normalisation")
        print(
            f"model {exported.spec['arch']} ({num_classes} classes) on {device}; "
            f"{len(inputs)} input(s)"
        )
        for number, path in enumerate(inputs, 1):
            with open_raster(path, uint16_max=args.uint16_max) as reader:
                height, width = reader.shape[:2]
                with prediction_writer(
                    reader,
                    args.out,
                    palette,
                    fmt=args.format,
                    confidence=args.confidence,
                    overlay=args.overlay,
                    overlay_alpha=args.alpha,
                ) as writer:
                    predict_raster(
                        exported.model,
                        reader,
                        writer,
                        num_classes=num_classes,
                        mean=manifest["mean"],
                        std=manifest["std"],
                        tile=args.tile,
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
            print(f"[{number}/{len(inputs)}] {path} ({width}x{height}) -> {written}")
    except (ExportError, RasterError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
