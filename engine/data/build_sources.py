"""Reading the inputs of a shard build: TIFF bands and band files, index masks, classes.

Provisional (issue #14): :func:`read_tiff_bands` and :func:`read_mask` read with
rasterio directly until ``engine.data.rasters.open_raster`` implements the readers'
contract (bands, band files, nodata, ``read_valid``); then they go.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.data.build_output import BuildError
from engine.data.classes import IGNORE_INDEX, ClassesFile
from engine.data.imageio import TIFF_SUFFIXES, TRANSPARENT, check_pixels, read_mask_values


def map_mask(values: np.ndarray, classes: ClassesFile, unknown: str, path: Path) -> np.ndarray:
    """Mask values → uint8 class indices (255 = ignore) through the classes file.

    Raises:
        BuildError: naming the mask and the values the classes file lacks (unless
            ``unknown == "ignore"``, which maps them to ignore).
    """
    found, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    lookup = classes.lookup
    if classes.encoding == "rgb":  # transparent pixels of RGBA masks (imageio notes)
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


def band_paths(path: Path, band_files: tuple[str, ...]) -> list[Path]:
    """The files of ``band_files``: ``path`` with the first band's name replaced by each's.

    Raises:
        BuildError: when the file name does not contain the first band's name.
    """
    first = band_files[0]
    if first not in path.name:
        raise BuildError(
            f"{path}: --band-files: the file name does not contain the first band name {first!r}"
        )
    return [path.with_name(path.name.replace(first, name, 1)) for name in band_files]


@contextlib.contextmanager
def _open(path: Path) -> Iterator:
    """``rasterio.open`` without the warning for files that are not georeferenced."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            yield dataset


def read_tiff_bands(path: Path, band_files: tuple[str, ...] | None) -> tuple:
    """``(image HxWxC, valid HxW, names, nodata)`` of a TIFF, or of its band files.

    Alpha bands are not kept: with GDAL per-dataset masks they mark invalid pixels. Names
    are the band descriptions, else the colour (red/green/blue), else ``band<N>``; a 3-band
    uint8 TIFF without either is ``red, green, blue`` (as a PNG is).

    Raises:
        BuildError: naming the file that cannot be read or does not fit.
    """
    import rasterio
    from rasterio.enums import ColorInterp, MaskFlags

    files = band_paths(path, band_files) if band_files else [path]
    arrays, names, valid, nodata = [], [], None, None
    for number, file in enumerate(files):
        if band_files and not file.is_file():
            raise BuildError(f"{file}: band file not found (band {band_files[number]!r} of {path})")
        try:
            with _open(file) as ds:
                check_pixels(file, *ds.shape)
                valid = np.ones(ds.shape, bool) if valid is None else valid
                keep = [i for i in range(ds.count) if ds.colorinterp[i] != ColorInterp.alpha]
                if band_files and len(keep) != 1:
                    raise BuildError(f"{file}: a --band-files file must hold one band")
                if ds.shape != valid.shape:
                    raise BuildError(f"{file}: size {ds.shape} differs from {path}'s {valid.shape}")
                names += [band_files[number]] if band_files else [_band_name(ds, i) for i in keep]
                if number == 0 and ds.nodata is not None:
                    nodata = float(ds.nodata)
                arrays.append(np.moveaxis(ds.read([i + 1 for i in keep]), 0, -1))
                flags = ds.mask_flag_enums
                if any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags):
                    valid &= ds.dataset_mask() != 0
        except rasterio.errors.RasterioIOError as error:
            raise BuildError(f"{file}: cannot read the raster: {error}") from error
    image = np.ascontiguousarray(np.concatenate(arrays, -1) if len(arrays) > 1 else arrays[0])
    if names == ["band1", "band2", "band3"] and image.dtype == np.uint8:
        names = ["red", "green", "blue"]  # an undescribed 3-band 8-bit TIFF is RGB, as a PNG
    return image, valid, names, nodata


def _band_name(dataset, index: int) -> str:
    """A band's description, else its colour (red/green/blue), else ``band<1-based index>``."""
    colour = dataset.colorinterp[index].name
    return dataset.descriptions[index] or (
        colour if colour in ("red", "green", "blue") else f"band{index + 1}"
    )


def read_mask(path: Path, encoding: str) -> np.ndarray:
    """A mask's values (index TIFFs through rasterio: signed values allowed).

    Other masks go through :func:`engine.data.imageio.read_mask_values`.

    Raises:
        BuildError, ImageReadError: naming the mask.
    """
    path = Path(path)
    if encoding != "index" or path.suffix.lower() not in TIFF_SUFFIXES:
        return read_mask_values(path, encoding)
    import rasterio

    try:
        with _open(path) as ds:
            check_pixels(path, *ds.shape)
            if ds.count != 1 or np.dtype(ds.dtypes[0]).kind not in "iu":
                raise BuildError(
                    f"{path}: an index mask must be one band of integers, not {ds.count} "
                    f"band(s) of {ds.dtypes[0]}"
                )
            return ds.read(1).astype(np.int64)
    except rasterio.errors.RasterioIOError as error:
        raise BuildError(f"{path}: cannot read the mask: {error}") from error
