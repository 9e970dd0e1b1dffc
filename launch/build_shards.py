"""Pack image/mask pairs into webdataset shards with a dataset.json manifest.

Example (the Dubai layout, split by tile):
    python launch/build_shards.py --images "data/*/images/*.jpg" --masks "data/*/masks/*.png" \
        --classes classes.yaml --out shards/dubai --tile 512
"""

import argparse
import sys

from engine.data.classes import load_classes
from engine.data.imageio import IMAGE_CODECS
from engine.data.pairing import pair_by_glob, pair_from_csv
from engine.data.shard_builder import BuildOptions, build_shards
from engine.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    source = parser.add_argument_group("input")
    source.add_argument("--images", help="glob of image files (quote it)")
    source.add_argument("--masks", help="glob of mask files (quote it)")
    source.add_argument("--pairs-csv", help="CSV with columns image,mask[,group] instead of globs")
    source.add_argument("--classes", required=True, help="classes file (see inspect_masks.py)")
    source.add_argument("--group", help="regex on the pair key; first capture group = group")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tile", type=int, default=1024, help="tile edge in pixels")
    parser.add_argument("--val", type=float, default=0.15, help="fraction of groups for val")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of groups for test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-codec",
        default="npy",
        choices=IMAGE_CODECS,
        help="npy: no decoding (least CPU); webp: lossless, smaller (network storage)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument(
        "--mix-buffer",
        type=int,
        default=512,
        help="samples held to mix tiles of many images into each shard",
    )
    parser.add_argument(
        "--unknown",
        default="error",
        choices=("error", "ignore"),
        help="what to do with mask values missing from the classes file",
    )
    parser.add_argument("--uint16-max", type=int, help="uint16 image value that maps to 255")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args()
    if bool(args.pairs_csv) == bool(args.images or args.masks):
        parser.error("give either --images and --masks, or --pairs-csv")
    options = BuildOptions(
        tile=args.tile, val=args.val, test=args.test, seed=args.seed,
        image_codec=args.image_codec, jpeg_quality=args.jpeg_quality,
        samples_per_shard=args.samples_per_shard, mix_buffer=args.mix_buffer, unknown=args.unknown,
        uint16_max=args.uint16_max, workers=args.workers, overwrite=args.overwrite,
    )  # fmt: skip
    try:
        classes = load_classes(args.classes)
        if args.pairs_csv:
            pairs = pair_from_csv(args.pairs_csv, args.group)
        else:
            if not (args.images and args.masks):
                parser.error("--images and --masks go together")
            pairs = pair_by_glob(args.images, args.masks, args.group)
        manifest = build_shards(pairs, classes, args.out, options)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, split in manifest["splits"].items():
        print(
            f"{name}: {split['num_samples']} samples in {len(split['shards'])} shards, "
            f"groups {split['groups']}"
        )
    mean, std = ([f"{v:.4f}" for v in manifest[k]] for k in ("mean", "std"))
    print(f"mean {mean} std {std}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
