"""The window-reader interface for rasters of any size, and what its backends share.

A reader exposes ``.shape == (H, W, 3)`` and
``.read(row0, row1, col0, col1) -> uint8 (row1 - row0, col1 - col0, 3)`` plus ``.profile``
(a dict describing the source) and ``.georef`` (``None`` or what the writers need to keep
the georeferencing). The backends live in :mod:`engine.data.rasters` (PIL, rasterio and
:func:`~engine.data.rasters.open_raster`) and :mod:`engine.data.tiff_reader` (tifffile).

Band and type rules (errors name the file): 3 bands are RGB; 4 bands are RGB + alpha and
the alpha must be constant (checked on every window read; a varying alpha means masked
pixels, which is not supported); other band counts are rejected. uint8 is used as is;
uint16 is scaled with ``value * 255 / uint16_max`` (default ``uint16_max = 65535``; pass
4095 for 12-bit sensors, 10000 for reflectance products), rounded and clipped — the same
rule as :func:`engine.data.imageio.read_image`. Other pixel types are rejected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
#: Tags copied from a GeoTIFF input to its outputs by the tifffile backend.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
#: GDAL block-cache cap (bytes) while rasterio reads or writes: GDAL's default (5 % of RAM)
#: would otherwise keep up to that much of a streamed raster resident.
GDAL_CACHE_BYTES = 32 * 2**20


class RasterError(UserError):
    """A raster cannot be used; the message names the file and the problem."""


def rasterio_available() -> bool:
    """Whether the optional rasterio backend (``pip install terraseg[geo]``) is importable."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


class RasterReader:
    """Base class of the window readers; subclasses implement :meth:`_read_raw`.

    Attributes:
        path: The source file (``None`` for in-memory arrays).
        profile: Description of the source: ``backend``, ``driver``, ``height``,
            ``width``, ``count``, ``dtype``, ``crs``, ``transform`` (``None`` when unknown).
    """

    def __init__(
        self,
        path: Path | None,
        height: int,
        width: int,
        bands: int,
        dtype: Any,
        profile: dict[str, Any],
        uint16_max: int | None = None,
        alpha_band: int | None = None,
    ) -> None:
        self.path = path
        self._height, self._width = int(height), int(width)
        self._bands = int(bands)
        self._dtype = np.dtype(dtype)
        self._uint16_max = uint16_max or 65535
        self._alpha_band = alpha_band
        self._alpha_value: int | None = None
        self.profile = {
            "path": str(path) if path else None,
            "height": self._height,
            "width": self._width,
            "count": self._bands,
            "dtype": str(self._dtype),
            "crs": None,
            "transform": None,
            **profile,
        }
        name = self.path or "<array>"
        if self._bands == 4:
            if self._alpha_band is None:
                self._alpha_band = 3
        elif self._bands != 3:
            raise RasterError(
                f"{name}: {self._bands}-band raster; terraseg needs 3-band RGB "
                "(or 4-band RGB with a constant alpha)"
            )
        if self._dtype not in (np.uint8, np.uint16):
            raise RasterError(
                f"{name}: pixel type {self._dtype} is not supported (uint8 or uint16)"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the RGB image delivered by :meth:`read`."""
        return self._height, self._width, 3

    @property
    def georef(self) -> dict[str, Any] | None:
        """What writers need to keep the georeferencing, or ``None`` for plain images."""
        return None

    @property
    def is_tiff(self) -> bool:
        """Whether the source is a TIFF (its predictions default to TIFF outputs)."""
        return self.path is not None and self.path.suffix.lower() in TIFF_SUFFIXES

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read the window ``[row0, row1) x [col0, col1)`` as uint8 RGB.

        Returns:
            uint8 ``(row1 - row0, col1 - col0, 3)``, C-contiguous.

        Raises:
            ValueError: when the window is outside the raster.
            RasterError: naming the file, when decoding fails or the alpha is not constant.
        """
        if not (0 <= row0 <= row1 <= self._height and 0 <= col0 <= col1 <= self._width):
            raise ValueError(
                f"window rows {row0}:{row1} cols {col0}:{col1} outside "
                f"{self._height}x{self._width} raster {self.path or '<array>'}"
            )
        if row0 == row1 or col0 == col1:
            return np.zeros((row1 - row0, col1 - col0, 3), np.uint8)
        raw = self._read_raw(row0, row1, col0, col1)
        return self._to_rgb(raw)

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        raise NotImplementedError

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        if self._bands == 4:
            alpha_band = self._alpha_band if self._alpha_band is not None else 3
            alpha = raw[..., alpha_band]
            low, high = int(alpha.min()), int(alpha.max())
            if self._alpha_value is None:
                self._alpha_value = low
            if low != high or low != self._alpha_value:
                raise RasterError(
                    f"{self.path or '<array>'}: 4-band raster whose band {alpha_band + 1} is "
                    "not a constant alpha (values "
                    f"{min(low, self._alpha_value)}..{max(high, self._alpha_value)}); "
                    "masked/no-data alpha or a 4th spectral band (e.g. NIR) is not supported, "
                    "give 3-band RGB"
                )
            keep = [b for b in range(4) if b != alpha_band]
            raw = raw[..., keep]
        if raw.dtype == np.uint16:
            scaled = raw.astype(np.float32) * np.float32(255.0 / self._uint16_max)
            raw = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        elif raw.dtype != np.uint8:
            raise RasterError(f"{self.path or '<array>'}: pixel type {raw.dtype} not supported")
        return np.ascontiguousarray(raw)

    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self.profile.get("backend")
        return f"{type(self).__name__}({self.path or '<array>'}, shape={self.shape}, {backend})"


class ArrayReader(RasterReader):
    """A reader over an in-memory ``HxWx3`` (or constant-alpha ``HxWx4``) uint8/uint16 array."""

    def __init__(
        self, array: np.ndarray, path: str | Path | None = None, uint16_max: int | None = None
    ) -> None:
        array = np.asarray(array)
        if array.ndim != 3:
            raise RasterError(
                f"{path or '<array>'}: expected an HxWxC image, got shape {array.shape}"
            )
        self._array = array
        super().__init__(
            Path(path) if path else None,
            array.shape[0],
            array.shape[1],
            array.shape[2],
            array.dtype,
            {"backend": "array", "driver": None},
            uint16_max,
        )

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self._array[row0:row1, col0:col1]


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` (positional, no seek; large reads chunked)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), offset)
        if not chunk:
            raise OSError(f"unexpected end of file at byte {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def gdal_env():
    """A rasterio environment capping GDAL's block cache (see :data:`GDAL_CACHE_BYTES`)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
