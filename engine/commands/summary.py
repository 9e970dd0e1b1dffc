"""Print parameters, MACs/GFLOPs and output shapes of terraseg architectures, or of a run.

Usage:
    python launch/summary.py [--arch NAME] [--num-classes 8] [--size 512] [--base-width N]
                             [--in-channels 3]   # e.g. 13 for Sentinel-2
    python launch/summary.py RUN_DIR [--size 512]     # the trained model (RUN or RUN/best)
    python launch/summary.py --options                # each option's type and range
"""

import argparse
import sys

from archs import ModelSpecError, list_models
from archs.summary import format_option_table, format_table, summarize
from engine.cli import HelpFormatter
from engine.errors import UserError
from engine.train.run_summary import format_run, summarize_run


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "run", nargs="?", help="run folder, RUN/best or model.safetensors: summarise that model"
    )
    parser.add_argument("--arch", choices=list_models(), help="one architecture (default: all)")
    parser.add_argument("--num-classes", type=int, default=8, help="classes (without RUN)")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels")
    parser.add_argument("--in-channels", type=int, default=3, help="input bands (without RUN)")
    parser.add_argument(
        "--base-width", type=int, default=None, help="for unet and resuneta_* (others ignore it)"
    )
    parser.add_argument(
        "--options",
        action="store_true",
        help="print the declared type and range of every option (Markdown, as in docs/archs.md)",
    )
    args = parser.parse_args(argv)
    if args.options:
        print(format_option_table([args.arch] if args.arch else None))
        return 0
    if args.size < 1 or args.num_classes < 1 or args.in_channels < 1:
        parser.error("--size, --num-classes and --in-channels must be >= 1")
    if args.run and (args.arch or args.base_width is not None):
        parser.error("RUN gives the architecture: drop --arch/--base-width")
    try:
        if args.run:
            print(format_run(summarize_run(args.run, size=args.size)))
        else:
            rows = summarize(
                [args.arch] if args.arch else None,
                num_classes=args.num_classes,
                size=args.size,
                in_channels=args.in_channels,
                base_width=args.base_width,
            )
            print(format_table(rows))
    except (UserError, ModelSpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("MACs count convolutions and matmuls only (meta-device forward, 1 image).")
    return 0
