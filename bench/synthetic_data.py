"""Bench data: one synthetic folder of files, and shards of it in each image codec.

The folder is what the original project trained from: ``Scene N/images/*.jpg`` (JPEG
quality 90, from :func:`engine.data.synthetic.scenes.write_dataset`) plus, for the folder loader,
single-band class-index PNG masks (``masks_index/``), so the folder baseline does *not*
pay for mapping mask colours to classes (the shards do not either). The shards are built
from the same files by :func:`engine.data.shard_builder.build_shards`, one folder per codec,
with every image in the train split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.classes import load_classes
from engine.data.imageio import read_mask_values
from engine.data.manifest import load_manifest
from engine.data.pairing import pair_by_glob
from engine.data.shard_builder import BuildOptions, build_shards
from engine.data.synthetic.scenes import write_dataset


@dataclass
class BenchData:
    """Where the bench data is.

    Attributes:
        folder: The synthetic dataset (Dubai layout, RGB masks, ``classes.yaml``).
        pairs: ``(image, index mask)`` paths for the folder loader.
        shards: ``codec -> shard folder``.
        mean: Per-channel mean of the train split, 0-1 scale (from the manifest).
        std: Per-channel std, 0-1 scale.
        num_classes: Classes in the data.
    """

    folder: Path
    pairs: list[tuple[Path, Path]]
    shards: dict[str, Path]
    mean: list[float]
    std: list[float]
    num_classes: int


def _index_masks(folder: Path) -> list[tuple[Path, Path]]:
    """Write class-index PNG masks beside the colour masks; return (image, mask) pairs."""
    classes = load_classes(folder / "classes.yaml")
    lookup = classes.lookup
    pairs = []
    for image in sorted(folder.glob("*/images/*.jpg")):
        colour = image.parent.parent / "masks" / f"{image.stem}.png"
        target = image.parent.parent / "masks_index" / f"{image.stem}.png"
        if not target.exists():
            values = read_mask_values(colour, "rgb")
            keys = np.array(sorted(lookup), dtype=np.int64)
            table = np.array([lookup[k] for k in keys], dtype=np.uint8)
            index = table[np.searchsorted(keys, values)]
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(index).save(target)
        pairs.append((image, target))
    return pairs


def prepare(
    root: Path, images: int, size: int, codecs: tuple[str, ...], seed: int = 0
) -> BenchData:
    """Generate (or reuse) ``images`` scenes of ``size``² and their shards per codec.

    A folder already under ``root`` with the same arguments is reused, so repeated runs
    with ``--data-dir`` skip the generation.

    Args:
        root: Parent folder of the data.
        images: Number of scenes (in groups of 4).
        size: Scene edge in pixels; also the shard tile size (one tile per scene).
        codecs: Shard image codecs to build.
        seed: Seed of the scenes.
    """
    per_group = 4
    groups = max(1, -(-images // per_group))
    folder = root / f"scenes-{groups * per_group}x{size}-seed{seed}"
    if not (folder / "classes.yaml").exists():
        write_dataset(folder, num_groups=groups, scenes_per_group=per_group, size=size, seed=seed)
    pairs = _index_masks(folder)
    shards = {}
    for codec in codecs:
        out = folder.parent / f"{folder.name}-shards-{codec}"
        if not (out / "dataset.json").exists():
            found = pair_by_glob(str(folder / "*/images/*.jpg"), str(folder / "*/masks/*.png"))
            options = BuildOptions(
                tile=size, val=0.0, test=0.0, seed=seed, image_codec=codec, workers=2
            )
            build_shards(found, load_classes(folder / "classes.yaml"), out, options)
        shards[codec] = out
    manifest = load_manifest(next(iter(shards.values()))) if shards else None
    return BenchData(
        folder,
        pairs,
        shards,
        manifest.mean if manifest else [0.5] * 3,
        manifest.std if manifest else [0.25] * 3,
        manifest.num_classes if manifest else len(load_classes(folder / "classes.yaml").names),
    )


def shard_bytes(shard_dir: Path) -> dict[str, float]:
    """Bytes per sample of a shard folder: whole tars, and the image members alone."""
    import tarfile

    manifest = load_manifest(shard_dir)
    split = manifest.split("train")
    total = sum(p.stat().st_size for p in split.shards)
    image_bytes = 0
    for path in split.shards:
        with tarfile.open(path) as tar:
            image_bytes += sum(m.size for m in tar.getmembers() if ".image." in m.name)
    return {
        "shard_bytes_per_image": total / split.num_samples,
        "image_member_bytes_per_image": image_bytes / split.num_samples,
    }
