"""The main job end to end on generated scenes, small enough for a 2-core CPU (no download).

Scenes → mask inspection → shards → training → evaluation → sliding-window prediction,
each step the same subcommand a user runs (printed before it runs). Writes OUT/scenes,
OUT/shards, OUT/run (history, plots, checkpoints, best/), OUT/eval, OUT/predictions and
OUT/panel.png. OUT must be new or empty, or an earlier demo's folder (which is replaced).

Example:
    terraseg demo --out terraseg-demo
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from engine.cli import HelpFormatter
from engine.commands import (
    build_shards,
    evaluate,
    inspect_masks,
    make_synthetic,
    predict,
    show,
    train,
)
from engine.errors import UserError

MARKER = ".terraseg-demo"  # written first, so only a folder the demo made is ever replaced


def prepare_out(out: Path) -> None:
    """Make ``out`` empty: new, empty, or an earlier demo's folder (removed), else an error."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"--out {out}: holds files the demo did not write; choose a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by 'terraseg demo': the next demo replaces this folder\n")


def steps(out: Path) -> list[tuple[str, Callable[[list[str]], int], list[str]]]:
    """The demo as (title, subcommand main, arguments), in order."""
    scenes, big = out / "scenes", out / "big"
    scene = big / "Scene 1"
    return [
        (
            "1/6 generate synthetic land-cover scenes (Dubai-style layout, colour masks)",
            make_synthetic.main,
            ["--out", f"{scenes}", "--groups", "6", "--per-group", "3", "--size", "384"],
        ),
        (
            "2/6 inspect the masks and draft a classes file (the generator wrote the edited one)",
            inspect_masks.main,
            [f"{scenes}/*/masks/*.png", "--write-classes", f"{out}/classes-draft.yaml"],
        ),
        (
            "3/6 build webdataset shards, split by scene",
            build_shards.main,
            [
                "--images",
                f"{scenes}/*/images/*.jpg",
                "--masks",
                f"{scenes}/*/masks/*.png",
                "--classes",
                f"{scenes}/classes.yaml",
                "--out",
                f"{out}/shards",
                "--tile",
                "192",
                "--val",
                "0.2",
                "--test",
                "0.2",
                "--samples-per-shard",
                "16",
                "--workers",
                "2",
            ],
        ),
        (
            "4/6 train a tiny UNet on the CPU (the same subcommand accelerate launch runs on GPUs)",
            train.main,
            [
                "--config",
                "tiny-cpu",
                "--out",
                f"{out}/run",
                "--set",
                f"data.shards={out}/shards",
                "--set",
                "train.epochs=10",  # kept short; one epoch is planned from the tiles
            ],
        ),
        (
            "5/6 evaluate the best checkpoint on the test split",
            evaluate.main,
            [
                "--model",
                f"{out}/run",
                "--shards",
                f"{out}/shards",
                "--split",
                "test",
                "--out",
                f"{out}/eval",
            ],
        ),
        (
            "6/6 predict a whole 700x900 scene with the weighted sliding window",
            _predict_scene,
            [f"{big}", f"{scene}", f"{out}"],
        ),
    ]


def _predict_scene(argv: list[str]) -> int:
    big, scene, out = (Path(a) for a in argv)
    code = make_synthetic.main(
        [
            "--out",
            str(big),
            "--groups",
            "1",
            "--per-group",
            "1",
            "--size",
            "700x900",
            "--seed",
            "99",
        ]
    )
    code = code or predict.main(
        [
            "--model",
            f"{out}/run",
            "--input",
            f"{scene}/images/*.jpg",
            "--out",
            f"{out}/predictions",
            "--tile",
            "192",
            "--overlap",
            "0.25",
        ]
    )
    return code or show.main(
        [
            "--image",
            f"{scene}/images/scene_part_001.jpg",
            "--truth",
            f"{scene}/masks/scene_part_001.png",
            "--classes",
            f"{big}/classes.yaml",
            "--prediction",
            f"{out}/predictions/scene_part_001_mask.png",
            "--out",
            f"{out}/panel.png",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", default="terraseg-demo", type=Path, help="folder to write")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    try:
        prepare_out(args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for title, run, arguments in steps(args.out):
        print(f"\n== {title}", flush=True)
        code = run(arguments)
        if code:
            return code
    print(
        f"\nDone. Look at {args.out}/run (history, plots, best/), {args.out}/eval, "
        f"{args.out}/predictions and {args.out}/panel.png"
    )
    return 0
