"""ONNX: onnxruntime-CPU against PyTorch-CPU prediction throughput, measured in one run.

One random-weight export of ``--arch`` (3 uint8 bands, ``--classes`` classes) is exported
with :func:`engine.export.onnx.export_onnx` and both are loaded as ``terraseg predict``
loads them (:func:`engine.infer.model.load_model`: the export folder on PyTorch, the
``.onnx`` file on onnxruntime's CPU provider). Each contender predicts the same synthetic
``--image``² scene with the same weighted sliding window
(:func:`engine.infer.sliding.predict_probabilities`: tile, overlap, batch, TTA none), the two
interleaved round by round, both under the same thread count (``--threads``, default 1:
see ``bench/common.py``). The result is pixels/s per backend and their ratio
(``onnx_vs_torch`` > 1: onnxruntime faster), with the largest probability difference and
the argmax agreement of the two outputs as a check that they computed the same thing.

    python bench/bench_onnx.py                       # resunet34, 1024² scene, tile 512
    python bench/bench_onnx.py --arch unet --threads 2
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import base_parser, environment, interleave, medians, print_table, setup, write_results

import archs
from engine.data.synthetic.scenes import make_scene
from engine.export.onnx import export_onnx
from engine.infer.model import load_model
from engine.infer.sliding import SlidingOptions, predict_probabilities
from engine.train.export import save_exported

NAME = "bench_onnx"


def write_model(folder: Path, arch: str, classes: int, options: dict) -> Path:
    """A random-weight export folder of ``arch`` on 3 uint8 bands."""
    torch.manual_seed(0)
    model = archs.create_model(arch, classes, 3, **options).eval()
    spec = {"arch": arch, "num_classes": classes, "in_channels": 3, "options": options}
    colours = [
        f"#{(37 * i) % 256:02X}{(91 * i) % 256:02X}{(53 * i) % 256:02X}" for i in range(classes)
    ]
    classes_record = [{"name": f"c{i}", "color": c} for i, c in enumerate(colours)]
    manifest = {"classes": classes_record, "mean": [0.45, 0.45, 0.42], "std": [0.2, 0.2, 0.2],
                "ignore_index": 255}  # fmt: skip
    return save_exported(folder / "best", model, spec, {"data": {"crop_size": 256}}, manifest)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--arch", default="resunet34", choices=archs.list_models())
    parser.add_argument("--image", type=int, default=1024, help="scene side in pixels")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=7)
    args = parser.parse_args()
    args.device = "cpu"  # the comparison is CPU against CPU
    options: dict[str, Any] = {}
    if args.quick:
        args.arch, args.image, args.tile, args.rounds = "unet", 256, 128, args.rounds or 1
        options = {"base_width": 8}
    args.rounds = args.rounds or 3
    device = setup(args)
    with tempfile.TemporaryDirectory(prefix="bench_onnx-") as tmp:
        folder = write_model(Path(tmp), args.arch, args.classes, options)
        start = time.perf_counter()
        onnx_path = export_onnx(folder, Path(tmp) / "model.onnx", tile=args.tile)
        export_seconds = time.perf_counter() - start
        backends = {
            "pytorch-cpu": load_model(folder, "cpu"),
            "onnxruntime-cpu": load_model(onnx_path, "cpu"),
        }
        image, _ = make_scene(args.image, args.image, 0)
        window = SlidingOptions(
            tile=args.tile, overlap=args.overlap, batch_size=args.batch, device="cpu"
        )
        outputs: dict[str, np.ndarray] = {}

        def contender(name: str):
            loaded = backends[name]

            def run() -> dict[str, float]:
                begin = time.perf_counter()
                outputs[name] = predict_probabilities(
                    loaded.exported.model, image, num_classes=loaded.num_classes,
                    normalization=loaded.normalization, options=window,
                )  # fmt: skip
                seconds = time.perf_counter() - begin
                return {"seconds": seconds, "pixels_per_s": args.image**2 / seconds}

            return run

        contenders = {name: contender(name) for name in backends}
        for run in contenders.values():  # warm-up: allocator, kernels, session arenas
            run()
        samples = interleave(contenders, args.rounds)
    results = {name: medians(runs) | {"rounds": runs} for name, runs in samples.items()}
    base = results["pytorch-cpu"]["pixels_per_s"]
    ratio = results["onnxruntime-cpu"]["pixels_per_s"] / base
    torch_probs, onnx_probs = outputs["pytorch-cpu"], outputs["onnxruntime-cpu"]
    check = {
        "max_abs_probability_difference": float(np.abs(torch_probs - onnx_probs).max()),
        "argmax_agreement": float((torch_probs.argmax(0) == onnx_probs.argmax(0)).mean()),
    }
    print_table(
        f"Prediction throughput, {args.arch}, {args.image}² scene, tile {args.tile}, overlap "
        f"{args.overlap}, batch {args.batch}, {torch.get_num_threads()} thread(s), median of "
        f"{args.rounds} interleaved rounds",
        ["backend", "seconds", "pixels/s", "× PyTorch"],
        [
            [n, m["seconds"], m["pixels_per_s"], m["pixels_per_s"] / base]
            for n, m in results.items()
        ],
    )
    print(f"onnxruntime / PyTorch throughput: {ratio:.3f}; {check}")
    payload = {
        "config": vars(args) | {"out": str(args.out), "options": options},
        "env": environment(device)
        | {"onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")},
        "export_seconds": export_seconds,
        "results": results,
        "onnx_vs_torch": ratio,
        "check": check,
    }
    print(f"wrote {write_results(NAME, payload, args.out)}")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
