r"""Evaluate a trained model on a shard split, or a folder of predictions against masks.

Model on shards (whole tiles, the same code path as validation during training; also
distributed: `accelerate launch launch/evaluate.py ...`):
    python launch/evaluate.py --model runs/unet --shards shards/dubai --split test --out eval/

Predictions against masks (no model):
    python launch/evaluate.py --predictions preds/ --masks masks/ --classes classes.yaml --out eval/
Files pair by key as in the build (a prediction's key is its image's: tile_07_mask.tif ->
tile_07); other names pair with the build's options, e.g. images scene_img_3.tif predicted
into preds/ and masks scene_lbl_3.tif:
    python launch/evaluate.py --predictions preds/ --masks labels/ --manifest shards/s \
        --image-key "(.*)_img(_\d+)" --mask-key "(.*)_lbl(_\d+)" --out eval/

Writes OUT/metrics.json, OUT/metrics.md and OUT/confusion.png.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from engine.cli import HelpFormatter
from engine.data.shards.manifest import load_manifest
from engine.data.sources.classes import load_classes
from engine.errors import UserError
from engine.evaluate.folder_eval import FolderEvalError, KeyRules, evaluate_folders
from engine.evaluate.metrics import summary_line
from engine.evaluate.report import write_report
from engine.evaluate.shard_eval import EvalSettings, check_class_count, evaluate_split
from engine.train.export import load_exported


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="report folder")
    model = parser.add_argument_group("model on shards")
    model.add_argument("--model", help="run directory, RUN/best, or a model.safetensors")
    model.add_argument("--shards", help="shard folder")
    model.add_argument("--split", default="test", help="split to evaluate")
    model.add_argument("--batch", type=int, default=4, help="tiles per batch per process")
    model.add_argument("--workers", type=int, default=2, help="loader workers per process")
    model.add_argument(
        "--precision", default="no", choices=("no", "bf16", "fp16"), help="autocast dtype"
    )
    folders = parser.add_argument_group("predictions against masks")
    folders.add_argument("--predictions", help="folder of predicted class-index masks")
    folders.add_argument("--masks", help="folder of true masks")
    folders.add_argument("--classes", help="classes file for the true masks (colour masks)")
    folders.add_argument("--manifest", help="dataset.json giving class names (index masks)")
    folders.add_argument(
        "--image-key", help="regex on a prediction's key (its image's): capture groups = key"
    )
    folders.add_argument("--mask-key", help="regex on a true mask's key: capture groups = key")
    folders.add_argument(
        "--mask-from", help="template turning a prediction's key into its mask's ('{key}_lbl')"
    )
    args = parser.parse_args(argv)
    try:
        check_out(args.out)
        if args.model:
            return evaluate_model(args)
        if args.predictions and args.masks:
            return evaluate_predictions(args)
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser.error("give --model and --shards, or --predictions and --masks")
    return 2


def check_out(out: str) -> None:
    """Refuse an --out that is a file or a folder that cannot be written."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    parent = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable")


def evaluate_model(args: argparse.Namespace) -> int:
    """Score ``--model`` on ``--shards``' ``--split`` and write the report; 0 on success."""
    if not args.shards:
        raise UserError("--model needs --shards")
    state = PartialState()
    manifest = load_manifest(args.shards)
    exported = load_exported(args.model, device=state.device)
    check_class_count(int(exported.spec["num_classes"]), manifest, f"model {exported.path}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    settings = EvalSettings(
        batch_size=args.batch, device=state.device, num_workers=args.workers,
        rank=state.process_index, world_size=state.num_processes, autocast_dtype=dtype,
    )  # fmt: skip
    result = evaluate_split(
        exported.model, manifest, args.split, settings, train_crop=exported.train_crop
    )
    if state.is_main_process:
        title = f"{args.split} split of {args.shards}"
        extra = {"split": args.split, "model": str(args.model), "shards": str(args.shards)}
        metrics = write_report(
            args.out, result.confusion.cpu().numpy(), manifest.class_names, title, extra
        )
        print(f"{args.split}: {summary_line(metrics)}\nreport written to {args.out}")
    state.wait_for_everyone()
    return 0


def evaluate_predictions(args: argparse.Namespace) -> int:
    """Score a folder of predicted masks against true masks and write the report."""
    classes = load_classes(args.classes) if args.classes else None
    manifest = None
    if args.manifest:  # a shard folder or its dataset.json
        folder = Path(args.manifest)
        manifest = load_manifest(folder.parent if folder.is_file() else folder).data
    if classes is not None:
        names = classes.names
    elif manifest is not None:
        names = [c["name"] for c in manifest["classes"]]
    else:
        raise FolderEvalError("--predictions needs --classes or --manifest for the class names")
    rules = KeyRules(args.image_key, args.mask_key, args.mask_from)
    confusion = evaluate_folders(
        args.predictions, args.masks, len(names), manifest=manifest, classes=classes, rules=rules
    )
    extra = {"predictions": str(args.predictions), "masks": str(args.masks)}
    metrics = write_report(args.out, confusion, names, f"{args.predictions} vs {args.masks}", extra)
    print(f"{summary_line(metrics)}\nreport written to {args.out}")
    return 0
