"""Inference: sliding-window speed against one whole-image pass, and memory against size.

Speed (in this process, contenders interleaved round by round): megapixels/s of
:func:`engine.infer.sliding.predict_probabilities` on one ``--image``² synthetic scene, for
overlaps 0, 0.25 and 0.5 and TTA ``none``/``flip``, against a single whole-image forward
pass with the same TTA (normalise, model, softmax, back to the host as float32
``[N, H, W]``: the same output). The ratio to the single pass is the price of tiling:
at overlap ``o`` an interior pixel is covered by ``1 / (1 - o)²`` windows, so unless
windows compute faster per pixel than a whole-image pass the ratio tends to ``(1 - o)²``
(0.56 at 0.25) on large images, and on small ones the whole windows needed to cover the
image weigh more. The table therefore also gives the window pixels computed per image pixel
and the speed per computed pixel against the single pass (1.0 = tiling costs nothing
beyond the extra pixels).

Memory (peak RSS, one fresh process per size): the streamed path ``open_raster`` →
``predict_raster`` → ``PredictionWriter`` on synthetic TIFFs (``N`` for ``N x N``, or
``HxW``), by running ``bench/bench_inference_memory.py`` per size (a pointwise model, so
the figure is the pipeline's memory, not the network's), with column bands of
``--mem-band-width``.

    python bench/bench_inference.py                          # CPU: resunet34, 512², tile 256
    python bench/bench_inference.py --device cuda --image 4096 --tile 1024 --batch 8 \\
        --amp bf16 --mem-sizes 4096,8192,16384 --mem-tile 1024
    python bench/bench_inference.py --no-speed --mem-tile 1024 --mem-band-width 4096 \\
        --mem-sizes 1024x4096,1024x16384,1024x65536,16384x1024
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    base_parser,
    environment,
    interleave,
    medians,
    print_table,
    setup,
    synchronize,
    write_results,
)

import archs
from archs import segmentation_logits
from engine.data.synthetic.scenes import make_scene
from engine.infer.sliding import (
    SlidingOptions,
    predict_probabilities,
    resolve_amp,
    rgb_normalization,
)
from engine.infer.windows import plan_axis
from engine.infer.windows import tta_transforms as transforms_for

NAME = "bench_inference"
NUM_CLASSES = 7
MEAN, STD = (0.45, 0.45, 0.42), (0.2, 0.2, 0.2)


@torch.no_grad()
def single_pass(
    model: torch.nn.Module,
    image: np.ndarray,
    tta: str,
    device: torch.device,
    amp: torch.dtype | None,
) -> np.ndarray:
    """The whole image, one forward pass per TTA transform: float32 ``[N, H, W]`` probabilities."""
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    total = None
    pairs = transforms_for(tta)
    for forward, inverse in pairs:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = segmentation_logits(model(forward(x)))
        probs = inverse(torch.softmax(logits.float(), dim=1))
        total = probs if total is None else total + probs
    assert total is not None
    return (total / len(pairs))[0].cpu().numpy()


def timed(fn, device: torch.device, megapixels: float) -> dict[str, float]:
    """Seconds and megapixels/s of one call."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mpix_per_s": megapixels / seconds}


def speed(args, device: torch.device) -> dict[str, Any]:
    """Interleaved megapixels/s of every (method, overlap, TTA) on one scene."""
    torch.manual_seed(0)
    model = archs.create_model(args.arch, NUM_CLASSES, 3, **args.options).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    amp = resolve_amp(args.amp)
    image, _ = make_scene(args.image, args.image, 0)
    megapixels = args.image * args.image / 1e6
    normalization = rgb_normalization(MEAN, STD)
    contenders = {}
    for tta in args.tta:
        contenders[f"single pass, tta {tta}"] = lambda t=tta: timed(
            lambda: single_pass(model, image, t, device, amp), device, megapixels
        )
        for overlap in args.overlaps:
            contenders[f"sliding {overlap:g}, tta {tta}"] = lambda o=overlap, t=tta: timed(
                lambda: predict_probabilities(
                    model,
                    image,
                    num_classes=NUM_CLASSES,
                    normalization=normalization,
                    options=SlidingOptions(
                        tile=args.tile,
                        overlap=o,
                        batch_size=args.batch,
                        tta=t,
                        device=device,
                        amp_dtype=amp,
                    ),
                ),
                device,
                megapixels,
            )
    for run in contenders.values():  # warm-up: allocator, kernels, lazy imports
        run()
    samples = interleave(contenders, args.rounds)
    results = {name: medians(runs) | {"rounds": runs} for name, runs in samples.items()}
    for name, m in results.items():
        tta = name.rsplit("tta ", 1)[1]
        m["vs_single_pass"] = m["mpix_per_s"] / results[f"single pass, tta {tta}"]["mpix_per_s"]
        m["computed_per_image_pixel"] = 1.0
        if name.startswith("sliding"):
            m["computed_per_image_pixel"] = window_pixels(
                args.image, args.tile, float(name.split()[1].rstrip(","))
            )
        m["work_normalised"] = m["vs_single_pass"] * m["computed_per_image_pixel"]
    print_table(
        f"Inference speed, {args.arch}, {args.image}² image, tile {args.tile}, batch "
        f"{args.batch}, amp {args.amp}, {device}, median of {args.rounds} interleaved rounds",
        [
            "method",
            "seconds",
            "Mpix/s",
            "× single pass (same TTA)",
            "window px / image px",
            "× single pass per computed px",
        ],
        [
            [
                n,
                m["seconds"],
                m["mpix_per_s"],
                m["vs_single_pass"],
                m["computed_per_image_pixel"],
                m["work_normalised"],
            ]
            for n, m in results.items()
        ],
    )
    return results


def window_pixels(size: int, tile: int, overlap: float) -> float:
    """Pixels the windows cover (with overlaps and padding) per image pixel, square image."""
    stride = max(1, tile - int(round(tile * overlap)))
    windows = len(plan_axis(size, tile, stride).starts)
    return (windows * tile) ** 2 / size**2


def memory(args) -> dict[str, Any]:
    """Peak RSS of the streamed raster path: ``bench_inference_memory.py`` once per size.

    Each size runs that script in a fresh interpreter (which writes the raster and predicts
    it in a child of its own), not in a child of this process: Linux carries the parent's
    peak RSS into a child's ``ru_maxrss`` across fork and exec, so a child of this process,
    which holds a model, would report this process's peak instead of its own.

    A failed run is retried up to twice and its errors are kept in the JSON.
    """
    script = Path(__file__).resolve().parent / "bench_inference_memory.py"
    env = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    results: dict[str, Any] = {}
    for size in args.mem_sizes:
        height, width = (int(n) for n in size.split("x")) if "x" in size else (int(size),) * 2
        command = [sys.executable, str(script), "--height", str(height), "--width", str(width)]
        command += ["--tile", str(args.mem_tile), "--batch", str(args.batch)]
        command += ["--band-width", str(args.mem_band_width)]
        errors = []
        for _ in range(3):
            run = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if run.returncode == 0:
                report = json.loads(run.stdout[run.stdout.index("{") :])
                report.pop("paths", None)
                results[size] = report | {"failed_attempts": errors}
                break
            errors.append(run.stderr[-1000:])
            print(f"memory run at {size} failed:\n{errors[-1][-300:]}", flush=True)
        else:
            results[size] = {"error": errors}
    done = [s for s in args.mem_sizes if "error" not in results[s]]
    first = results[done[0]]["peak_rss_mb"] if done else float("nan")
    print_table(
        f"Streamed prediction memory (pointwise model), tile {args.mem_tile}, overlap 0.25, "
        f"band width {args.mem_band_width or 'none'}, one process per size",
        ["raster (HxW)", "megapixels", "peak RSS MB", "Δ vs first MB", "Mpix/s", "retries"],
        [
            [
                f"{r['height']}x{r['width']}",
                r["height"] * r["width"] / 1e6,
                r["peak_rss_mb"],
                r["peak_rss_mb"] - first,
                r["mpix_per_s"],
                len(r["failed_attempts"]),
            ]
            for r in (results[s] for s in done)
        ],
    )
    return results


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--arch", default="resunet34")
    parser.add_argument("--options", type=json.loads, help="model options as JSON")
    parser.add_argument("--image", type=int, help="scene edge (default 512; quick 128)")
    parser.add_argument("--tile", type=int, help="window edge (default 256; quick 64)")
    parser.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--amp", help="none, bf16 or fp16 (default: bf16 on CUDA, else none)")
    parser.add_argument("--overlaps", default="0,0.25,0.5")
    parser.add_argument("--tta", default="none,flip")
    parser.add_argument(
        "--mem-sizes", help="N or HxW rasters (default 1024,2048,4096; quick 1024,1536)"
    )
    parser.add_argument("--mem-tile", type=int, help="window edge of the memory runs")
    parser.add_argument(
        "--mem-band-width", type=int, default=16384, help="column band width (0: one band)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory sweep")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    args = parser.parse_args()
    device = setup(args)
    quick = args.quick
    if quick and args.arch == "resunet34" and args.options is None:
        args.arch, args.options = "unet", {"base_width": 8}
    args.options = args.options or {}
    args.image = args.image or (128 if quick else 512)
    args.tile = args.tile or (64 if quick else 256)
    args.amp = args.amp or ("bf16" if device.type == "cuda" else "none")
    args.overlaps = [float(o) for o in args.overlaps.split(",")]
    args.tta = args.tta.split(",")
    args.rounds = args.rounds or (1 if quick else 2)
    sizes = args.mem_sizes or ("1024,1536" if quick else "1024,2048,4096")
    args.mem_sizes = sizes.split(",")
    args.mem_tile = args.mem_tile or (256 if quick else 512)
    env = environment(device)

    payload = {
        "name": NAME,
        "env": env,
        "config": {
            "arch": args.arch,
            "options": args.options,
            "image": args.image,
            "tile": args.tile,
            "batch": args.batch,
            "amp": args.amp,
            "overlaps": args.overlaps,
            "tta": args.tta,
            "rounds": args.rounds,
            "mem_sizes": args.mem_sizes,
            "mem_tile": args.mem_tile,
            "mem_band_width": args.mem_band_width,
            "quick": quick,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "speed": {} if args.no_speed else speed(args, device),
        "memory": {} if args.no_memory else memory(args),
    }
    path = write_results(NAME, payload, args.out)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
