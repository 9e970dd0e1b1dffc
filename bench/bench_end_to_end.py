"""End to end: the terraseg training loop on shards against the original recipe on files.

Contenders, interleaved round by round in one run, same model, crop, batch and workers:

* ``terraseg-shards``: :func:`engine.train.loop.train` with ``launch/configs/resunet34.yaml``
  (AdamW, ce+dice, jitter; precision ``auto`` = bf16 on GPUs, channels_last on CUDA), fed by
  the shard loader. Images/s and the data-wait share are read from ``RUN/history.csv``.
* ``terraseg-shards, original recipe``: the same loop and loader with
  ``launch/configs/original-recipe.yaml`` (SGD, cross-entropy, float32): the pipeline's
  share of the difference, without the recipe's.
* ``original-folder``: the original recipe as a compact loop in this file: the folder +
  PIL loader of ``bench/folder_loader.py`` (CPU crop/flips, float32 batches), float32,
  SGD (lr 1e-4, momentum 0.9), cross-entropy, and ``loss.item()`` every step for the
  running loss, as the original training script logged it.

All are measured the same way: steps are grouped in windows of ``--log-every``; the first
window (worker start-up, allocator warm-up) is dropped; images/s and the data-wait share
(time blocked on the next batch, over window time) are taken over the other windows.

    python bench/bench_end_to_end.py                       # CPU: resunet34, 128² crops
    python bench/bench_end_to_end.py --device cuda --crop 512 --batch 16 --workers 8 \\
        --steps 120 --log-every 20 --size 1024 --images 48
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
from folder_loader import FolderDataset, folder_batches
from synthetic_data import BenchData, prepare

import archs
from engine.train.config import load_config
from engine.train.loop import train

NAME = "bench_end_to_end"
REPO = Path(__file__).resolve().parents[1]


def _reset_accelerate() -> None:
    """Forget accelerate's process-wide state, so that the next ``train`` starts clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def window_rates(rows: list[dict[str, float]], batch: int) -> dict[str, float]:
    """Images/s and data-wait share over all windows but the first.

    Args:
        rows: One per window: ``steps``, ``time_s`` and ``data_wait_s``.
        batch: Images per step.
    """
    kept = rows[1:] or rows
    seconds = sum(r["time_s"] for r in kept)
    return {
        "images_per_s": sum(r["steps"] for r in kept) * batch / seconds,
        "data_wait": sum(r["data_wait_s"] for r in kept) / seconds,
        "step_s": seconds / sum(r["steps"] for r in kept),
    }


def model_options(args) -> dict:
    """The network's options: those of ``launch/configs/<arch>.yaml``, updated by --options."""
    recipe = REPO / "launch/configs" / f"{args.arch}.yaml"
    base = load_config(recipe).model.options if recipe.exists() else {}
    return {**base, **args.options}


def terraseg_config(args, shards: Path, seed: int, recipe: Path | None = None):
    """A recipe sized for the bench: ``recipe``, else ``launch/configs/<arch>.yaml``.

    The network (``--arch`` with :func:`model_options`) is the same whatever the recipe.
    """
    recipe = recipe or REPO / "launch/configs" / f"{args.arch}.yaml"
    overrides = [
        f"data.shards={shards}",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        f"data.crop_size={args.crop}",
        "data.shuffle_buffer=8",
        "data.val_split=",
        "data.test_split=",
        f"model.arch={args.arch}",
        "model.pretrained=false",
        "schedule.warmup_steps=0",
        "train.epochs=1",
        f"train.steps_per_epoch={args.steps}",
        f"train.log_every={args.log_every}",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.keep_checkpoints=1",
        "log.wandb=disabled",
        f"seed={seed}",
        *args.set,
    ]
    config = load_config(recipe if recipe.exists() else None, overrides)
    config.model.options = model_options(args)  # replaced, not merged with the recipe's
    return config


def terraseg_contender(
    data: BenchData, codec: str, args, workdir: Path, recipe: Path | None = None
):
    """A callable that runs :func:`engine.train.loop.train` once and reads its history."""
    counter = iter(range(1_000_000))

    def run() -> dict[str, float]:
        r = next(counter)
        run_dir = workdir / f"run-terraseg-{(recipe or Path(args.arch)).stem}-{r}"
        config = terraseg_config(args, data.shards[codec], r, recipe)
        try:
            train(config, run_dir)
        finally:
            _reset_accelerate()
        with open(run_dir / "history.csv", newline="") as handle:
            history = [row for row in csv.DictReader(handle) if row["split"] == "train"]
        rows, previous = [], 0
        for row in history:
            step, seconds = int(row["step"]), float(row["time_s"])
            rows.append(
                {
                    "steps": step - previous,
                    "time_s": seconds,
                    "data_wait_s": float(row["data_wait"]) * seconds,
                }
            )
            previous = step
        shutil.rmtree(run_dir, ignore_errors=True)
        return window_rates(rows, args.batch)

    return run


def original_contender(data: BenchData, args, device: torch.device):
    """A callable that runs the original recipe's loop for ``--steps`` steps."""
    counter = iter(range(1_000_000))

    def run() -> dict[str, float]:
        r = next(counter)
        torch.manual_seed(r)
        options = model_options(args)
        model = archs.create_model(args.arch, data.num_classes, 3, **options).to(device)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=255)
        dataset = FolderDataset(data.pairs, args.crop, data.mean, data.std, seed=r)
        loader = iter(
            folder_batches(
                dataset, args.batch, args.workers, pin_memory=device.type == "cuda", seed=r
            )
        )
        rows, running = [], 0.0
        window = {"steps": 0, "time_s": 0.0, "data_wait_s": 0.0}
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            waited = time.perf_counter()
            images, masks = next(loader)
            images, masks = images.to(device), masks.to(device)
            window["data_wait_s"] += time.perf_counter() - waited
            loss = loss_fn(model(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
            window["steps"] += 1
            if step % args.log_every == 0 or step == args.steps:
                synchronize(device)
                window["time_s"] = time.perf_counter() - start
                rows.append(window)
                window = {"steps": 0, "time_s": 0.0, "data_wait_s": 0.0}
                start = time.perf_counter()
        del loader
        return window_rates(rows, args.batch)

    return run


def main() -> int:
    parser = base_parser(__doc__)
    parser.add_argument("--arch", default="resunet34")
    parser.add_argument("--options", type=json.loads, help="model options as JSON, e.g. {}")
    parser.add_argument("--crop", type=int, help="crop edge (default: CPU 128, quick 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, help="steps per run (default 16; quick 6)")
    parser.add_argument("--log-every", type=int, help="window length (default 4; quick 2)")
    parser.add_argument("--images", type=int, help="scenes (default 12; quick 4)")
    parser.add_argument("--size", type=int, help="scene = tile edge (default 512; quick 256)")
    parser.add_argument("--codec", default="npy", help="shard image codec for terraseg")
    parser.add_argument("--data-dir", type=Path, help="keep/reuse generated data here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="extra key=value config override for the terraseg runs (repeatable)",
    )
    args = parser.parse_args()
    quick = args.quick
    if quick and args.arch == "resunet34" and args.options is None:
        args.arch, args.options = "unet", {"base_width": 8}
    args.options = args.options or {}
    args.crop = args.crop or (64 if quick else 128)
    args.steps = args.steps or (6 if quick else 16)
    args.log_every = args.log_every or (2 if quick else 4)
    args.images = args.images or (4 if quick else 12)
    args.size = args.size or (256 if quick else 512)
    rounds = args.rounds or (1 if quick else 2)
    device = setup(args)
    env = environment(device)

    workdir = args.data_dir or Path(tempfile.mkdtemp(prefix="terraseg-bench-e2e-"))
    runs = Path(tempfile.mkdtemp(prefix="terraseg-bench-runs-"))
    try:
        data = prepare(workdir, args.images, args.size, (args.codec,))
        contenders = {
            "terraseg-shards": terraseg_contender(data, args.codec, args, runs),
            "terraseg-shards, original recipe": terraseg_contender(
                data, args.codec, args, runs, REPO / "launch/configs/original-recipe.yaml"
            ),
            "original-folder": original_contender(data, args, device),
        }
        samples = interleave(contenders, rounds)
        results: dict[str, Any] = {
            name: medians(runs_) | {"rounds": runs_} for name, runs_ in samples.items()
        }
        base = results["original-folder"]["images_per_s"]
        for m in results.values():
            m["speedup"] = m["images_per_s"] / base
        print_table(
            f"End to end, {args.arch} {args.options or ''} {args.crop}² crops of "
            f"{args.size}² tiles, batch {args.batch}, {args.workers} workers, {device}, "
            f"median of {rounds} interleaved runs of {args.steps} steps",
            ["pipeline", "images/s", "step ms", "data wait %", "× original"],
            [
                [name, m["images_per_s"], 1e3 * m["step_s"], 100 * m["data_wait"], m["speedup"]]
                for name, m in results.items()
            ],
        )
        payload = {
            "name": NAME,
            "env": env,
            "config": {
                "arch": args.arch,
                "options": args.options,
                "crop": args.crop,
                "batch": args.batch,
                "workers": args.workers,
                "steps": args.steps,
                "log_every": args.log_every,
                "images": args.images,
                "size": args.size,
                "codec": args.codec,
                "set": args.set,
                "rounds": rounds,
                "quick": quick,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            },
            "results": results,
        }
        path = write_results(NAME, payload, args.out)
        print(f"\nwrote {path}")
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        if args.data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
