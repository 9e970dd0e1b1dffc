"""Opening rasters for windowed reading: PIL and rasterio backends, and index masks.

:func:`open_raster` picks the backend:

- **PIL** (PNG, JPEG, WebP, BMP): decodes the whole image once at open; ``read`` slices it,
  through :func:`engine.data.imageio.read_pil_pixels` (the shard builder's decoder: CMYK
  to RGB, EXIF orientation applied). PIL's decompression-bomb limit is replaced by
  terraseg's pixel limit (1.5 G pixels, ``TERRASEG_MAX_PIXELS``), checked from the header
  before decoding, since aerial mosaics are legitimately large.
- **tifffile** (TIFF without rasterio): :mod:`engine.data.tiff_reader`.
- **rasterio** (TIFF when the ``geo`` extra is installed; preferred): windowed reads, and
  the outputs are GeoTIFFs with the input's CRS and transform.

The reader interface and the band/type rules are in :mod:`engine.data.raster_base`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.imageio import ImageReadError, open_image, read_pil_pixels
from engine.data.raster_base import (
    PIL_SUFFIXES,
    TIFF_SUFFIXES,
    RasterError,
    RasterReader,
    gdal_env,
    rasterio_available,
)
from engine.data.tiff_reader import TiffReader


class PILReader(RasterReader):
    """PNG/JPEG/WebP/BMP: decoded once at open (see the module notes).

    Decoding goes through :func:`engine.data.imageio.read_pil_pixels`, the function the
    shard builder uses: CMYK is converted to RGB and EXIF orientation applied the same way,
    so prediction sees the pixels training saw. The header's pixel count is checked
    against :func:`engine.data.imageio.max_pixels` before decoding.
    """

    def __init__(self, path: Path, uint16_max: int | None = None) -> None:
        try:
            array, mode = read_pil_pixels(path)
        except ImageReadError as error:
            raise RasterError(str(error)) from error
        if array.ndim == 2 or array.shape[2] not in (3, 4):
            bands = 1 if array.ndim == 2 else array.shape[2]
            raise RasterError(
                f"{path}: {bands}-band image (PIL mode {mode}); terraseg needs 3-band RGB"
            )
        self._array = array
        super().__init__(
            path,
            array.shape[0],
            array.shape[1],
            array.shape[2],
            array.dtype,
            {"backend": "pil", "driver": mode},
            uint16_max,
        )
        if self._bands == 4:  # check the whole alpha now, it is in memory anyway
            self._to_rgb(array)

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self._array[row0:row1, col0:col1]


class RasterioReader(RasterReader):
    """Any GDAL raster through rasterio's windowed reads; keeps CRS and transform."""

    def __init__(self, path: Path, uint16_max: int | None = None) -> None:
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except RasterioIOError as error:
            raise RasterError(f"{path}: cannot read raster: {error}") from error
        src = self._src
        try:
            dtypes = set(src.dtypes)
            if len(dtypes) != 1:
                raise RasterError(f"{path}: bands of different types {sorted(dtypes)}")
            alpha = None
            if src.count == 4:
                interp = list(src.colorinterp)
                alphas = [i for i, c in enumerate(interp) if c == ColorInterp.alpha]
                alpha = alphas[0] if len(alphas) == 1 else 3
            profile = {
                "backend": "rasterio",
                "driver": src.driver,
                "crs": src.crs,
                "transform": src.transform,
                "nodata": src.nodata,
                "compression": (src.compression.name.lower() if src.compression else "none"),
            }
            super().__init__(
                path, src.height, src.width, src.count, src.dtypes[0], profile, uint16_max, alpha
            )
        except Exception:
            src.close()
            raise

    @property
    def georef(self) -> dict[str, Any] | None:
        """``{"crs", "transform"}`` when the source has a CRS or a non-identity transform."""
        from affine import Affine

        src = self._src
        if src.crs is None and src.transform == Affine.identity():
            return None
        return {"crs": src.crs, "transform": src.transform}

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            with gdal_env():
                data = self._src.read(window=window)
        except Exception as error:
            raise RasterError(f"{self.path}: cannot read rows {row0}:{row1}: {error}") from error
        return np.moveaxis(data, 0, -1)

    def close(self) -> None:
        """Close the dataset (idempotent)."""
        self._src.close()


def open_raster(
    path: str | Path, *, backend: str = "auto", uint16_max: int | None = None
) -> RasterReader:
    """Open an image for windowed reading.

    Args:
        path: The image: PNG/JPEG/WebP/BMP (PIL) or TIFF (rasterio when installed, else
            tifffile).
        backend: ``"auto"``, ``"pil"``, ``"tifffile"`` or ``"rasterio"``.
        uint16_max: For uint16 input, the value that maps to 255 (default 65535).

    Returns:
        A :class:`RasterReader` (use it as a context manager to close the file).

    Raises:
        FileNotFoundError: naming the file when it does not exist.
        RasterError: naming the file when it cannot be decoded or is not RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input image not found")
    suffix = path.suffix.lower()
    if backend == "auto":
        if suffix in TIFF_SUFFIXES:
            backend = "rasterio" if rasterio_available() else "tifffile"
        elif suffix in PIL_SUFFIXES:
            backend = "pil"
        else:
            backend = "rasterio" if rasterio_available() else "pil"
    if backend == "pil":
        return PILReader(path, uint16_max)
    if backend == "tifffile":
        return TiffReader(path, uint16_max)
    if backend == "rasterio":
        if not rasterio_available():
            raise RasterError(f"{path}: backend 'rasterio' requested but rasterio is not installed")
        return RasterioReader(path, uint16_max)
    raise ValueError(f"unknown backend {backend!r}; choose auto, pil, tifffile or rasterio")


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a single-band class-index mask (PNG, palette PNG, TIFF) as uint8 ``HxW``.

    Raises:
        RasterError: naming the file when it is not a single-band 8-bit mask.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = tifffile.imread(path)
        else:
            with open_image(path) as image:  # the header's size checked before decoding
                if image.mode not in ("L", "P", "I", "I;16"):
                    raise RasterError(
                        f"{path}: mode {image.mode} is not a single-band class-index mask"
                    )
                array = np.array(image)
    except RasterError:
        raise
    except ImageReadError as error:
        raise RasterError(str(error)) from error
    except Exception as error:
        raise RasterError(f"{path}: cannot read mask: {error}") from error
    if array.ndim != 2:
        raise RasterError(f"{path}: expected a single-band mask, got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise RasterError(f"{path}: mask values outside 0..255")
        array = array.astype(np.uint8)
    return array
