"""Bench data: one synthetic folder of files, and shards of it in each image codec.

The folder is what the original project trained from: ``Scene N/images/*.jpg`` (JPEG
quality 90, from :func:`engine.data.synthetic.scenes.write_dataset`) plus, for the folder loader,
single-band class-index PNG masks (``masks_index/``), so the folder baseline does *not*
pay for mapping mask colours to classes (the shards do not either). The shards are built
from the same files by :func:`engine.data.build.builder.build_shards`, one folder per codec,
with every image in the train split.

:func:`prepare_multispectral` turns the same scenes into N-band GeoTIFFs (13 bands of
Sentinel-2-like int16 reflectance x 10000 by default, georeferenced, nodata 0 where the
scene has its no-data region) and builds them into ``npy`` shards with the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.build.builder import BuildOptions, build_shards
from engine.data.shards.manifest import load_manifest
from engine.data.sources.classes import load_classes
from engine.data.sources.imageio import read_mask_values
from engine.data.sources.pairing import pair_by_glob
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


# Sentinel-2 L1C band names and a rough reflectance (x 10000) per synthetic class and band:
# water dark and falling into the infrared, vegetation with its red edge, the rest flat.
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
_WATER = (900, 800, 700, 500, 400, 300, 250, 200, 180, 100, 20, 60, 40)
_VEGETATION = (1200, 900, 1100, 700, 1500, 2900, 3400, 3600, 3700, 1200, 30, 2100, 1100)
_BARE = (1600, 1800, 2100, 2500, 2700, 2800, 2900, 3000, 3100, 1000, 40, 3500, 3000)


def _reflectance(image: np.ndarray, index: np.ndarray, bands: int, rng) -> np.ndarray:
    """``(H, W, bands)`` float32 reflectance x 10000 from an RGB scene and its class mask.

    Each class gets one of three spectra (water, vegetation, bare), shaded by the scene's
    brightness, plus noise; deterministic for a given ``rng``.
    """
    spectra = np.array([_WATER, _VEGETATION, _BARE], np.float32)
    spectra = np.resize(spectra, (3, max(bands, 1)))[:, :bands]  # bands beyond 13 repeat
    kind = np.asarray(index, np.int64) % 3
    shade = image.astype(np.float32).mean(axis=2) / 128.0  # ~0..2
    out = spectra[kind] * (0.5 + 0.5 * shade)[..., None]
    out += rng.normal(0.0, 60.0, size=out.shape).astype(np.float32)
    return out


def prepare_multispectral(
    data: BenchData, bands: int = 13, dtype: str = "int16", seed: int = 0
) -> Path:
    """Write ``bands``-band GeoTIFFs of ``data``'s scenes and build them into ``npy`` shards.

    One GeoTIFF per scene (``<folder>-ms<bands>-<dtype>/Scene N/images/*.tif``: EPSG:32640,
    10 m pixels, band descriptions ``B1``... ``B12`` for 13 bands, nodata 0 where the
    scene's mask is ignore), values from :func:`_reflectance` (for ``float32`` divided by
    10000, for ``uint8`` by 40), paired with the scene's colour mask. Reused when present.

    Args:
        data: The RGB bench data (:func:`prepare`).
        bands: Bands per image.
        dtype: ``int16`` (default), ``uint16``, ``uint8`` or ``float32``.
        seed: Seed of the noise.

    Returns:
        The shard folder (all samples in the train split, tile = scene edge).
    """
    import rasterio
    from rasterio.transform import from_origin

    scale = {"int16": 1.0, "uint16": 1.0, "uint8": 1 / 40, "float32": 1e-4}[dtype]
    folder = data.folder.parent / f"{data.folder.name}-ms{bands}-{dtype}"
    out = folder.parent / f"{folder.name}-shards-npy"
    names = S2_BANDS if bands == len(S2_BANDS) else tuple(f"band{i + 1}" for i in range(bands))
    size = 0
    for number, (jpg, index_mask) in enumerate(data.pairs):
        target = folder / jpg.parent.parent.name / "images" / f"{jpg.stem}.tif"
        image = np.asarray(Image.open(jpg).convert("RGB"))
        size = image.shape[0]
        if target.exists():
            continue
        index = np.asarray(Image.open(index_mask))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(number,)))
        values = _reflectance(image, index, bands, rng) * scale
        if dtype != "float32":
            info = np.iinfo(dtype)
            values = np.clip(np.rint(values), max(info.min, 1), info.max)
        values[index == 255] = 0  # nodata
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        profile = {
            "driver": "GTiff", "width": image.shape[1], "height": image.shape[0],
            "count": bands, "dtype": dtype, "nodata": 0, "crs": "EPSG:32640",
            "transform": from_origin(300000.0 + 20000.0 * number, 2800000.0, 10.0, 10.0),
            "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel",
        }  # fmt: skip
        with rasterio.open(partial, "w", **profile) as raster:
            raster.write(np.moveaxis(values.astype(dtype), 2, 0))
            for band, name in enumerate(names, 1):
                raster.set_band_description(band, name)
        partial.rename(target)
    if not (out / "dataset.json").exists():
        found = pair_by_glob(str(folder / "*/images/*.tif"), str(data.folder / "*/masks/*.png"))
        options = BuildOptions(
            tile=size, val=0.0, test=0.0, seed=seed, image_codec="npy", workers=2
        )
        build_shards(found, load_classes(data.folder / "classes.yaml"), out, options)
    return out


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
