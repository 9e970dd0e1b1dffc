r"""Pack image/mask pairs into webdataset shards with a dataset.json manifest.

Example (the Dubai layout, split by tile):
    python launch/build_shards.py --images "data/*/images/*.jpg" --masks "data/*/masks/*.png" \
        --classes classes.yaml --out shards/dubai --tile 512

Images scene_img_3.tif with masks scene_lbl_3.tif (keys from the names):
    python launch/build_shards.py --images "imgs/*.tif" --masks "lbls/*.tif" \
        --image-key "(.*)_img(_\d+)" --mask-key "(.*)_lbl(_\d+)" --classes classes.yaml --out s

A key is the file's path under the glob's fixed folder, without folders named images/masks/
labels/..., without extension (Tile 3/images/x.jpg → "Tile 3/x"); --group matches keys.
Too few groups for val and test: --split-by blocks:N splits N×N-tile blocks of each image.

Multispectral GeoTIFFs (any band count; uint8/uint16/int16/float32 stored as they are):
    python launch/build_shards.py --images "S2/*.tif" --masks "Labels/*.tif" \
        --image-key "(.*)_S2Hand" --mask-key "(.*)_LabelHand" --classes classes.yaml \
        --split-by blocks:1 --tile 128 --out shards/s2
Building footprints without attributes (every polygon is a building, the rest land):
    python launch/build_shards.py --images "tiles/*.tif" --vector buildings.gpkg \
        --burn building --background land --classes classes.yaml --out shards/b
Bands kept one per file (red_X.TIF, green_X.TIF, ...):
    python launch/build_shards.py --images "scene/red_*.TIF" --masks "scene/gt_*.TIF" \
        --image-key "red_(.*)" --mask-key "gt_(.*)" --band-files red,green,blue,nir ...
STAC items (one image per item, assets read by windows onto one grid; docs/stac.md):
    python launch/build_shards.py --stac catalog.json --assets red,green,blue,nir \
        --label-asset labels --classes classes.yaml --out shards/s2
"""

import argparse
import sys
import tempfile
from dataclasses import replace

from engine.cli import HelpFormatter
from engine.commands.stac_args import (
    add_stac_arguments,
    asset_list,
    check_stac_arguments,
    stac_items,
    uses_stac,
)
from engine.data.build.advice import print_warning
from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.output import BuildError
from engine.data.build.splits import SPLIT_BY_HELP, describe_shared_area
from engine.data.shards.codecs import IMAGE_CODECS
from engine.data.sources.band_select import parse_band_list
from engine.data.sources.classes import load_classes
from engine.data.sources.pairing import pair_by_glob, pair_from_csv, pairs_from_vector
from engine.data.sources.vector_labels import VectorLabels, off_images_note
from engine.errors import UserError


def _background(text: str) -> int | str | None:
    """``ignore`` → None; an integer value as int; anything else (a text value or class name)."""
    if text.lower() == "ignore":
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``input`` group: where images and labels come from and how they pair."""
    source = parser.add_argument_group("input")
    source.add_argument("--images", help="glob of image files (quote it)")
    source.add_argument("--masks", help="glob of mask files (quote it)")
    source.add_argument("--pairs-csv", help="CSV with columns image,mask[,group] instead of globs")
    source.add_argument(
        "--vector",
        help="labels as polygons instead of --masks: a GeoPackage/GeoJSON/Shapefile, reprojected\n"
        "and rasterised onto each image's grid (needs --attribute or --burn); features that\n"
        "touch no image are reported in one line",
    )
    source.add_argument("--attribute", help="the vector file's field holding the class value")
    source.add_argument(
        "--burn",
        metavar="CLASS",
        help="with --vector, instead of --attribute: every polygon is this class (its name or\n"
        "value in --classes), e.g. building footprints; the rest is --background",
    )
    source.add_argument(
        "--background",
        default="ignore",
        help="value (or class name) of pixels no polygon covers, or 'ignore'",
    )
    source.add_argument(
        "--all-touched",
        action="store_true",
        help="burn every pixel a polygon touches (default: pixels whose centre is inside;\n"
        "thin features such as roads and rivers narrower than a pixel need it)",
    )
    source.add_argument("--layer", help="layer of a multi-layer vector file (default: the first)")
    source.add_argument("--classes", required=True, help="classes file (see inspect_masks.py)")
    source.add_argument("--group", help="regex on the pair key; first capture group = group")
    source.add_argument(
        "--image-key", help="regex on each image's key; its capture groups, joined, = the key"
    )
    source.add_argument("--mask-key", help="regex on each mask's key (as --image-key)")
    source.add_argument(
        "--resample-labels",
        action="store_true",
        help="resample a georeferenced mask that is off its image's grid (another CRS, offset,\n"
        "resolution or size) onto it, nearest neighbour; default: refuse it naming what differs",
    )
    source.add_argument(
        "--mask-from",
        help="template of the mask key from the image key: {key}, {stem}, {folder}\n"
        "(e.g. '{key}_mask' pairs x.tif with x_mask.png)",
    )


def _add_output_arguments(parser: argparse.ArgumentParser, defaults: BuildOptions) -> None:
    """Where the shards go, how they are tiled, split and encoded (the parser's own group)."""
    parser.add_argument(
        "--out", required=True, help="output folder, or object-store URL (s3://..., gs://...)"
    )
    parser.add_argument(
        "--tile", type=int, default=defaults.tile, help="tile edge in pixels (smaller: padded)"
    )
    parser.add_argument(
        "--val", type=float, default=defaults.val, help="fraction of groups (or blocks) for val"
    )
    parser.add_argument(
        "--test", type=float, default=defaults.test, help="fraction of groups (or blocks) for test"
    )
    parser.add_argument(
        "--split-by",
        default=defaults.split_by,
        help=f"{SPLIT_BY_HELP}: whole groups, or N×N-tile blocks of each image",
    )
    parser.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of the split and sample order"
    )
    parser.add_argument(
        "--image-codec",
        default=defaults.image_codec,
        choices=IMAGE_CODECS,
        help="npy: no decoding (least CPU); webp: lossless, smaller (network storage)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=defaults.jpeg_quality, help="for --image-codec jpg"
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=defaults.samples_per_shard, help="per tar file"
    )
    parser.add_argument(
        "--mix-buffer",
        type=int,
        default=defaults.mix_buffer,
        help="samples held to mix tiles of many images into each shard",
    )
    parser.add_argument(
        "--unknown",
        default=defaults.unknown,
        choices=("error", "ignore"),
        help="what to do with mask values missing from the classes file",
    )


def _add_band_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bands`` group: which bands of a multispectral image are kept and shown."""
    bands = parser.add_argument_group("bands (multispectral images: stored as they are, npy)")
    bands.add_argument(
        "--bands", help="bands to keep, in order: 1-based indices or band names (e.g. B4,B3,B2,B8)"
    )
    bands.add_argument(
        "--band-files",
        help="bands kept one per file: comma list of band names; --images matches the first\n"
        "band's files, the others replace that name in the file name (red,green,blue,nir)",
    )
    bands.add_argument(
        "--nodata", type=float, help="image no-data value (overrides the raster's; 'nan' allowed)"
    )
    bands.add_argument(
        "--rgb-bands",
        help="3 bands (names or 1-based positions among the kept bands) for a true-colour\n"
        "view, or 'none' (default: red/green/blue, else B4,B3,B2, else 3-band uint8)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``terraseg build`` (options in the order ``--help`` lists them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    defaults = BuildOptions()
    _add_input_arguments(parser)
    _add_output_arguments(parser, defaults)
    _add_band_arguments(parser)
    add_stac_arguments(
        parser,
        "with --stac/--stac-api: the bands to read, by asset key or eo:bands name or\n"
        "common name (B04,B03,B02 or red,green,blue,nir); required",
    )
    parser.add_argument(
        "--label-asset",
        metavar="KEY",
        help="with --stac/--stac-api: each item's raster label asset (read nearest on the\n"
        "image's grid); default: the STAC label extension, or --vector FILE",
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help="processes decoding and encoding"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def _check_stac_sources(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse file options with STAC items, and a STAC build without ``--assets``."""
    check_stac_arguments(parser, args)
    files = [
        option
        for option in (
            "images",
            "masks",
            "pairs_csv",
            "image_key",
            "mask_key",
            "mask_from",
            "band_files",
        )
        if getattr(args, option)
    ]
    if files:
        parser.error(f"--{files[0].replace('_', '-')} does not go with --stac/--stac-api")
    if not args.assets:
        parser.error("--stac/--stac-api need --assets (asset keys or band names)")
    if args.label_asset and args.vector:
        parser.error("give --label-asset or --vector, not both")
    if args.vector and bool(args.attribute) == bool(args.burn):
        parser.error("--vector needs exactly one of --attribute FIELD and --burn CLASS")
    if args.attribute and args.burn:
        parser.error("give --attribute or --burn, not both")


def _check_sources(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (through ``parser.error``) a combination of input options that does not fit."""
    if uses_stac(args):
        _check_stac_sources(parser, args)
        return
    check_stac_arguments(parser, args)
    if args.label_asset:
        parser.error("--label-asset goes with --stac or --stac-api")
    if args.vector:
        if args.masks or args.pairs_csv or not args.images:
            parser.error("--vector goes with --images (not --masks/--pairs-csv)")
        if bool(args.attribute) == bool(args.burn):
            parser.error("--vector needs exactly one of --attribute FIELD and --burn CLASS")
    elif args.attribute or args.burn:
        parser.error("--attribute and --burn go with --vector")
    elif bool(args.pairs_csv) == bool(args.images or args.masks):
        parser.error("give either --images and --masks, or --pairs-csv, or --images and --vector")


def _band_file_names(text: str | None) -> tuple[str, ...] | None:
    """The ``--band-files`` names; a band number names no file.

    Raises:
        BuildError: when an entry is a number.
    """
    entries = parse_band_list(text)
    if entries is None:
        return None
    names = tuple(entry for entry in entries if isinstance(entry, str))
    if len(names) != len(entries):
        raise BuildError(f"--band-files {entries!r}: give band names, not indices")
    return names


def _build_options(args: argparse.Namespace) -> BuildOptions:
    """The :class:`BuildOptions` the command line asks for (vector labels are added later)."""
    return BuildOptions(
        tile=args.tile, val=args.val, test=args.test, split_by=args.split_by, seed=args.seed,
        image_codec=args.image_codec, jpeg_quality=args.jpeg_quality,
        samples_per_shard=args.samples_per_shard, mix_buffer=args.mix_buffer, unknown=args.unknown,
        bands=parse_band_list(args.bands), band_files=_band_file_names(args.band_files),
        nodata=args.nodata, workers=args.workers, overwrite=args.overwrite,
        resample_labels=args.resample_labels,
        rgb_bands=(
            "none" if (args.rgb_bands or "").lower() == "none" else parse_band_list(args.rgb_bands)
        ),
    )  # fmt: skip


def _vector_labels(args: argparse.Namespace, classes) -> VectorLabels:
    """The ``--vector`` labels with the burn options of the command line."""
    return VectorLabels(
        args.vector, args.attribute, _background(args.background), args.all_touched,
        burn=args.burn, classes=classes, layer=args.layer, unknown=args.unknown,
    )  # fmt: skip


def _pairs_and_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, classes, options: BuildOptions
) -> tuple[list, BuildOptions]:
    """The image/label pairs to pack, and ``options`` (with vector labels when asked for).

    Raises:
        UserError: a source that cannot be read or paired.
    """
    if args.vector:
        labels = _vector_labels(args, classes)
        options = replace(options, vector_labels=labels)
        pairs = pairs_from_vector(args.images, args.vector, args.group, args.image_key)
        note = off_images_note(labels, [pair.image for pair in pairs])
        if note:
            print_warning(note)
    elif args.pairs_csv:
        if args.image_key or args.mask_key or args.mask_from:
            parser.error("--image-key/--mask-key/--mask-from go with --images and --masks")
        pairs = pair_from_csv(args.pairs_csv, args.group)
    else:
        if not (args.images and args.masks):
            parser.error("--images and --masks go together")
        pairs = pair_by_glob(
            args.images, args.masks, args.group, args.image_key, args.mask_key, args.mask_from
        )
    return pairs, options


def _build_from_stac(args: argparse.Namespace, classes, options: BuildOptions) -> dict:
    """Build from the STAC items of ``--stac``/``--stac-api`` (docs/stac.md).

    Raises:
        UserError: naming the catalog or item that cannot be read, or the build's errors.
    """
    from engine.data.build.stac_pairs import StacLabels, stac_pairs, stac_record
    from engine.data.sources.stac_grid import remote_reads

    items, source = stac_items(args)
    assets = asset_list(args.assets) or []
    labels = StacLabels(
        asset=args.label_asset, vector=bool(args.vector), attribute=args.attribute,
        burn=args.burn, background=_background(args.background), classes=classes,
        unknown=args.unknown,
    )  # fmt: skip
    vector = _vector_labels(args, classes) if args.vector else None
    if vector is not None:
        options = replace(options, vector_labels=vector)
    with tempfile.TemporaryDirectory(prefix="terraseg-stac-") as folder, remote_reads():
        pairs, rasters = stac_pairs(
            items, assets, folder, labels, resolution=args.resolution, group=args.group
        )
        if vector is not None:
            note = off_images_note(vector, [pair.image for pair in pairs])
            if note:
                print_warning(note)
        record = stac_record(source, assets, rasters, args.resolution)
        return build_shards(pairs, classes, args.out, replace(options, stac=record))


def _print_summary(manifest: dict) -> None:
    """Print how the shards were split and each split's and band's statistics."""
    record = manifest["split"]
    how = (
        f"blocks of {record['block_tiles']}x{record['block_tiles']} tiles"
        if record["by"] == "blocks"
        else "group"
    )
    print(f"split by {how}, seed {record['seed']}")
    shared = describe_shared_area(record)
    if shared:
        print(shared)
    for name, split in manifest["splits"].items():
        print(
            f"{name}: {split['num_samples']} samples in {len(split['shards'])} shards, "
            f"groups {split['groups']}"
        )
    for band in manifest["bands"]:
        print(
            f"band {band['name']} ({band['dtype']}): mean {band['mean']:.4g} std {band['std']:.4g}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_sources(parser, args)
    try:
        options = _build_options(args)
        classes = load_classes(args.classes)
        if uses_stac(args):
            manifest = _build_from_stac(args, classes, options)
        else:
            pairs, options = _pairs_and_options(parser, args, classes, options)
            manifest = build_shards(pairs, classes, args.out, options)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(manifest)
    return 0
