"""The one table of raster formats: the suffixes terraseg reads, and what reads each.

Every glob, folder walk, backend choice and error message takes its suffixes from here,
so a format added to :data:`RASTER_FORMATS` is found, read and named everywhere at once.
``rasterio`` reads any GDAL raster (GeoTIFF, COG, JPEG 2000, VRT, ERDAS Imagine …) with
its CRS, nodata and windowed reads; ``pil`` decodes the picture formats whole, with their
EXIF orientation.
"""

from __future__ import annotations

from pathlib import Path

#: suffix (lower case) → the library that reads it.
RASTER_FORMATS: dict[str, str] = {
    ".tif": "rasterio",
    ".tiff": "rasterio",
    ".jp2": "rasterio",
    ".vrt": "rasterio",
    ".img": "rasterio",
    ".png": "pil",
    ".jpg": "pil",
    ".jpeg": "pil",
    ".webp": "pil",
    ".bmp": "pil",
}
RASTER_SUFFIXES = frozenset(RASTER_FORMATS)
GDAL_SUFFIXES = frozenset(s for s, reader in RASTER_FORMATS.items() if reader == "rasterio")
PIL_SUFFIXES = frozenset(s for s, reader in RASTER_FORMATS.items() if reader == "pil")
#: The GeoTIFF family, which terraseg also writes (``--format tif|cog``).
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})


def reader_of(path: str | Path) -> str | None:
    """``"rasterio"``, ``"pil"``, or None when ``path``'s suffix is not a raster format."""
    return RASTER_FORMATS.get(Path(path).suffix.lower())


def is_raster(path: str | Path) -> bool:
    """Whether ``path`` has the suffix of a raster format terraseg reads."""
    return reader_of(path) is not None


def read_by_gdal(path: str | Path) -> bool:
    """Whether ``path`` is read through rasterio (GDAL), with its georeferencing."""
    return reader_of(path) == "rasterio"


def suffix_list() -> str:
    """The readable suffixes for messages: ``.bmp, .img, .jp2, …``."""
    return ", ".join(sorted(RASTER_SUFFIXES))
