"""Peers: terraseg against TorchGeo 0.10 on the same GeoTIFFs, model, steps and threads.

Both sides in one run, same network (U-Net, ResNet-34 encoder: ``smp.Unet("resnet34")`` for
TorchGeo, as its SemanticSegmentationTask builds it; terraseg's ``resunet34``, layer for
layer the same), same crops, batch, optimiser (AdamW, weight decay 1e-4, clip 1.0, poly 0.9,
cross-entropy ignoring 255, float32), steps, torch threads and device:

1. **Training throughput** on generated 13-band uint16 scenes (``peers_data.make_scenes``)
   and on the multispectral set's Sentinel-2 chip (train rows): TorchGeo's loader
   (``peers_torchgeo``) with the sampler and workers that fed it fastest among those tried
   (loader alone), terraseg from its shards (build timed apart, amortised over the steps)
   through ``engine.train.loop.train``. Samples/s over the windows after the first, CPU
   seconds per sample over the whole run (this process and its loader workers).
2. **Learning at equal steps**: val mIoU (scikit-learn confusion matrix over whole val
   images, the same for both) over seeds, on the Dubai set (Tile 2 = val, as
   ``bench_learning``) and on the multispectral chip (last rows = val).
3. **Prediction** over one large generated 13-band scene with the weights terraseg trained
   in part 1 (loaded into ``smp.Unet`` too; the mapping is checked): TorchGeo's
   ``GriddedPatchSampler`` (0.10's ``GridGeoSampler``) with averaged-probability stitching
   against ``engine.api.predict_file`` (uniform blending) at the same window and overlap,
   each side in its own subprocess (peak RSS); pixels/s and label-map agreement.

Needs TorchGeo (``pip install -e '.[bench,peers]'``, Python >= 3.12); without it the script
prints one line naming the ``peers`` extra and exits 2.

    python bench/bench_peers.py --quick          # < 10 min on a 2-core CPU
    python bench/bench_peers.py                  # 8 x 4096² scenes, 8192² prediction
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import peers_data as data
import peers_terraseg as ours
import peers_torchgeo as theirs
import torch
import torch.nn.functional as F
from common import base_parser, environment, print_table, setup, write_results
from peers_train import throughput, torchgeo_run

NAME = "bench_peers"
ONNX = "terraseg-onnx"  # terraseg's ONNX export on onnxruntime (`predict --model model.onnx`)


def sizes(args) -> dict[str, Any]:
    """The run's sizes: ``--quick`` small, else the issue's (each overridable)."""
    quick = args.quick
    return {
        "scenes": args.scenes or (2 if quick else 8),
        "scene_size": args.scene_size or (512 if quick else 4096),
        "tile": 256 if quick else 512,
        "crop": args.crop or (128 if quick else 256),
        "batch": args.batch or (4 if quick else 8),
        "steps": args.steps or (8 if quick else 60),
        "log_every": args.log_every or (2 if quick else 10),
        "learn_steps": args.learn_steps or (24 if quick else 300),
        "learn_crop": args.learn_crop or (64 if quick else 192),
        "lr": 1e-3,
        "seeds": [int(s) for s in (args.seeds or "0,1,2").split(",")],
        "predict_size": args.predict_size or (768 if quick else 8192),
        "predict_tile": 256 if quick else 512,
        "overlap": 0.25,
        "predict_batch": 4,
        "workers": [0, 1] if quick else [0, 1, 2],
        "loader_batches": 6 if quick else 30,
        "dubai_limit": 2 if quick else None,
        "val_window": 256 if quick else None,
        "predict_sides": [] if args.no_onnx else [ONNX],
    }  # fmt: skip


def evaluate(model, images, masks, normalize, num_classes: int, device) -> dict[str, Any]:
    """Whole val images (reflect-padded to a multiple of 32, cropped back), arg-max, scores."""
    model.eval()
    preds = []
    with torch.inference_mode():
        for image in images:
            h, w = image.shape[1:]
            x = normalize(torch.from_numpy(np.ascontiguousarray(image))[None])
            x = F.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect").to(device)
            logits = model(x)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            preds.append(logits[0, :, :h, :w].argmax(0).cpu().numpy())
    model.train()
    return data.confusion_miou(masks, preds, num_classes)


def learning(name: str, train_dir: Path, val: tuple, classes: Path, work: Path, cfg: dict):
    """Part 2 on one set: per seed, both sides trained at equal steps and scored alike."""
    images, masks = data.read_split(train_dir)
    stats = data.band_statistics(images, masks)
    cfg = cfg | {
        "in_channels": images[0].shape[0],
        "steps": cfg["learn_steps"],
        "crop": cfg["learn_crop"],
        "log_every": cfg["learn_steps"],
        "workers": 0,
    }
    build = ours.build(train_dir, classes, work / f"learn-shards-{name}", cfg["tile"])
    mean = torch.tensor(stats["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(stats["std"], dtype=torch.float32)[:, None, None]
    runs = []
    for seed in cfg["seeds"]:
        order = ["terraseg", "torchgeo"][:: 1 if seed % 2 == 0 else -1]
        for side in order:
            if side == "terraseg":
                run = ours.train(Path(build["shards"]), seed, cfg, work / f"learn-{name}-{seed}")
                model, normalize = run["model"], run["normalization"]
            else:
                setting = {"sampler": "patch", "workers": 0}
                model = torchgeo_run(train_dir, stats, setting, cfg, seed)[1]
                normalize = lambda x: (x.float() - mean) / std  # noqa: E731
            scores = evaluate(model, *val, normalize, cfg["num_classes"], cfg["device"])
            runs.append({"side": side, "seed": seed, **scores})
            print(f"{name} {side} seed {seed}: val mIoU {scores['miou']:.3f}", flush=True)
    out = {}
    for side in ("terraseg", "torchgeo"):
        mious = [r["miou"] for r in runs if r["side"] == side]
        out[side] = {"miou_mean": statistics.fmean(mious), "miou_median": statistics.median(mious),
                     "miou_min": min(mious), "miou_max": max(mious), "mious": mious}  # fmt: skip
    return out | {"runs": runs, "stats": stats}


def dubai_sets(work: Path, cfg: dict) -> tuple[Path, tuple, Path, list[str]]:
    """The Dubai split (bench_learning's) as GeoTIFF train pairs and in-memory val images."""
    from bench_learning import CLASSES, load_data

    from engine.data.sources.paths import dubai_dataset_dir

    split = load_data(dubai_dataset_dir() / "Semantic segmentation dataset", CLASSES,
                      limit=cfg["dubai_limit"])  # fmt: skip
    train_dir = data.write_pairs(work / "dubai-train", split.train_images, split.train_masks)
    window = cfg["val_window"]
    val_images = [im[:window, :window].transpose(2, 0, 1) for im in split.val_images]
    val_masks = [m[:window, :window] for m in split.val_masks]
    classes = data.write_classes(work / "dubai-classes.yaml", split.class_names)
    return train_dir, (val_images, val_masks), classes, split.class_names


def multispectral_sets(work: Path) -> tuple[Path, tuple, Path]:
    """The Sentinel-2 chip: its first 384 rows train, the last 128 val."""
    from engine.data.sources.paths import multispectral_dataset_dir

    root = multispectral_dataset_dir() / "sen1floods11"
    folders = data.split_chip(
        root / "S2" / "Spain_7370579_S2Hand.tif",
        root / "Labels" / "Spain_7370579_LabelHand.tif",
        work / "ms",
        128,
    )
    classes = data.write_classes(work / "ms-classes.yaml", ["not-water", "water"])
    return folders["train"], data.read_split(folders["val"]), classes


def prediction(run_dir: Path, work: Path, cfg: dict) -> dict[str, Any]:
    """Part 3: each side predicts the same large scene in its own subprocess."""
    import rasterio
    from peers_predict import effective_mean_std, run_side

    from engine.infer.model import load_model

    scene_dir = work / "predict"
    data.make_scenes(scene_dir, 1, cfg["predict_size"], seed=1000)
    scene = scene_dir / "images" / "scene_000.tif"
    loaded = load_model(run_dir, "cpu")
    mean, std = effective_mean_std(loaded.normalization)
    job = {"run_dir": str(run_dir), "scene": str(scene), "tile": cfg["predict_tile"],
           "overlap": cfg["overlap"], "batch": cfg["predict_batch"], "device": cfg["device"],
           "threads": cfg["threads"], "mean": mean, "std": std,
           "num_classes": loaded.num_classes, "in_channels": len(mean)}  # fmt: skip
    del loaded
    if ONNX in cfg["predict_sides"]:  # terraseg's own export, run by `predict --model x.onnx`
        from engine.export.onnx import export_onnx

        job["onnx"] = str(export_onnx(run_dir, work / "model.onnx", tile=cfg["predict_tile"]))
    sides = ["terraseg", "torchgeo", *(s for s in cfg["predict_sides"] if s == ONNX)]
    rounds: dict[str, list[dict]] = {side: [] for side in sides}
    for r in range(cfg["rounds"]):
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            m = run_side(job | {"side": side, "out": str(work / f"pred-{side}-{r}")}, work)
            m["pixels_per_s"] = m["pixels"] / m["seconds"]
            m["working_mb"] = m["peak_rss_mb"] - m["rss_before_mb"]
            rounds[side].append(m)
            print(
                f"predict {side}: {m['pixels_per_s']:,.0f} px/s, peak RSS "
                f"{m['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    results: dict[str, Any] = {}
    for side, ms in rounds.items():
        results[side] = {
            k: statistics.median(m[k] for m in ms)
            for k in ("pixels_per_s", "seconds", "peak_rss_mb", "working_mb", "rss_before_mb")
        }
        results[side] |= {"labels": ms[-1]["labels"], "rounds": ms}  # fmt: skip
    results["weights_max_abs_diff"] = rounds["torchgeo"][-1]["weights_max_abs_diff"]
    maps = []
    for side in sides:
        with rasterio.open(results[side]["labels"]) as src:
            maps.append(src.read(1))
    with rasterio.open(scene_dir / "masks" / "scene_000.tif") as src:
        truth = src.read(1)
    results["label_agreement"] = data.label_agreement(maps[0], maps[1])
    if ONNX in rounds:  # terraseg on onnxruntime against terraseg on PyTorch
        results["label_agreement_onnx"] = data.label_agreement(maps[0], maps[2])
    edge = cfg["predict_tile"]  # windows within a tile of the border see padding: reflect
    if min(maps[0].shape) > 2 * edge:  # (terraseg) or zeros (TorchGeo's out-of-bounds reads)
        inner = (slice(edge, -edge),) * 2
        results["label_agreement_interior"] = data.label_agreement(maps[0][inner], maps[1][inner])
    results["accuracy"] = {side: data.label_agreement(m, truth)
                           for side, m in zip(sides, maps)}  # fmt: skip
    results["settings"] = {k: job[k] for k in ("tile", "overlap", "batch", "threads")} | {
        "scene": f"{cfg['predict_size']}² x 13 uint16",
        "blending": "uniform (mean)",
    }
    return results


def parse_args():
    """The command line (``base_parser``'s options and the sizes of :func:`sizes`)."""
    parser = base_parser(__doc__)
    for flag in ("scenes", "scene-size", "crop", "batch", "steps", "log-every", "learn-steps",
                 "learn-crop", "predict-size"):  # fmt: skip
        parser.add_argument(f"--{flag}", type=int)
    parser.add_argument(
        "--predict-model",
        type=Path,
        help="a terraseg run folder to predict with (default: part 1's run)",
    )
    parser.add_argument("--seeds", help="comma-separated seeds for part 2 (default 0,1,2)")
    parser.add_argument("--data-dir", type=Path, help="keep/reuse generated data here")
    parser.add_argument("--parts", default="train,learn,predict", help="parts to run")
    parser.add_argument(
        "--no-onnx", action="store_true", help="predict without terraseg's ONNX export as a side"
    )
    return parser.parse_args()


def report(result: dict[str, Any]) -> None:
    """Print the parts' tables."""
    rows = []
    for name, part in result["train"].items():
        for side in ("terraseg", "torchgeo"):
            m = part[side]
            rows.append(
                [
                    name,
                    side,
                    m["samples_per_s"],
                    1e3 * m["cpu_s_per_sample"],
                    1e3 * m["run_cpu_s_per_sample"],
                    m["wall_s"],
                    m["fixed_s"],
                ]
            )
    print_table(
        "Training throughput (steady windows; run = the whole call; median of rounds)",
        [
            "scenes",
            "side",
            "samples/s",
            "CPU ms/sample",
            "run CPU ms/sample",
            "run wall s",
            "fixed s",
        ],
        rows,
    )
    rows = [
        [name, side, part[side]["miou_mean"], part[side]["miou_min"], part[side]["miou_max"]]
        for name, part in result["learn"].items()
        for side in ("terraseg", "torchgeo")
    ]
    if rows:
        print_table(
            "Learning at equal steps (val mIoU over seeds)",
            ["set", "side", "mean", "min", "max"],
            rows,
        )
    p = result["predict"]
    if not p:
        return
    print_table("Prediction", ["side", "pixels/s", "peak RSS MB", "working MB"],
                [[s, p[s]["pixels_per_s"], p[s]["peak_rss_mb"], p[s]["working_mb"]]
                 for s in ("terraseg", "torchgeo", ONNX) if s in p])  # fmt: skip
    print(f"label agreement {p['label_agreement']:.4f}", flush=True)


def run_parts(args, cfg: dict, work: Path) -> dict[str, Any]:
    """Parts 1-3 as ``--parts`` says; their raw results."""
    result: dict[str, Any] = {"train": {}, "learn": {}, "predict": {}}
    parts = args.parts.split(",")
    scenes = work / "scenes"
    data.make_scenes(scenes, cfg["scenes"], cfg["scene_size"])
    scene_classes = data.write_classes(work / "scene-classes.yaml", [f"c{i}" for i in range(4)])
    ms_train, ms_val, ms_classes = multispectral_sets(work)
    if "train" in parts or ("predict" in parts and not args.predict_model):
        result["train"]["generated"] = throughput("generated", scenes, scene_classes, work,
                                                  cfg | {"num_classes": 4})  # fmt: skip
    if "train" in parts:
        result["train"]["multispectral"] = throughput("ms", ms_train, ms_classes, work,
                                                      cfg | {"num_classes": 2})  # fmt: skip
    if "learn" in parts:
        train_dir, val, classes, names = dubai_sets(work, cfg)
        result["learn"]["dubai"] = learning("dubai", train_dir, val, classes, work,
                                            cfg | {"num_classes": len(names)})  # fmt: skip
        result["learn"]["multispectral"] = learning("ms", ms_train, ms_val, ms_classes, work,
                                                    cfg | {"num_classes": 2})  # fmt: skip
    if "predict" in parts:
        run_dir = args.predict_model or Path(result["train"]["generated"]["run_dir"])
        result["predict"] = prediction(run_dir, work, cfg)
    return result


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The issue's keys: throughput on the generated scenes, mIoU over sets and seeds."""
    learn = {side: {"miou_mean": statistics.fmean(
        r["miou"] for part in result["learn"].values() for r in part["runs"] if r["side"] == side)}
        for side in ("terraseg", "torchgeo")}  # fmt: skip
    values = data.summary(result["train"]["generated"], learn, result["predict"])
    ms = result["train"].get("multispectral")
    if ms:
        values["train_samples_per_s_ratio_multispectral"] = (
            ms["terraseg"]["samples_per_s"] / ms["torchgeo"]["samples_per_s"]
        )
        values["host_cpu_per_sample_ratio_multispectral"] = (
            ms["terraseg"]["cpu_s_per_sample"] / ms["torchgeo"]["cpu_s_per_sample"]
        )
    best = result["train"]["generated"]["loaders"]["best"]
    values["loader_samples_per_s_ratio"] = (
        best["terraseg"]["samples_per_s"] / best["torchgeo"]["samples_per_s"]
    )
    values["loader_cpu_per_sample_ratio"] = (
        best["terraseg"]["cpu_s_per_sample"] / best["torchgeo"]["cpu_s_per_sample"]
    )
    p = result["predict"]
    values["predict_working_memory_ratio"] = (
        p["terraseg"]["working_mb"] / p["torchgeo"]["working_mb"]
    )
    if ONNX in p:  # the same figures for terraseg's ONNX export on onnxruntime
        values["predict_pixels_per_s_ratio_onnx"] = (
            p[ONNX]["pixels_per_s"] / p["torchgeo"]["pixels_per_s"]
        )
        values["predict_peak_memory_ratio_onnx"] = (
            p[ONNX]["peak_rss_mb"] / p["torchgeo"]["peak_rss_mb"]
        )
        values["label_agreement_onnx"] = p["label_agreement_onnx"]
    for name, part in result["learn"].items():
        for side in ("terraseg", "torchgeo"):
            values[f"miou_{side}_{name}"] = part[side]["miou_mean"]
    return values


def main() -> int:
    version = theirs.require()
    if version is None:
        print(theirs.MISSING, file=sys.stderr)
        return 2
    args = parse_args()
    device = setup(args)
    cfg = sizes(args) | {"device": str(device), "threads": torch.get_num_threads(),
                         "rounds": args.rounds or 2}  # fmt: skip
    env = environment(device) | {"torchgeo": version}
    work = args.data_dir or Path(tempfile.mkdtemp(prefix="terraseg-bench-peers-"))
    start = time.perf_counter()
    try:
        result = run_parts(args, cfg, work)
        values = (
            headline(result) if set(args.parts.split(",")) >= {"train", "learn", "predict"} else {}
        )
        report(result)
        payload = {"name": NAME, "env": env, "settings": cfg | {"quick": args.quick,
                   "command": " ".join([Path(sys.executable).name, *sys.argv])},
                   **values, "seconds": time.perf_counter() - start, "raw": result}  # fmt: skip
        if values:
            data.check_summary(payload)
        print(json.dumps(values, indent=2))
        path = write_results(NAME, payload, args.out)
        print(f"\nwrote {path} ({time.perf_counter() - start:.0f} s)")
    finally:
        if args.data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
