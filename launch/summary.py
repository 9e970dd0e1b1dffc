"""Print parameters, MACs/GFLOPs and output shapes of terraseg architectures.

Usage: python launch/summary.py [--arch NAME] [--num-classes 8] [--size 512] [--base-width N]
"""

import argparse

from archs import list_models
from archs.summary import format_table, summarize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list_models(), help="one architecture (default: all)")
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--size", type=int, default=512, help="input side in pixels")
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument(
        "--base-width", type=int, default=None, help="for unet and resuneta_* (others ignore it)"
    )
    args = parser.parse_args(argv)
    rows = summarize(
        [args.arch] if args.arch else None,
        num_classes=args.num_classes,
        size=args.size,
        in_channels=args.in_channels,
        base_width=args.base_width,
    )
    print(format_table(rows))
    print("MACs count convolutions and matmuls only (meta-device forward, 1 image).")


if __name__ == "__main__":
    main()
