"""Learning parity: does a terraseg network learn as fast as an independent reference?

One protocol for every contender, on the real Dubai aerial data (PROVENANCE.md beside it):

* data: every image part of the train tiles and of the val tile, decoded once into memory
  (``engine.data.sources.imageio``), masks mapped with
  ``launch/configs/dubai/classes.yaml``; the split
  is the shard builder's (``engine.data.build.splits.split_groups`` at the builder's default
  fractions and seed: Tile 2 is val). Normalised with the train mean/std.
* batches: per seed a fixed stream of random ``--crop``² crops with horizontal/vertical
  flips (no jitter), images drawn in proportion to their area; every contender of a seed
  sees exactly the same batches in the same order.
* model: random initialisation after ``torch.manual_seed(seed)``; the terraseg
  architecture from ``archs.create_model``, the reference ``smp.Unet("resnet34",
  encoder_weights=None)`` (the ``bench`` extra).
* loop: a plain PyTorch loop, float32, cross-entropy (ignore 255), AdamW (lr ``--lr``,
  weight decay 1e-4, clip the gradient norm at 1.0; the engine's defaults) with a poly 0.9
  schedule to 0 over ``--steps`` steps.
* scoring: whole val images (padded to a multiple of 32 and cropped back), arg-max, mIoU
  (``sklearn.metrics.jaccard_score``, mean over classes) and OA (``accuracy_score``) over
  the labelled pixels. ``--eval-tile N`` scores what ``launch/predict.py --tile N`` gives
  instead (blended sliding windows): for networks whose output depends on the input's
  extent, such as ResUNet-a's PSP pooling (a max over the whole input), which a whole
  2,000-pixel image changes from the crops it was trained on.

Contenders run interleaved: for seed ``s`` the order is rotated by ``s``, and with
``--jobs 2`` the (seed, contender) runs are spread over two processes of one torch thread
each. The table gives per seed val mIoU / OA / per-class IoU and the mean training loss per
``--window`` steps, then per contender the median, worst and spread over seeds; the
acceptance checks of issue #16 (median mIoU ≥ the reference's, worst seed within 0.05 of
the reference's worst, loss per window no higher than the reference's by more than the seed
spread, no class collapsed that the reference learns) are printed and stored in the JSON.

    python bench/bench_learning.py                            # CPU: 300 steps, seeds 0,1,2
    python bench/bench_learning.py --steps 150 --jobs 2       # shorter, two processes
    python bench/bench_learning.py --arch resunet34,unet,resuneta_d6
    python bench/bench_learning.py --no-reference --seeds 2 \
        --arch resunet34:head_kernel=1,resunet34:zero_init_last=true   # screen variants

Each run records the SHA-256 of its initial state (``init_sha256``); the acceptance record
names the seeds where a contender starts from the reference's very weights (then the two
train identically: ``resunet34`` is initialised as smp's U-Net is, docs/archs.md).
    python bench/bench_learning.py --device cuda --steps 2000 --batch 16 --crop 256 --seeds 0-4
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import base_parser, environment, format_table, print_table, setup, write_results
from learning_engine import (
    build_shards_once,
    engine_config,
    initial_state,
    is_engine,
    stream_measures,
    train_engine,
)

import archs
from engine.data.build.builder import BuildOptions
from engine.data.build.splits import split_groups
from engine.data.shards.normalize import Normalization
from engine.data.sources.classes import load_classes
from engine.data.sources.imageio import read_image, read_mask_values
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.paths import dubai_dataset_dir

NAME = "bench_learning"
REFERENCE = "smp-unet-r34"
REPO = Path(__file__).resolve().parents[1]
CLASSES = REPO / "launch" / "configs" / "dubai" / "classes.yaml"
IGNORE = 255
COLLAPSE_IOU = 0.1  # a class below this IoU is "collapsed" ...
LEARNT_IOU = 0.3  # ... if the reference's median IoU for it is at least this


@dataclass
class Data:
    """The decoded Dubai split: uint8 HWC images and class-index masks."""

    train_images: list[np.ndarray]
    train_masks: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    class_names: list[str]
    val_groups: list[str]


def _map_mask(values: np.ndarray, lookup: dict[int, int]) -> np.ndarray:
    found, inverse = np.unique(values, return_inverse=True)
    table = np.array([lookup.get(int(v), IGNORE) for v in found], dtype=np.uint8)
    return table[inverse.reshape(values.shape)]


def load_data(root: Path, classes_path: Path, limit: int | None = None) -> Data:
    """Decode the train and val images of the builder's split (``limit`` images a split)."""
    classes = load_classes(classes_path)
    pairs = pair_by_glob(str(root / "*/images/*.jpg"), str(root / "*/masks/*.png"))
    defaults = BuildOptions()
    split = split_groups([p.group for p in pairs], defaults.val, defaults.test, defaults.seed)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    for pair in sorted(pairs, key=lambda p: p.key):
        which = split[pair.group]
        if which not in out or (limit and len(out[which][0]) >= limit):
            continue
        out[which][0].append(read_image(pair.image))
        out[which][1].append(_map_mask(read_mask_values(pair.mask, "rgb"), classes.lookup))
    pixels = np.concatenate([im.reshape(-1, 3) for im in out["train"][0]]).astype(np.float64)
    return Data(
        *out["train"],
        *out["val"],
        mean=pixels.mean(0) / 255,
        std=pixels.std(0) / 255,
        class_names=classes.names,
        val_groups=sorted({g for g, s in split.items() if s == "val"}),
    )


def crop_plan(data: Data, seed: int, steps: int, batch: int, crop: int) -> np.ndarray:
    """The seed's batch stream: ``[steps, batch, 5]`` of (image, row, col, hflip, vflip)."""
    rng = np.random.default_rng(seed)
    areas = np.array([m.size for m in data.train_masks], np.float64)
    image = rng.choice(len(areas), size=(steps, batch), p=areas / areas.sum())
    heights = np.array([m.shape[0] for m in data.train_masks])[image]
    widths = np.array([m.shape[1] for m in data.train_masks])[image]
    rows = (rng.random((steps, batch)) * (heights - crop + 1)).astype(np.int64)
    cols = (rng.random((steps, batch)) * (widths - crop + 1)).astype(np.int64)
    flips = rng.integers(0, 2, size=(steps, batch, 2))
    return np.stack([image, rows, cols, flips[..., 0], flips[..., 1]], axis=-1)


def plan_measures(data: Data, plan: np.ndarray, crop: int) -> dict[str, float]:
    """The plain stream's counterpart of ``learning_engine.stream_measures``."""
    labelled, empty = [], 0
    for image, row, col, _, _ in plan.reshape(-1, 5):
        window = data.train_masks[image][row : row + crop, col : col + crop]
        labelled.append(float((window != IGNORE).mean()))
        empty += int(labelled[-1] == 0)
    return {
        "labelled_fraction": statistics.fmean(labelled),
        "crops_without_labels": empty,
        "sources_per_batch": statistics.fmean(len(set(step[:, 0])) for step in plan),
    }


def make_batch(data: Data, plan: np.ndarray, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut, flip and normalise one batch of the plan."""
    images, masks = [], []
    for index, row, col, hflip, vflip in plan:
        image = data.train_images[index][row : row + crop, col : col + crop]
        mask = data.train_masks[index][row : row + crop, col : col + crop]
        if hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if vflip:
            image, mask = image[::-1], mask[::-1]
        images.append(image)
        masks.append(mask)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images))).permute(0, 3, 1, 2).float()
    x = (x / 255 - torch.from_numpy(data.mean).float()[:, None, None]) / torch.from_numpy(
        data.std
    ).float()[:, None, None]
    return x.contiguous(), torch.from_numpy(np.ascontiguousarray(np.stack(masks))).long()


def parse_contender(spec: str) -> tuple[str, dict[str, Any]]:
    """``"resunet34:head_kernel=3:zero_init_last=false"`` -> name and architecture options."""
    import yaml

    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"contender {spec!r}: option {pair!r} is not KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return name, options


def build_network(spec: str, num_classes: int, seed: int) -> torch.nn.Module:
    """A registered architecture (with ``:key=value`` options; ``engine:`` names the same
    network) or the smp reference, randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    if spec == REFERENCE:
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, classes=num_classes)
    name, options = parse_contender(spec.removeprefix("engine:"))
    return archs.create_model(name, num_classes, **options)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Data,
    device: torch.device,
    normalize: Any = None,
    tile: int | None = None,
) -> dict[str, Any]:
    """Val mIoU, OA and per-class IoU (scikit-learn) over the whole val images.

    Args:
        model: The trained network.
        data: The decoded split.
        device: Where the model runs.
        normalize: The model's input transform, a :class:`Normalization` (default: the
            train mean/std of :func:`load_data`).
        tile: Score what ``launch/predict.py --tile`` predicts: blended sliding windows of
            ``tile``² (``engine.infer.sliding.predict_mask``, overlap 0.25). None: one
            forward pass over each whole image (padded to a multiple of 32).
    """
    from sklearn.metrics import accuracy_score, jaccard_score

    from engine.infer.sliding import SlidingOptions, predict_mask

    model.eval()
    if normalize is None and tile:
        stats = {"mean": data.mean.tolist(), "std": data.std.tolist()}
        normalize = Normalization.from_manifest(stats)
    elif normalize is None:  # the plain loop's own arithmetic (make_batch), bit for bit
        mean = torch.from_numpy(data.mean).float()[:, None, None]
        std = torch.from_numpy(data.std).float()[:, None, None]
        normalize = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    truth, preds = [], []
    for image, mask in zip(data.val_images, data.val_masks):
        h, w = mask.shape
        if tile:
            num_classes = len(data.class_names)
            pred = predict_mask(model, image, num_classes=num_classes, normalization=normalize,
                                options=SlidingOptions(tile=tile, device=device))  # fmt: skip
        else:
            x = normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None])
            x = F.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect").to(device)
            pred = archs.segmentation_logits(model(x))[0, :, :h, :w].argmax(0).cpu().numpy()
        valid = mask != IGNORE
        truth.append(mask[valid])
        preds.append(pred[valid])
    y, p = np.concatenate(truth), np.concatenate(preds)
    labels = list(range(len(data.class_names)))
    iou = jaccard_score(y, p, labels=labels, average=None, zero_division=0.0)
    model.train()
    return {
        "miou": float(np.mean(iou)),
        "oa": float(accuracy_score(y, p)),
        "iou": dict(zip(data.class_names, map(float, iou))),
    }


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the initial state's tensor bytes in order (names and layout aside): equal
    digests mean two contenders start from the same numbers and, in this deterministic loop,
    train identically."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def poly(step: int, steps: int) -> float:
    """The engine's default schedule: ``(1 - step / steps) ** 0.9``."""
    return (1 - step / steps) ** 0.9


def train_one(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    """Train contender ``name`` on seed ``seed``'s stream; return losses and val scores."""
    name, seed, cfg = job
    data: Data = _DATA["data"]
    device = torch.device(cfg["device"])
    if device.type == "cpu":
        torch.set_num_threads(cfg["threads"])
    if is_engine(name):
        return train_one_engine(job)
    model = build_network(name, len(data.class_names), seed).to(device)
    init_sha = state_digest(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: poly(s, cfg["steps"]))
    plan = crop_plan(data, seed, cfg["steps"], cfg["batch"], cfg["crop"])
    losses = []
    start = time.perf_counter()
    for step in range(cfg["steps"]):
        x, y = make_batch(data, plan[step], cfg["crop"])
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(archs.segmentation_logits(model(x)), y, ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if cfg["verbose"] and (step + 1) % cfg["window"] == 0:
            recent = statistics.fmean(losses[-cfg["window"] :])
            print(f"  {name} seed {seed} step {step + 1}: loss {recent:.3f}", flush=True)
    train_s = time.perf_counter() - start
    return finish_run(name, seed, cfg, model, losses, train_s, init_sha)


def train_one_engine(job: tuple[str, int, dict[str, Any]]) -> dict[str, Any]:
    """Train contender ``engine:<arch>`` through terraseg's own loop (``learning_engine``)."""
    import tempfile

    name, seed, cfg = job
    config = engine_config(name, Path(cfg["engine_shards"]), seed, cfg)
    init_sha = state_digest(initial_state(config))
    run_dir = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=cfg["engine_runs"])) / "run"
    start = time.perf_counter()
    model, normalization, losses = train_engine(name, seed, cfg, run_dir)
    train_s = time.perf_counter() - start
    return finish_run(name, seed, cfg, model, losses, train_s, init_sha, normalization)


def finish_run(name, seed, cfg, model, losses, train_s, init_sha, normalize=None) -> dict:
    """Score a trained contender and make its result record."""
    scores = evaluate(model, _DATA["data"], torch.device(cfg["device"]), normalize,
                      cfg["eval_tile"])  # fmt: skip
    w = cfg["window"]
    windows = [statistics.fmean(losses[i : i + w]) for i in range(0, len(losses), w)]
    print(
        f"{name} seed {seed}: val mIoU {scores['miou']:.3f} OA {scores['oa']:.3f} "
        f"({train_s:.0f} s)",
        flush=True,
    )
    return {"contender": name, "seed": seed, "losses": losses, "windows": windows,
            "train_s": train_s, "init_sha256": init_sha, **scores}  # fmt: skip


_DATA: dict[str, Data] = {}


def run_jobs(jobs: list[tuple[str, int, dict[str, Any]]], processes: int) -> list[dict]:
    """Run the jobs in order, in ``processes`` forked processes (1: in this one, unless an
    engine contender runs: accelerate's process state is made once per process)."""
    if processes <= 1 and not any(is_engine(job[0]) for job in jobs):
        return [train_one(job) for job in jobs]
    ctx = multiprocessing.get_context("fork")  # the decoded data is shared copy-on-write
    with ctx.Pool(processes, maxtasksperchild=1) as pool:
        return pool.map(train_one, jobs, chunksize=1)


def summarize(runs: list[dict], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per contender: median / worst / spread of mIoU over seeds and mean loss per window."""
    out = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        mious = [r["miou"] for r in mine]
        windows = np.array([r["windows"] for r in mine])
        out[name] = {
            "seeds": [r["seed"] for r in mine],
            "miou_median": statistics.median(mious),
            "miou_worst": min(mious),
            "miou_spread": max(mious) - min(mious),
            "oa_median": statistics.median(r["oa"] for r in mine),
            "window_loss_mean": windows.mean(0).tolist(),
            "window_loss_spread": (windows.max(0) - windows.min(0)).tolist(),
            "class_iou_median": {
                c: statistics.median(r["iou"][c] for r in mine) for c in mine[0]["iou"]
            },
            "class_iou_worst": {c: min(r["iou"][c] for r in mine) for c in mine[0]["iou"]},
        }
    return out


def acceptance(summary: dict[str, dict], name: str) -> dict[str, Any]:
    """Issue #16's checks of contender ``name`` against the reference."""
    me, ref = summary[name], summary[REFERENCE]
    excess = [
        m - r - max(sm, sr)
        for m, r, sm, sr in zip(
            me["window_loss_mean"],
            ref["window_loss_mean"],
            me["window_loss_spread"],
            ref["window_loss_spread"],
        )
    ]
    collapsed = [
        c
        for c, worst in me["class_iou_worst"].items()
        if worst < COLLAPSE_IOU and ref["class_iou_median"][c] >= LEARNT_IOU
    ]
    return {
        "median_miou_at_least_reference": me["miou_median"] >= ref["miou_median"],
        "worst_within_0.05": me["miou_worst"] >= ref["miou_worst"] - 0.05,
        "loss_within_spread": all(e <= 0 for e in excess),
        "loss_excess_over_spread": excess,
        "collapsed_classes": collapsed,
    }


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"``."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--arch", default="resunet34", help="comma-separated registered names")
    parser.add_argument("--steps", type=int, help="optimiser steps (default 300; quick 4)")
    parser.add_argument("--seeds", default=None, help="'0,1,2' (default) or '0-4'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, help="crop edge (default 192; quick 64)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--eval-tile",
        type=int,
        help="score sliding windows of this edge, as predict.py --tile does (default: each "
        "whole val image in one pass)",
    )
    parser.add_argument("--window", type=int, help="steps per loss window (default 100)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (CPU: one thread each)")
    parser.add_argument("--data", type=Path, help="dataset folder (default: the Dubai data)")
    parser.add_argument("--limit", type=int, help="at most this many images per split")
    parser.add_argument("--name", default=NAME, help="result file name (without .json)")
    parser.add_argument("--verbose", action="store_true", help="print every loss window")
    parser.add_argument(
        "--engine-tile", type=int, default=512, help="tile edge of the engine contenders' shards"
    )
    parser.add_argument(
        "--engine-shards",
        type=Path,
        help="shard folder for engine: contenders (built there once; default under --out)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="train only the --arch contenders (screening; no acceptance checks)",
    )
    args = parser.parse_args()
    device = setup(args)
    quick = args.quick
    steps = args.steps or (4 if quick else 300)
    crop = args.crop or (64 if quick else 192)
    window = args.window or (2 if quick else min(100, steps))
    seeds = parse_seeds(args.seeds or ("0,1" if quick else "0,1,2"))
    batch = 2 if quick and args.batch == 8 else args.batch
    root = args.data or dubai_dataset_dir() / "Semantic segmentation dataset"
    names = [*args.arch.split(","), *([] if args.no_reference else [REFERENCE])]
    for spec in names:  # fail on a bad contender before decoding the data
        if spec != REFERENCE:
            build_network(spec, 2, 0)
    env = environment(device)

    start = time.perf_counter()
    data = load_data(root, CLASSES, limit=args.limit or (3 if quick else None))
    if quick:  # a 64² centre of each val image keeps the smoke run short
        data.val_images = [im[:64, :64] for im in data.val_images]
        data.val_masks = [m[:64, :64] for m in data.val_masks]
    _DATA["data"] = data
    print(
        f"data: {len(data.train_images)} train / {len(data.val_images)} val images "
        f"({', '.join(data.val_groups)}) decoded in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    cfg = {"device": str(device), "threads": torch.get_num_threads(), "steps": steps,
           "batch": batch, "crop": crop, "lr": args.lr, "window": window,
           "eval_tile": args.eval_tile, "verbose": args.verbose}  # fmt: skip
    if any(is_engine(n) for n in names):
        shards = args.engine_shards or args.out / f"learning-shards-{args.engine_tile}"
        cfg["engine_shards"] = str(build_shards_once(root, CLASSES, shards, args.engine_tile))
        cfg["engine_runs"] = str(args.out / "learning-runs")
        Path(cfg["engine_runs"]).mkdir(parents=True, exist_ok=True)
    jobs = []
    for seed in seeds:  # interleaved: the contender order rotates with the seed
        shift = seed % len(names)
        jobs += [(name, seed, cfg) for name in names[shift:] + names[:shift]]
    streams = {}
    if "engine_shards" in cfg:  # what each training stream feeds the network, per seed
        engine_spec = next(n for n in names if is_engine(n))
        for seed in seeds:
            plan = crop_plan(data, seed, steps, batch, crop)
            config = engine_config(engine_spec, Path(cfg["engine_shards"]), seed, cfg)
            streams[seed] = {"plain": plan_measures(data, plan, crop),
                             "engine": stream_measures(config, steps)}  # fmt: skip
        print_table(
            "Training streams (labelled fraction of crop pixels, crops without a label, "
            "source images per batch)",
            ["seed", "stream", "labelled", "empty crops", "sources / batch"],
            [[seed, kind, m["labelled_fraction"], m["crops_without_labels"],
              m["sources_per_batch"]] for seed, both in streams.items()
             for kind, m in both.items()],
        )  # fmt: skip
    runs = run_jobs(jobs, args.jobs if device.type == "cpu" else 1)

    classes = data.class_names
    n_windows = math.ceil(steps / window)
    wcols = [f"loss {i * window + 1}-{min((i + 1) * window, steps)}" for i in range(n_windows)]
    columns = ["contender", "seed", "val mIoU", "val OA", *classes, *wcols]
    rows = [
        [r["contender"], r["seed"], r["miou"], r["oa"], *r["iou"].values(), *r["windows"]]
        for name in names
        for r in sorted((r for r in runs if r["contender"] == name), key=lambda r: r["seed"])
    ]
    title = (
        f"Learning parity on Dubai ({steps} steps, batch {batch}, {crop}² crops, lr {args.lr}, "
        f"{device}, {cfg['threads']} thread(s)"
        + (f", scored on {args.eval_tile}² windows)" if args.eval_tile else ")")
    )
    print_table(title, columns, rows)
    summary = summarize(runs, names)
    srows = [
        [n, s["miou_median"], s["miou_worst"], s["miou_spread"], s["oa_median"],
         *s["window_loss_mean"]]
        for n, s in summary.items()
    ]  # fmt: skip
    print_table(
        "Over seeds",
        ["contender", "median mIoU", "worst mIoU", "spread", "median OA", *wcols],
        srows,
    )
    checks = {n: acceptance(summary, n) for n in names if REFERENCE in names and n != REFERENCE}
    ref_sha = {r["seed"]: r["init_sha256"] for r in runs if r["contender"] == REFERENCE}
    for n in checks:
        same = [
            r["seed"]
            for r in runs
            if r["contender"] == n and ref_sha.get(r["seed"]) == r["init_sha256"]
        ]
        checks[n]["seeds_with_reference_init"] = same
        if same:
            print(f"{n} starts from {REFERENCE}'s initial weights in seed(s) {same}", flush=True)
    for n, c in checks.items():
        print(f"{n} vs {REFERENCE}: {c}", flush=True)
    payload = {
        "env": env,
        "protocol": {k: v for k, v in cfg.items() if k != "verbose"} | {
            "seeds": seeds, "data": str(root), "val_groups": data.val_groups,
            "train_images": len(data.train_images), "val_images": len(data.val_images),
            "optimizer": "AdamW(weight_decay=1e-4), clip 1.0, poly 0.9", "loss": "ce"},
        "runs": runs,
        "streams": streams,
        "summary": summary,
        "acceptance": checks,
        "table": format_table(columns, rows),
    }  # fmt: skip
    path = write_results(args.name, payload, args.out)
    print(f"\nwrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
