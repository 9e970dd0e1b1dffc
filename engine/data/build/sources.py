"""What a shard build reads of one pair: the image's bands, its valid pixels, the labels.

The image goes through :func:`engine.data.sources.rasters.open_raster` (the one raster reader:
band selection, band files, nodata, GDAL masks and alpha); the labels come from the mask
file (:func:`engine.data.sources.imageio.read_mask_values`) or from a vector file rasterised on the
image's grid (:class:`engine.data.sources.vector_labels.VectorLabels`), and are mapped to class
indices by the classes file (:func:`map_mask`). :func:`read_pair` puts these together, the
labels checked against (or resampled onto) the image's grid (:mod:`engine.data.build.label_grid`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from engine.data.build.label_grid import (
    Grid,
    check_label_grid,
    georeferenced,
    resample_labels,
    resampled_note,
)
from engine.data.build.output import BuildError
from engine.data.sources.classes import IGNORE_INDEX, ClassesFile
from engine.data.sources.imageio import TRANSPARENT, read_mask_values
from engine.data.sources.pictures import ImageReadError
from engine.data.sources.raster_base import RasterError
from engine.data.sources.rasters import open_raster

if TYPE_CHECKING:
    from engine.data.build.options import BuildOptions
    from engine.data.sources.pairing import Pair
    from engine.data.sources.vector_labels import VectorLabels


class PairData(NamedTuple):
    """What a build reads of one pair, the labels on the image's grid."""

    image: np.ndarray  # HxWxC native
    mask: np.ndarray  # uint8 HxW class indices; 255 = ignore (and nodata pixels of the image)
    names: list[str]  # band names
    nodata: float | None  # the image's nodata value
    note: str | None  # one line to print (a mask resampled onto the image's grid)
    band_notes: tuple[str, ...] = ()  # the reader's notes (bands tagged alpha kept as data)


def read_pair(pair: Pair, classes: ClassesFile, options: BuildOptions) -> PairData:
    """Read a pair's image and labels, the labels checked (or resampled) onto its grid.

    The one place every build (worker processes too) reads a pair; the grid rules are in
    :mod:`engine.data.build.label_grid`.

    Raises:
        BuildError, ImageReadError, LabelGridError: naming the file(s) and the problem.
    """
    image, valid, names, nodata, grid, band_notes = read_source(
        Path(pair.image), options.bands, options.nodata, options.band_files
    )
    bands, dtype = image.shape[2], str(image.dtype)
    if options.image_codec != "npy" and (bands != 3 or dtype != "uint8"):
        raise BuildError(
            f"{pair.image}: {bands}-band {dtype} image; --image-codec {options.image_codec} "
            "holds 3-band uint8 only: use --image-codec npy"
        )
    vector = getattr(pair, "vector_labels", None) or options.vector_labels  # STAC label items
    values = read_labels(pair, classes.encoding, vector)
    on_grid = None if vector else grid  # vector labels are rasterised on the image's grid
    mask_grid = check_label_grid(
        pair.image, pair.mask, values.shape, on_grid, image.shape[:2], options.resample_labels
    )
    mask = map_mask(values, classes, options.unknown, pair.mask, transparent_is_ignore=bool(vector))
    note = None
    if mask_grid is not None and on_grid is not None:  # a mask grid comes with the image's
        mask = resample_labels(mask, mask_grid, on_grid)
        note = resampled_note(pair.mask, pair.image, mask_grid, on_grid)
    mask[~valid] = IGNORE_INDEX
    return PairData(image, mask, names, nodata, note, band_notes)


def read_source(
    path: Path,
    bands: tuple[int | str, ...] | None,
    nodata: float | None,
    band_files: tuple[str, ...] | None,
) -> tuple[np.ndarray, np.ndarray, list[str], float | None, Grid | None, tuple[str, ...]]:
    """A pair's image: ``(HxWxC native, valid HxW, band names, nodata, grid, notes)``.

    NaN pixels of float bands are never valid, whatever the nodata value. The grid is
    ``None`` unless the image is georeferenced (a CRS and a non-identity transform).

    Raises:
        BuildError: naming the file that cannot be read, lacks a band or does not fit.
    """
    try:
        with open_raster(
            path,
            bands=list(bands) if bands else None,
            nodata=nodata,
            band_files=list(band_files) if band_files else None,
        ) as reader:
            height, width, _ = reader.shape
            image = reader.read(0, height, 0, width)
            valid = reader.read_valid(0, height, 0, width)
            names, value = list(reader.band_names), reader.nodata
            georef = reader.georef or {}
            notes = tuple(reader.notes)
    except (RasterError, FileNotFoundError) as error:
        raise BuildError(str(error).strip("'\"")) from error
    if image.dtype.kind == "f":
        valid &= np.isfinite(image).all(-1)
    grid = georeferenced(georef.get("crs"), georef.get("transform"), height, width)
    return image, valid, names, value, grid, notes


def read_labels(pair: Pair, encoding: str, vector: VectorLabels | None) -> np.ndarray:
    """The label values of a pair: its mask file's, or the vector file's on the image grid.

    Raises:
        BuildError, ImageReadError: naming the mask or vector file.
    """
    if vector is not None:
        return vector.values_for(pair.image)
    try:
        return read_mask_values(pair.mask, encoding)
    except RasterError as error:
        raise ImageReadError(str(error)) from error


def map_mask(
    values: np.ndarray,
    classes: ClassesFile,
    unknown: str,
    path: Path,
    transparent_is_ignore: bool = False,
) -> np.ndarray:
    """Mask values → uint8 class indices (255 = ignore) through the classes file.

    ``transparent_is_ignore``: the value :data:`TRANSPARENT` means ignore (transparent
    pixels of RGBA colour masks, the "ignore" background of vector labels); for index masks
    it is an ordinary value (a label's −1 no data is listed in the classes file).

    Raises:
        BuildError: naming the mask and the values the classes file lacks (unless
            ``unknown == "ignore"``, which maps them to ignore).
    """
    found, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    lookup = classes.lookup
    if transparent_is_ignore or classes.encoding == "rgb":
        lookup.setdefault(TRANSPARENT, IGNORE_INDEX)
    table = np.array([lookup.get(int(v), -1) for v in found], dtype=np.int16)
    missing = table < 0
    if missing.any():
        if unknown != "ignore":
            listed = ", ".join(
                f"{classes.describe(int(v))} ({int(n):,} pixels)"
                for v, n in zip(found[missing], counts[missing])
            )
            raise BuildError(
                f"{path}: mask value(s) not in the classes file {classes.path}: {listed}. "
                "Add them to the classes file (ignore: true for no-data) or pass --unknown ignore."
            )
        table[missing] = IGNORE_INDEX
    return table.astype(np.uint8)[inverse.reshape(values.shape)]
