"""Write a synthetic land-cover dataset in the Dubai layout (no download needed).

Examples:
    python launch/make_synthetic.py --out data/synthetic
    python launch/make_synthetic.py --out data/synth --groups 8 --per-group 9 --size 480x640
    python launch/make_synthetic.py --out data/synth --size 400x500-640x720 --format png
"""

import argparse

from engine.data.synthetic.scenes import IMAGE_FORMATS, parse_size, write_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--groups", type=int, default=4, help="number of 'Scene N' folders")
    parser.add_argument("--per-group", type=int, default=3, help="image/mask pairs per folder")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(512, 512),
        help="'512', 'HxW' (e.g. 480x640) or a per-group range 'HxW-HxW' (default 512)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=IMAGE_FORMATS, default="jpg", help="image format")
    parser.add_argument(
        "--nodata-fraction",
        type=float,
        default=0.1,
        help="share of scenes with a no-data region (mask #000000, ignored); 0 for none",
    )
    args = parser.parse_args(argv)
    out = write_dataset(
        args.out,
        num_groups=args.groups,
        scenes_per_group=args.per_group,
        size=args.size,
        seed=args.seed,
        image_format=args.format,
        nodata_fraction=args.nodata_fraction,
    )
    print(f"wrote {args.groups * args.per_group} scenes to {out} (classes: {out / 'classes.yaml'})")


if __name__ == "__main__":
    main()
