"""Peak memory and speed of streamed prediction on a large synthetic raster.

Writes a ``HEIGHT x WIDTH`` RGB uint8 GeoTIFF strip by strip (rasterio; never held in memory),
then predicts it in a fresh child process with a tiny pointwise model through
``open_raster`` -> ``predict_raster`` -> ``PredictionWriter`` (TIFF mask + colour), and
reports the child's peak resident memory (``VmHWM``) and timings as JSON.

    OMP_NUM_THREADS=1 python bench/bench_inference_memory.py --size 20000
    python bench/bench_inference_memory.py --height 1024 --width 65536 --band-width 4096

The input is 1.2 GB at 20000² and written to --workdir (default: a temporary folder,
deleted afterwards unless --keep; --reuse skips rewriting an input that is already there).
Peak memory depends on neither the height nor, beyond ``--band-width`` columns, the width:
only on the band width, tile, batch and classes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_raster(
    path: Path, height: int, width: int, compression: str | None, rows: int = 512
) -> float:
    """Write a smooth-plus-noise RGB GeoTIFF of ``height x width`` strip by strip; return seconds.

    Written through rasterio in windows of ``rows`` rows (tiled 256² when compressed), so the
    raster is never held in memory.
    """
    import rasterio
    from rasterio.windows import Window

    start = time.perf_counter()
    x = np.arange(width, dtype=np.float32)
    rng = np.random.default_rng(0)
    profile = dict(
        driver="GTiff", height=height, width=width, count=3, dtype="uint8", photometric="RGB",
        BIGTIFF="IF_SAFER",
    )  # fmt: skip
    if compression:
        rows = 256 * max(1, rows // 256)
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress=compression)
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(path, "w", **profile) as out:
        for row0 in range(0, height, rows):
            y = np.arange(row0, min(height, row0 + rows), dtype=np.float32)[:, None]
            base = 127 + 60 * np.sin(x[None, :] / 300.0) * np.cos(y / 410.0)
            block = np.empty((3, y.shape[0], width), np.uint8)
            for c in range(3):
                noise = rng.integers(-20, 21, size=(y.shape[0], width), dtype=np.int16)
                block[c] = np.clip(base + 25 * c + noise, 0, 255).astype(np.uint8)
            out.write(block, window=Window(0, row0, width, y.shape[0]))
    return time.perf_counter() - start


CHILD = r"""
import json, sys, time
import torch
from engine.data.sources.rasters import open_raster
from engine.infer.outputs import OutputSpec
from engine.infer.sliding import SlidingOptions, predict_raster, rgb_normalization
from engine.infer.writer import prediction_writer

torch.manual_seed(0)
args = json.loads(sys.argv[1])
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 1))
palette = ["#50E3C2", "#F5A623", "#DE597F", "#D0021B", "#417505", "#9B9B9B"]
def high_water_mb():
    # VmHWM: this process's own peak (ru_maxrss keeps a parent's peak across fork + exec)
    with open("/proc/self/status") as status:
        return int(next(l for l in status if l.startswith("VmHWM:")).split()[1]) / 1024
base = high_water_mb()
start = time.perf_counter()
with open_raster(args["input"], backend=args["backend"]) as reader:
    with prediction_writer(reader, args["out"], palette, OutputSpec("tif")) as writer:
        options = SlidingOptions(tile=args["tile"], overlap=0.25, batch_size=args["batch"],
                                 band_width=args["band_width"], device="cpu")
        predict_raster(model, reader, writer, num_classes=6,
                       normalization=rgb_normalization([0.5] * 3, [0.25] * 3), options=options)
elapsed = time.perf_counter() - start
print(json.dumps({"peak_rss_mb": high_water_mb(), "rss_after_imports_mb": base,
                  "predict_s": elapsed,
                  "paths": {k: str(v) for k, v in writer.paths.items()}}))
"""


def run_child(
    input_path: Path, out: Path, tile: int, batch: int, backend: str, band_width: int | None
) -> dict:
    """Predict ``input_path`` in a fresh interpreter; return its JSON report."""
    args = {
        "input": str(input_path),
        "out": str(out),
        "tile": tile,
        "batch": batch,
        "backend": backend,
        "band_width": band_width,
    }
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"child failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000, help="edge of a square raster")
    parser.add_argument("--height", type=int, help="raster height (default: --size)")
    parser.add_argument("--width", type=int, help="raster width (default: --size)")
    parser.add_argument(
        "--band-width", type=int, default=16384, help="predict_raster's band width (0: one band)"
    )
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--backend", default="auto", choices=("auto", "rasterio"))
    parser.add_argument("--compression", default=None, help="e.g. deflate (default: none)")
    parser.add_argument("--workdir", help="folder for the input and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--reuse", action="store_true", help="reuse an input left by --keep")
    args = parser.parse_args()
    height, width = args.height or args.size, args.width or args.size
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="terraseg-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        source = workdir / f"synthetic_{height}x{width}.tif"
        if args.reuse and source.is_file():
            write_s = 0.0
        else:
            write_s = write_raster(source, height, width, args.compression)
        band_width = args.band_width or None
        report = run_child(source, workdir / "out", args.tile, args.batch, args.backend, band_width)
        import rasterio

        sizes = {}
        for kind, path in report["paths"].items():
            with rasterio.open(path) as dataset:
                sizes[kind] = [dataset.height, dataset.width, dataset.count]
        pixels = height * width
        report.update(
            {
                "height": height,
                "width": width,
                "band_width": band_width,
                "tile": args.tile,
                "batch": args.batch,
                "compression": args.compression or "none",
                "input_mb": source.stat().st_size / 2**20,
                "write_input_s": write_s,
                "mpix_per_s": pixels / 1e6 / report["predict_s"],
                "output_shapes": sizes,
                "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                "parent_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
        print(json.dumps(report, indent=2))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
