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
    # multispectral shards: the near-infrared band in grey, or a false-colour view
    python launch/show.py --shards shards/s2 --split val --index 0 --band B8 --out b8.png
    python launch/show.py --shards shards/s2 --split val --index 0 --rgb B8,B4,B3 --out cir.png

Masks written by `predict --values original` (the dataset's own values: integers, or RGB
colours) are read back with --values original: each value is mapped to its class through the
classes' values in --manifest (a dataset.json, or the model's export folder RUN/best),
--shards or --classes; the ignore value (and nodata) is shown as ignored, a value that is no
class's is an error naming the file.
    python launch/show.py preds/t_mask.tif --values original --manifest runs/dubai/best --out t.png

Images are drawn from their native bands (engine.render.colors.display_rgb): the manifest's
rgb_bands in true colour (else the first band in grey), each band stretched linearly from its
display range (2nd..98th percentile of the train split; 8-bit RGB data of shard format 2 is
drawn as stored); pixels that are nodata in any band are black. An --image without a
manifest of the same band count is stretched by its own percentiles.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.cli import HelpFormatter
from engine.data.shards.loader import read_sample
from engine.data.shards.manifest import load_manifest
from engine.data.shards.normalize import Normalization
from engine.data.sources.classes import IGNORE_INDEX, load_classes
from engine.data.sources.rasters import open_raster, read_index_mask
from engine.errors import UserError
from engine.evaluate.folder_eval import read_manifest_json, read_truth_mask
from engine.infer.values import VALUE_MODES, class_indices, original_values
from engine.render.colors import RenderError, class_info, display_rgb, image_normalization
from engine.render.figures import mask_figure, panel


def shard_sample(folder: str, split: str, index: int):
    """Sample ``index`` of ``split`` in a shard folder; a named error when there is none."""
    shards = load_manifest(folder)
    count = shards.split(split).num_samples
    if not 0 <= index < count:
        raise UserError(
            f"--index {index}: the {split} split of {folder} has {count} samples (0..{count - 1})"
        )
    try:
        return shards, read_sample(shards, split, index)
    except (StopIteration, IndexError) as error:
        raise UserError(
            f"{folder}: the {split} shards hold fewer samples than dataset.json counts "
            f"(sample {index})"
        ) from error


def check_out(out: str) -> None:
    """Refuse an output PNG that is a folder or whose folder cannot be written."""
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {out}: is a folder; give a PNG file name")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not a writable folder")


def render(where: str, draw, *args, **kwargs) -> None:
    """Call a figure function; its complaint about the inputs names them."""
    try:
        draw(*args, **kwargs)
    except RenderError as error:
        raise UserError(f"{where}: {error}") from error


def read_image(path: str, normalization: Normalization | None):
    """A raster as a native ``[C, H, W]`` array and the normalization that draws it.

    With the data's normalization: a file whose band descriptions include the data's bands
    is read with those bands, in their order; then, when the band counts match, the data's
    display ranges draw it. Otherwise the image's own percentile stretch draws it (with the
    file's nodata and band names where the reader has them).
    """
    wanted = normalization.names if normalization is not None else []
    with open_raster(path) as reader:
        names = list(getattr(reader, "band_names", None) or [])
    bands: list[int | str] | None = None
    if names != wanted and wanted and set(wanted) <= set(names):
        bands = list(wanted)
    with open_raster(path, bands=bands) as reader:
        for note in reader.notes:  # a band tagged alpha read as data
            print(f"note: {note}", file=sys.stderr)
        image = reader.read(0, reader.shape[0], 0, reader.shape[1])
        nodata = getattr(reader, "nodata", None)
        band_names = getattr(reader, "band_names", None)
    image = image[..., None] if image.ndim == 2 else image
    image = image.transpose(2, 0, 1)
    if normalization is not None and normalization.in_channels == image.shape[0]:
        return image, normalization
    if normalization is not None:
        print(
            f"note: {path} has {image.shape[0]} bands, the data {normalization.in_channels}: "
            "drawn with the image's own percentile stretch",
            file=sys.stderr,
        )
    return image, image_normalization(image, nodata, band_names)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``terraseg show``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("mask", nargs="?", help="a class-index mask to render")
    parser.add_argument("--image", help="the image (for a panel or an overlay)")
    parser.add_argument("--truth", help="true mask (class indices, or colours with --classes)")
    parser.add_argument("--prediction", help="predicted class-index mask")
    parser.add_argument(
        "--values",
        default="index",
        choices=VALUE_MODES,
        help="what the mask and --prediction hold: class indices, or the dataset's own label "
        "values (written by predict --values original)",
    )
    parser.add_argument("--shards", help="shard folder to take a sample from")
    parser.add_argument("--split", default="val", help="split of --shards")
    parser.add_argument("--index", type=int, default=0, help="sample number in --split")
    parser.add_argument("--model", help="run/export folder: predict the image on the fly")
    parser.add_argument("--manifest", help="dataset.json giving class names and colours")
    parser.add_argument("--classes", help="classes.yaml giving class names and colours")
    parser.add_argument("--tile", type=int, default=1024, help="window edge for --model")
    parser.add_argument(
        "--tta", default="none", choices=("none", "flip", "d4"), help="test-time augmentation"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--band",
        help="draw this band in grey: a band name or a 1-based band number (default: the "
        "data's rgb_bands in true colour, else band 1 in grey)",
    )
    parser.add_argument(
        "--rgb", help="three bands drawn as red,green,blue: names or 1-based numbers (B8,B4,B3)"
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--out", required=True, help="output PNG")
    return parser


@dataclass
class Scene:
    """What the figure is drawn from, gathered from the options step by step."""

    manifest: dict | None = None
    title: str | None = None
    image: np.ndarray | None = None
    truth: np.ndarray | None = None
    prediction: np.ndarray | None = None
    mask: np.ndarray | None = None  # the positional mask, as class indices
    normalization: Normalization | None = None
    exported: Any = None


def _load_sources(args: argparse.Namespace) -> Scene:
    """The manifest, the model (``--model``) and the shard sample (``--shards``) asked for."""
    scene = Scene(manifest=read_manifest_json(args.manifest) if args.manifest else None)
    scene.title = args.title
    if args.model:
        from engine.infer.sliding import resolve_device
        from engine.train.export import load_exported

        scene.exported = load_exported(args.model, device=resolve_device(args.device))
        scene.manifest = scene.manifest or scene.exported.manifest
    if args.shards:
        shards, sample = shard_sample(args.shards, args.split, args.index)
        scene.image, scene.truth = sample.image.numpy(), sample.mask.numpy()
        scene.normalization = shards.normalization
        scene.manifest = scene.manifest or shards.data
        scene.title = scene.title or f"{args.split}[{args.index}] {sample.key}"
    return scene


def _class_names(parser, args: argparse.Namespace, manifest: dict | None, classes):
    """Class names and colours, from the manifest (else the classes file)."""
    if manifest is None and classes is None:
        parser.error("give --manifest or --classes (or --shards/--model) for class names")
    try:
        return class_info(manifest, None if manifest is not None else classes)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{args.manifest or args.shards or args.model}: {error}") from error


def _read_files(args: argparse.Namespace, scene: Scene, classes, num_classes: int) -> None:
    """Read ``--image``, ``--truth`` and ``--prediction`` into the scene."""
    if args.image:
        try:
            normalization = Normalization.from_manifest(scene.manifest) if scene.manifest else None
        except (KeyError, TypeError, ValueError):
            normalization = None  # a manifest without statistics: the image's own
        scene.image, scene.normalization = read_image(args.image, normalization)
    if args.truth:
        scene.truth = read_truth_mask(args.truth, classes, num_classes, IGNORE_INDEX)
    if args.prediction:
        scene.prediction = read_shown_mask(args.prediction, args, scene.manifest, classes)
    if args.mask:
        scene.mask = read_shown_mask(args.mask, args, scene.manifest, classes)


def read_shown_mask(path: str, args: argparse.Namespace, manifest: dict | None, classes) -> Any:
    """A mask to draw as class indices: as it is, or mapped back from original values.

    Raises:
        UserError: naming the file when it is not a mask of the chosen kind, or
            ``--values original`` has no classes with values to map it back with.
    """
    if args.values == "index":
        return read_index_mask(path)
    where = args.manifest or args.model or args.shards or args.classes
    if manifest is None and classes is not None:
        manifest = {"classes": classes.manifest_classes(), "ignore_value": classes.ignore_value()}
    if manifest is None:
        raise UserError(f"{path}: --values original needs the classes' values (--manifest, "
                        "--model, --shards or --classes)")  # fmt: skip
    table = original_values(manifest, f"{where}")
    with open_raster(path) as reader:
        height, width = reader.shape[:2]
        data = reader.read(0, height, 0, width)
        valid = reader.read_valid(0, height, 0, width)
    data[~valid] = table[IGNORE_INDEX]  # nodata, as predict writes it: shown as ignored
    return class_indices(data, table, len(manifest.get("classes") or []), path)


def _predict(parser: argparse.ArgumentParser, args: argparse.Namespace, scene: Scene) -> None:
    """Predict the scene's image with ``--model`` (when given)."""
    exported = scene.exported
    if exported is None:
        return
    if scene.image is None:
        parser.error("--model needs an image (--image or --shards)")
    from engine.infer.sliding import SlidingOptions, predict_mask

    scene.prediction = predict_mask(
        exported.model,
        scene.image.transpose(1, 2, 0),
        num_classes=int(exported.spec["num_classes"]),
        normalization=exported.normalization,
        options=SlidingOptions(tile=args.tile, tta=args.tta),
    )


def _picture(parser, args: argparse.Namespace, scene: Scene, where: str) -> None:
    """Turn the scene's native image into the uint8 picture shown (``--band``/``--rgb``)."""
    if scene.image is not None:
        if scene.normalization is None:
            scene.normalization = image_normalization(scene.image)
        rgb = [b.strip() for b in args.rgb.split(",")] if args.rgb else None
        try:
            scene.image = display_rgb(scene.image, scene.normalization, args.band, rgb=rgb)
        except RenderError as error:
            raise UserError(f"{where}: {error}") from error
    elif args.band or args.rgb:
        parser.error("--band and --rgb need an image (--image or --shards)")


def _draw(parser, args: argparse.Namespace, scene: Scene, classes_shown, where: str) -> None:
    """Write the figure: the mask (over the image) or the image | truth | prediction panel."""
    names, palette = classes_shown
    if scene.mask is not None:
        render(
            where,
            mask_figure,
            scene.mask,
            names,
            palette,
            args.out,
            image=scene.image,
            alpha=args.alpha,
            title=scene.title or Path(args.mask).name,
        )
    elif scene.image is not None:
        render(
            where, panel, scene.image, scene.truth, scene.prediction, names, palette, args.out,
            title=scene.title,
        )  # fmt: skip
    else:
        parser.error("nothing to show: give a mask, --image or --shards")


def show(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Draw what the parsed options ask for into ``--out``.

    Raises:
        UserError: an input that cannot be read or drawn (``parser.error`` for bad options).
    """
    check_out(args.out)
    classes = load_classes(args.classes) if args.classes else None
    scene = _load_sources(args)
    names, palette = _class_names(parser, args, scene.manifest, classes)
    _read_files(args, scene, classes, len(names))
    _predict(parser, args, scene)
    sources = [p for p in (args.mask, args.image, args.truth, args.prediction) if p]
    where = ", ".join(sources) or f"{args.shards} {args.split}[{args.index}]"
    _picture(parser, args, scene, where)
    _draw(parser, args, scene, (names, palette), where)


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        show(parser, args)
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0
