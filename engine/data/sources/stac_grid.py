"""Selected STAC assets on one grid: headers, the grid, and a GDAL VRT per item.

Each selected asset's header is read through GDAL (a few ranged requests for a remote COG,
never the file): its CRS, transform, size, pixel type, band count and nodata. An asset
whose file has no CRS takes the item's or asset's ``proj:*`` fields (``proj:code`` /
``proj:epsg`` / ``proj:wkt2`` with ``proj:transform``); with neither, the item has no
projection information and is refused. The grid is the CRS every selected asset shares
(assets in different CRSs are refused, naming them: nothing is reprojected), the
resolution asked for (``--resolution``, in CRS units) or else the finest of the assets, and
the extent of the first finest asset. North-up grids only.

The grid and its sources are written as a GDAL VRT (:func:`vrt_xml`): each band a
``ComplexSource`` placing its asset's pixels on the grid, ``bilinear`` for images and
``nearest`` for labels; band descriptions are the selection's names. GDAL then reads only
the source blocks a window needs, through ``/vsicurl/`` (``http(s)://``) and ``/vsis3/``
(``s3://``) for remote assets: windowed reads of COGs, never whole-file downloads.

Remote reads get the settings of the shard store (:func:`remote_read_config`):
``TERRASEG_SHARD_RETRIES`` → ``GDAL_HTTP_MAX_RETRY`` (default 5),
``TERRASEG_SHARD_BACKOFF`` → ``GDAL_HTTP_RETRY_DELAY`` (default 1 s),
``TERRASEG_SHARD_DEADLINE`` → ``GDAL_HTTP_TIMEOUT`` (default 120 s a request),
``TERRASEG_SHARD_TIMEOUT`` → ``GDAL_HTTP_CONNECTTIMEOUT`` (default 30 s), and for S3 the
endpoint of ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` → ``AWS_S3_ENDPOINT``,
``AWS_HTTPS``, ``AWS_VIRTUAL_HOSTING=FALSE`` (credentials as GDAL reads them from the
environment). A GDAL option already set in the environment wins.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from engine.data.sources.raster_base import GDAL_CACHE_BYTES
from engine.data.sources.stac import StacError, is_remote, shard_setting
from engine.data.sources.stac_assets import AssetBand

GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


def gdal_path(href: str) -> str:
    """The path GDAL opens for ``href``: ``/vsicurl/`` for HTTP(S), ``/vsis3/`` for S3."""
    parts = urlsplit(href)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme == "s3":
        return f"/vsis3/{parts.netloc}{parts.path}"
    return href


def remote_read_config() -> dict[str, str]:
    """The GDAL options of remote asset reads, from the shard store's settings (module notes)."""
    config = {
        "GDAL_HTTP_MAX_RETRY": str(int(shard_setting("TERRASEG_SHARD_RETRIES", 5))),
        "GDAL_HTTP_RETRY_DELAY": f"{shard_setting('TERRASEG_SHARD_BACKOFF', 1.0):g}",
        "GDAL_HTTP_TIMEOUT": str(
            max(1, math.ceil(shard_setting("TERRASEG_SHARD_DEADLINE", 120.0)))
        ),
        "GDAL_HTTP_CONNECTTIMEOUT": str(
            max(1, math.ceil(shard_setting("TERRASEG_SHARD_TIMEOUT", 30)))
        ),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per asset
    }
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint)
        config["AWS_S3_ENDPOINT"] = parts.netloc or parts.path
        config["AWS_HTTPS"] = "NO" if parts.scheme.lower() == "http" else "YES"
        config["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return config


@contextlib.contextmanager
def remote_reads() -> Iterator[dict[str, str]]:
    """Put :func:`remote_read_config` in the environment for the block.

    Worker processes started inside inherit it; options the environment already sets are
    kept. Yields the options it added (removed again at the end).
    """
    added = {k: v for k, v in remote_read_config().items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield added
    finally:
        for key in added:
            os.environ.pop(key, None)


@dataclass(frozen=True)
class AssetHeader:
    """What the grid needs of one asset's file."""

    path: str  # as GDAL opens it
    crs: Any
    transform: Any
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    block: tuple[int, int]  # (rows, cols)


def _proj_fields(item: Any, key: str) -> dict:
    fields = {k: v for k, v in item.properties.items() if k.startswith("proj:")}
    fields.update({k: v for k, v in item.assets[key].extra_fields.items() if k.startswith("proj:")})
    return fields


def _proj_grid(item: Any, key: str, height: int, width: int) -> tuple[Any, Any] | None:
    """``(crs, transform)`` of the ``proj:*`` fields of the asset (or item), else ``None``."""
    from affine import Affine
    from rasterio.crs import CRS

    fields = _proj_fields(item, key)
    code, epsg, wkt = fields.get("proj:code"), fields.get("proj:epsg"), fields.get("proj:wkt2")
    numbers = fields.get("proj:transform")
    if not (code or epsg or wkt) or not isinstance(numbers, list) or len(numbers) not in (6, 9):
        return None
    shape = fields.get("proj:shape")
    if isinstance(shape, list) and [int(v) for v in shape[-2:]] != [height, width]:
        raise StacError(
            f"item {item.id!r}: asset {key!r} proj:shape {shape} differs from its file "
            f"({height}x{width})"
        )
    try:
        crs = CRS.from_user_input(code or (f"EPSG:{int(epsg)}" if epsg else wkt))
        transform = Affine(*[float(v) for v in numbers[:6]])
    except Exception as error:
        raise StacError(f"item {item.id!r}: asset {key!r} bad proj:* fields ({error})") from error
    return crs, transform


def read_header(item: Any, band: AssetBand) -> AssetHeader:
    """The header of one selected asset's file (module notes).

    Raises:
        StacError: naming the item and asset when the file cannot be opened, or has no
            projection information (no CRS, no ``proj:*``), or a rotated grid.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    path = gdal_path(band.href)
    try:
        with warnings.catch_warnings(), rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                crs, transform = src.crs, src.transform
                height, width, count = src.height, src.width, src.count
                dtypes, nodata, block = set(src.dtypes), src.nodata, src.block_shapes[0]
    except Exception as error:
        where = "remote " if is_remote(band.href) else ""
        raise StacError(
            f"item {item.id!r}: asset {band.key!r} ({band.href}): cannot read the {where}"
            f"raster ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from error
    if crs is None or transform.is_identity:
        found = _proj_grid(item, band.key, height, width)
        if found is None:
            raise StacError(
                f"item {item.id!r}: no projection information (no proj:* fields, and asset "
                f"{band.key!r} has no CRS and transform)"
            )
        crs, transform = found
    if transform.b or transform.d or transform.a <= 0 or transform.e >= 0:
        raise StacError(f"item {item.id!r}: asset {band.key!r} is not a north-up grid")
    if len(dtypes) != 1:
        raise StacError(f"item {item.id!r}: asset {band.key!r} mixes pixel types {dtypes}")
    return AssetHeader(path, crs, transform, width, height, count, dtypes.pop(), nodata, block)


@dataclass(frozen=True)
class ItemGrid:
    """The one grid the selected assets of an item are read onto."""

    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def resolution(self) -> float:
        """The pixel size in CRS units."""
        return float(self.transform.a)


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def item_grid(
    item: Any, headers: dict[str, AssetHeader], resolution: float | None = None
) -> ItemGrid:
    """The grid of the item's selected assets (module notes).

    Raises:
        StacError: naming the item and the assets when their CRSs differ.
    """
    from affine import Affine

    first_key, first = next(iter(headers.items()))
    others = {k: h for k, h in headers.items() if h.crs != first.crs}
    if others:
        key, other = next(iter(others.items()))
        raise StacError(
            f"item {item.id!r}: assets in different CRSs cannot be put on one grid "
            f"({first_key}: {_crs_name(first.crs)}, {key}: {_crs_name(other.crs)}); "
            "select assets of one CRS"
        )
    finest = min(headers.values(), key=lambda h: min(h.transform.a, -h.transform.e))
    size = resolution or min(finest.transform.a, -finest.transform.e)
    if not size > 0:
        raise StacError(f"--resolution {resolution}: must be positive")
    left, top = finest.transform.c, finest.transform.f
    right = left + finest.width * finest.transform.a
    bottom = top + finest.height * finest.transform.e
    width = max(1, round((right - left) / size))
    height = max(1, round((top - bottom) / size))
    return ItemGrid(first.crs, Affine(size, 0.0, left, 0.0, -size, top), width, height)


def covers(header: AssetHeader, grid: ItemGrid) -> bool:
    """Whether the asset's pixels cover the whole grid (to half a grid pixel)."""
    t, g = header.transform, grid.transform
    slack = grid.resolution / 2
    return (
        t.c <= g.c + slack
        and t.f >= g.f - slack
        and t.c + header.width * t.a >= g.c + grid.width * g.a - slack
        and t.f + header.height * t.e <= g.f + grid.height * g.e + slack
    )


def _source(band: ET.Element, header: AssetHeader, number: int, grid: ItemGrid, how: str) -> None:
    """Add one ``ComplexSource`` placing band ``number`` of ``header`` on ``grid``."""
    source = ET.SubElement(band, "ComplexSource", resampling=how)
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = header.path
    ET.SubElement(source, "SourceBand").text = str(number)
    ET.SubElement(
        source, "SourceProperties", RasterXSize=str(header.width),
        RasterYSize=str(header.height), DataType=GDAL_TYPES.get(header.dtype, "Float32"),
        BlockXSize=str(header.block[1]), BlockYSize=str(header.block[0]),
    )  # fmt: skip
    ET.SubElement(
        source, "SrcRect", xOff="0", yOff="0", xSize=str(header.width), ySize=str(header.height)
    )
    size, t = grid.resolution, header.transform
    ET.SubElement(
        source, "DstRect",
        xOff=repr((t.c - grid.transform.c) / size), yOff=repr((grid.transform.f - t.f) / size),
        xSize=repr(header.width * t.a / size), ySize=repr(header.height * -t.e / size),
    )  # fmt: skip
    if header.nodata is not None:
        ET.SubElement(source, "NODATA").text = repr(float(header.nodata))


def vrt_xml(
    grid: ItemGrid,
    bands: list[tuple[str, AssetHeader, int]],
    resampling: str,
    nodata: float | None,
) -> str:
    """A GDAL VRT of ``bands`` (``(name, header, band number)``) on ``grid``.

    Args:
        grid: The target grid.
        bands: Each output band: its name (the band description), its asset's header and
            its 1-based number in the asset.
        resampling: ``bilinear`` (images) or ``nearest`` (labels).
        nodata: The nodata value of every output band (``None``: none).
    """
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(float(v)) for v in grid.transform.to_gdal()
    )
    for index, (name, header, number) in enumerate(bands, 1):
        dtype = GDAL_TYPES.get(header.dtype, "Float32")
        band = ET.SubElement(root, "VRTRasterBand", dataType=dtype, band=str(index))
        ET.SubElement(band, "Description").text = name
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(nodata))
        _source(band, header, number, grid, resampling)
    return ET.tostring(root, encoding="unicode")
