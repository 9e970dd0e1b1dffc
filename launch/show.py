"""Render masks, predictions and image | truth | prediction | error panels, with a legend.

Classes (names and colours) come from --manifest dataset.json, --classes classes.yaml, the
shard folder's manifest (--shards) or the model's export (--model).

Examples:
    # a class-index mask (e.g. predict.py's *_mask.png), optionally over its image
    python launch/show.py preds/tile_07_mask.png --manifest shards/dubai/dataset.json \
        --image data/tile_07.jpg --out tile_07_view.png
    # an image with its true mask (colour-coded: decoded with the classes file) and a prediction
    python launch/show.py --image img.jpg --truth mask.png --prediction preds/img_mask.png \
        --classes classes.yaml --out panel.png
    # a sample from the shards, predicted on the fly by a trained model
    python launch/show.py --shards shards/dubai --split val --index 3 --model runs/dubai \
        --out val3.png
"""

import argparse
import json
import sys
from pathlib import Path

from engine.data.classes import IGNORE_INDEX, ClassesError, load_classes
from engine.data.imageio import ImageReadError
from engine.data.loader import read_sample
from engine.data.manifest import ManifestError, load_manifest
from engine.data.raster_base import RasterError
from engine.data.rasters import open_raster, read_index_mask
from engine.evaluate.folder_eval import FolderEvalError, read_truth_mask
from engine.render.colors import class_info
from engine.render.figures import mask_figure, panel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mask", nargs="?", help="a class-index mask to render")
    parser.add_argument("--image", help="the image (for a panel or an overlay)")
    parser.add_argument("--truth", help="true mask (class indices, or colours with --classes)")
    parser.add_argument("--prediction", help="predicted class-index mask")
    parser.add_argument("--shards", help="shard folder to take a sample from")
    parser.add_argument("--split", default="val", help="split of --shards")
    parser.add_argument("--index", type=int, default=0, help="sample number in --split")
    parser.add_argument("--model", help="run/export folder: predict the image on the fly")
    parser.add_argument("--manifest", help="dataset.json giving class names and colours")
    parser.add_argument("--classes", help="classes.yaml giving class names and colours")
    parser.add_argument("--tile", type=int, default=1024, help="window edge for --model")
    parser.add_argument("--tta", default="none", choices=("none", "flip", "d4"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--out", required=True, help="output PNG")
    args = parser.parse_args(argv)

    try:
        classes = load_classes(args.classes) if args.classes else None
        manifest = json.loads(Path(args.manifest).read_text()) if args.manifest else None
        image = truth = prediction = None
        title = args.title
        exported = None
        if args.model:
            from engine.infer.sliding import resolve_device
            from engine.train.export import load_exported

            exported = load_exported(args.model, device=resolve_device(args.device))
            manifest = manifest or exported.manifest
        if args.shards:
            shards = load_manifest(args.shards)
            sample = read_sample(shards, args.split, args.index)
            image, truth = sample.image.permute(1, 2, 0).numpy(), sample.mask.numpy()
            manifest = manifest or shards.data
            title = title or f"{args.split}[{args.index}] {sample.key}"
        if manifest is None and classes is None:
            parser.error("give --manifest or --classes (or --shards/--model) for class names")
        names, palette = class_info(manifest) if manifest is not None else class_info(None, classes)
        if args.image:
            with open_raster(args.image) as reader:
                image = reader.read(0, reader.shape[0], 0, reader.shape[1])
        if args.truth:
            truth = read_truth_mask(args.truth, classes, len(names), IGNORE_INDEX)
        if args.prediction:
            prediction = read_index_mask(args.prediction)
        if exported is not None:
            if image is None:
                parser.error("--model needs an image (--image or --shards)")
            from engine.infer.sliding import predict_mask

            data = exported.manifest
            prediction = predict_mask(
                exported.model,
                image,
                num_classes=int(exported.spec["num_classes"]),
                mean=data["mean"],
                std=data["std"],
                tile=args.tile,
                tta=args.tta,
            )
        if args.mask:
            mask = read_index_mask(args.mask)
            mask_figure(
                mask,
                names,
                palette,
                args.out,
                image=image,
                alpha=args.alpha,
                title=title or Path(args.mask).name,
            )
        elif image is not None:
            panel(image, truth, prediction, names, palette, args.out, title=title)
        else:
            parser.error("nothing to show: give a mask, --image or --shards")
    except (
        ClassesError,
        FolderEvalError,
        ImageReadError,
        ManifestError,
        RasterError,
        FileNotFoundError,
        ValueError,
        IndexError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
