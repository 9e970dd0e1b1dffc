"""The options of a shard build (``build_shards.py``'s flags as one frozen dataclass)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.data.sources.vector_labels import VectorLabels


@dataclass(frozen=True)
class BuildOptions:
    """How to cut, encode and split.

    Attributes:
        tile: Tile edge in pixels; larger images are cut (train tiles at the bottom and
            right edges end at the image's edge: :mod:`engine.data.build.tiling`), smaller ones
            padded (image 0, label 255).
        val: Fraction of groups (or blocks) for validation.
        test: Fraction of groups (or blocks) for testing.
        split_by: ``group`` (whole groups) or ``blocks:N`` (N×N-tile blocks of each image;
            see :mod:`engine.data.build.splits`).
        seed: Seed of the split and of the sample order inside each split.
        image_codec: ``npy`` (default: least CPU per tile, see docs/BENCHMARKS.md; masks
            are raw ``npy`` too; images of any band count and type are stored as they are),
            ``png``, ``webp`` (lossless, smaller: for network storage) or ``jpg`` (these
            three hold 3-band uint8 images only, and store PNG masks).
        jpeg_quality: Quality for the ``jpg`` codec.
        samples_per_shard: Most samples in one tar.
        mix_buffer: Samples held back and written in seeded random order, so that a shard
            mixes tiles of many images (memory: this many encoded samples).
        unknown: ``error`` (default) or ``ignore`` for mask values not in the classes file.
        bands: Bands to keep, in order: 1-based indices or band names (the raster's band
            descriptions, or ``band_files`` names); ``None``: all (an alpha band is used as
            the valid mask, not kept).
        band_files: Names of bands kept one per file: each image path is the first band's
            file, the others' paths replace that name in the file name by theirs.
        nodata: Image no-data value (overrides the raster's); ``None``: the raster's.
            Pixels that are nodata in any band (or masked, or alpha 0, or NaN) become
            ignore (255) in the mask and stay out of the statistics.
        rgb_bands: 3 names or 1-based positions among the stored bands that make a
            true-colour view, ``"none"``, or ``None`` (default: see
            :func:`engine.data.build.statistics.resolve_rgb`).
        vector_labels: Labels from a vector file rasterised on each image's grid, instead
            of mask files (:mod:`engine.data.sources.vector_labels`).
        resample_labels: Resample a georeferenced mask that is off its image's grid onto
            it (nearest neighbour) instead of refusing it (:mod:`engine.data.build.label_grid`).
        workers: Processes that decode and encode in parallel.
        stac: The manifest's ``stac`` entry when the images are STAC items
            (:func:`engine.data.build.stac_pairs.stac_record`), else ``None``.
        overwrite: Replace an existing output folder.
    """

    tile: int = 1024
    val: float = 0.15
    test: float = 0.15
    split_by: str = "group"
    seed: int = 0
    image_codec: str = "npy"
    jpeg_quality: int = 95
    samples_per_shard: int = 256
    mix_buffer: int = 512
    unknown: str = "error"
    bands: tuple[int | str, ...] | None = None
    band_files: tuple[str, ...] | None = None
    nodata: float | None = None
    rgb_bands: tuple[int | str, ...] | str | None = None
    vector_labels: VectorLabels | None = None
    resample_labels: bool = False
    workers: int = 1
    overwrite: bool = False
    stac: dict | None = None
