"""What a shard build reads of one pair: the image's bands, its valid pixels, the labels.

The image goes through :func:`engine.data.rasters.open_raster` (the one raster reader:
band selection, band files, nodata, GDAL masks and alpha); the labels come from the mask
file (:func:`engine.data.imageio.read_mask_values`) or from a vector file rasterised on the
image's grid (:class:`engine.data.vector_labels.VectorLabels`), and are mapped to class
indices by the classes file (:func:`map_mask`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.data.build_output import BuildError
from engine.data.classes import IGNORE_INDEX, ClassesFile
from engine.data.imageio import TRANSPARENT, ImageReadError, read_mask_values
from engine.data.raster_base import RasterError
from engine.data.rasters import open_raster

if TYPE_CHECKING:
    from engine.data.pairing import Pair
    from engine.data.vector_labels import VectorLabels


def read_source(
    path: Path,
    bands: tuple[int | str, ...] | None,
    nodata: float | None,
    band_files: tuple[str, ...] | None,
) -> tuple[np.ndarray, np.ndarray, list[str], float | None]:
    """A pair's image: ``(HxWxC native, valid HxW, band names, nodata value)``.

    NaN pixels of float bands are never valid, whatever the nodata value.

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
    except (RasterError, FileNotFoundError) as error:
        raise BuildError(str(error).strip("'\"")) from error
    if image.dtype.kind == "f":
        valid &= np.isfinite(image).all(-1)
    return image, valid, names, value


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
