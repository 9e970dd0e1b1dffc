"""Write a synthetic land-cover dataset in the Dubai layout (no download needed).

Writes OUT/Scene N/{images,masks}/scene_part_00K.* and OUT/classes.yaml. OUT must be new, empty
or a synthetic dataset written before (its files are rewritten; nothing else is touched).

Examples:
    python launch/make_synthetic.py --out data/synthetic
    python launch/make_synthetic.py --out data/synth --groups 8 --per-group 9 --size 480x640
    python launch/make_synthetic.py --out data/synth --size 400x500-640x720 --format png
"""

import argparse
import re
import sys
from pathlib import Path

from engine.cli import HelpFormatter
from engine.data.synthetic.scenes import IMAGE_FORMATS, parse_size, write_dataset
from engine.errors import UserError

MIN_SIDE = 32
OURS = re.compile(r"^(Scene \d+|classes\.yaml)$")


def size_argument(text: str):
    """``--size``: '512', 'HxW' or 'HxW-HxW', every side at least :data:`MIN_SIDE`."""
    try:
        size = parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 512, HxW or HxW-HxW") from error
    sides = [size] if isinstance(size[0], int) else list(size)
    if any(min(side) < MIN_SIDE for side in sides):
        raise argparse.ArgumentTypeError(f"{text!r}: every side must be at least {MIN_SIDE}")
    if len(sides) == 2 and any(lo > hi for lo, hi in zip(*sides)):
        raise argparse.ArgumentTypeError(f"{text!r}: the range must go from small to large")
    return size


def check_out(out: str) -> None:
    """Refuse an --out that is a file or a folder holding files this script did not write."""
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not OURS.match(p.name))
        if foreign:
            raise UserError(
                f"--out {out}: holds other files ({', '.join(foreign[:3])}); "
                "choose a new or empty folder"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--groups", type=int, default=4, help="number of 'Scene N' folders")
    parser.add_argument("--per-group", type=int, default=3, help="image/mask pairs per folder")
    parser.add_argument(
        "--size",
        type=size_argument,
        default="512",
        help="'512', 'HxW' (e.g. 480x640) or a per-group range 'HxW-HxW'",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole dataset")
    parser.add_argument("--format", choices=IMAGE_FORMATS, default="jpg", help="image format")
    parser.add_argument(
        "--nodata-fraction",
        type=float,
        default=0.1,
        help="share of scenes with a no-data region (mask #000000, ignored); 0 for none",
    )
    args = parser.parse_args(argv)
    if args.groups < 1 or args.per_group < 1:
        parser.error("--groups and --per-group must be at least 1")
    if not 0 <= args.nodata_fraction <= 1:
        parser.error("--nodata-fraction must be in [0, 1]")
    try:
        check_out(args.out)
        out = write_dataset(
            args.out,
            num_groups=args.groups,
            scenes_per_group=args.per_group,
            size=args.size,
            seed=args.seed,
            image_format=args.format,
            nodata_fraction=args.nodata_fraction,
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: --out {args.out}: cannot write ({error.strerror})", file=sys.stderr)
        return 2
    print(f"wrote {args.groups * args.per_group} scenes to {out} (classes: {out / 'classes.yaml'})")
    return 0
