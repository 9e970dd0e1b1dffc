"""Vectorising a predicted mask: one polygon per connected region (``predict.py --polygons``).

:func:`write_polygons` runs GDAL's polygonize (``rasterio.features.shapes``) on the
*written* mask file, band 1, so the polygons are exactly what the raster says. Each
connected region of one class (4-connectivity: pixels touching only at a corner are separate
regions) becomes one feature with the attributes ``class`` (the class name) and
``class_index``; pixels equal to the mask's nodata value (255, the input's nodata and
ignored pixels) make no polygon. A mask written with ``--values original`` is mapped back to
class indices through the same table (one-band masks only).

Units: ``min_area`` is in **pixels** (regions of fewer pixels are dropped) and ``simplify``
in **pixel widths** (Douglas-Peucker tolerance, ``preserve_topology=True`` per polygon; the
boundary shared by two neighbours is simplified twice, so they may no longer meet exactly),
so both mean the same whatever the CRS (degrees in EPSG:4326).

CRS: a GeoPackage is written in the raster's CRS; a GeoJSON file is reprojected to
EPSG:4326 (longitude, latitude) as RFC 7946 requires, written with GDAL's ``RFC7946=YES``
(7 decimals, about 1 cm). A raster without a CRS (e.g. a PNG input's mask) gives a
GeoPackage in its pixel coordinates (x right, y down) without a CRS; GeoJSON is refused
for it, since GeoJSON coordinates are always longitude/latitude.

Writing uses pyogrio (``pyogrio.raw.write`` with shapely WKB) to ``<stem>.partial<suffix>``,
renamed when complete. Memory: GDAL holds every polygon of the raster at once (the raster
itself is read by GDAL line by line), so it grows with the number and detail of the
regions, not with the raster size.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError

#: Output suffix → OGR driver.
POLYGON_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON"}
GEOJSON_CRS = "EPSG:4326"


class PolygonError(UserError):
    """Polygons cannot be written; the message names the file and the problem."""


def polygon_driver(path: str | Path) -> str:
    """The OGR driver for an output path, from its suffix.

    Raises:
        PolygonError: for a suffix other than ``.gpkg``, ``.geojson`` or ``.json``.
    """
    path = Path(path)
    driver = POLYGON_DRIVERS.get(path.suffix.lower())
    if driver is None:
        kinds = ", ".join(sorted(POLYGON_DRIVERS))
        raise PolygonError(f"{path}: polygons are written as {kinds}, not {path.suffix!r}")
    return driver


def _class_lookup(count: int, values: np.ndarray | None, where: Path) -> dict[float, int]:
    if values is None:
        return {float(index): index for index in range(count)}
    values = np.asarray(values)
    if values.ndim != 1:
        raise PolygonError(f"{where}: RGB-valued masks cannot be vectorised; use --values index")
    return {float(values[index]): index for index in range(count)}


def _reproject(geometries: np.ndarray, src_crs: Any, dst_crs: str) -> np.ndarray:
    import shapely
    from rasterio.warp import transform

    def move(coords: np.ndarray) -> np.ndarray:
        xs, ys = transform(src_crs, dst_crs, coords[:, 0], coords[:, 1])
        return np.column_stack([xs, ys])

    return shapely.transform(geometries, move)


@dataclass(frozen=True)
class _Regions:
    """The connected regions of a mask, as read (pixel or map coordinates of the mask)."""

    geometries: np.ndarray  # shapely polygons
    indices: list[int]  # their class indices
    crs: Any
    to_map: Any  # pixel -> map affine of a mask without its own georeferencing, else None
    pixel_width: float


def _read_regions(
    mask_path: Path, out_path: Path, driver: str, lookup: dict[float, int], min_area: float,
    georef: dict[str, Any] | None,
) -> _Regions:  # fmt: skip
    """Polygonize band 1 of the mask: every region of a known class and at least ``min_area``."""
    import rasterio
    import shapely
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import shapes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasterio.open(mask_path)
    with src:
        if src.count != 1:
            raise PolygonError(f"{mask_path}: {src.count}-band mask; polygons need one band")
        transform, crs, nodata = src.transform, src.crs, src.nodata
        to_map = None
        if crs is None and transform.is_identity and georef and georef.get("transform"):
            to_map, crs = georef["transform"], georef.get("crs")  # pixels -> map, below
        if driver == "GeoJSON" and crs is None:
            raise PolygonError(
                f"{mask_path}: no CRS, but GeoJSON coordinates are longitude/latitude "
                f"(RFC 7946); write {out_path.with_suffix('.gpkg').name} instead"
            )
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        geometries, indices = [], []
        for shape, value in shapes(rasterio.band(src, 1), connectivity=4):
            index = lookup.get(float(value))
            if index is None or (nodata is not None and float(value) == nodata):
                continue
            geometry = shapely.geometry.shape(shape)
            if geometry.area < min_area * pixel_area:
                continue
            geometries.append(geometry)
            indices.append(index)
    array = np.array(geometries, dtype=object)
    return _Regions(array, indices, crs, to_map, math.sqrt(pixel_area))


def write_polygons(
    mask_path: str | Path,
    out_path: str | Path,
    class_names: Sequence[str],
    *,
    values: np.ndarray | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    georef: dict[str, Any] | None = None,
) -> int:
    """Vectorise a written mask into one polygon feature per connected region.

    Args:
        mask_path: The mask raster (``predict.py``'s ``<stem>_mask``), class indices or,
            with ``values``, the dataset's own values.
        out_path: ``.gpkg`` (the raster's CRS) or ``.geojson`` (EPSG:4326).
        class_names: Class names in class-index order.
        values: The ``--values original`` table the mask was written with (``[256]``).
        min_area: Drop regions of fewer pixels than this.
        simplify: Simplification tolerance in pixel widths (0: none).
        georef: ``{"crs", "transform"}`` of the input, used when the mask file has no
            georeferencing of its own (a PNG mask of a GeoTIFF input).

    Returns:
        The number of features written.

    Raises:
        PolygonError: naming the file, for an unknown suffix, a mask of several bands or
            bad options.
    """
    import rasterio
    import shapely

    mask_path, out_path = Path(mask_path), Path(out_path)
    driver = polygon_driver(out_path)
    if min_area < 0 or simplify < 0 or not math.isfinite(min_area + simplify):
        raise PolygonError(f"{out_path}: min_area and simplify must be >= 0")
    lookup = _class_lookup(len(class_names), values, mask_path)
    regions = _read_regions(mask_path, out_path, driver, lookup, min_area, georef)
    array, crs = regions.geometries, regions.crs
    if simplify and len(array):
        array = shapely.simplify(array, simplify * regions.pixel_width, preserve_topology=True)
    if regions.to_map is not None and len(array):
        a, b, c, d, e, f = regions.to_map[:6]
        matrix = np.array([[a, d], [b, e]])
        array = shapely.transform(array, lambda xy: xy @ matrix + np.array([c, f]))
    options: dict[str, Any] = {}
    if driver == "GeoJSON":
        array = _reproject(array, crs, GEOJSON_CRS) if len(array) else array
        crs = rasterio.crs.CRS.from_string(GEOJSON_CRS)
        options["layer_options"] = {"RFC7946": "YES"}
    _write(out_path, driver, array, regions.indices, class_names, crs, options)
    return len(array)


def _write(
    out_path: Path,
    driver: str,
    geometries: np.ndarray,
    indices: list[int],
    class_names: Sequence[str],
    crs: Any,
    options: dict[str, Any],
) -> None:
    """Write the features to a temporary name beside ``out_path``, then rename it."""
    import pyogrio.raw
    import shapely

    partial = out_path.with_name(f"{out_path.stem}.partial{out_path.suffix}")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # a leftover of an interrupted run (terraseg's own name)
    names = np.array([str(class_names[i]) for i in indices], dtype=object)
    try:
        pyogrio.raw.write(
            partial,
            geometry=shapely.to_wkb(geometries) if len(geometries) else np.array([], object),
            field_data=[names, np.array(indices, np.int32)],
            fields=["class", "class_index"],
            driver=driver,
            layer=out_path.stem,
            geometry_type="Polygon",
            crs=crs.to_wkt() if crs is not None else None,
            **options,
        )
        os.replace(partial, out_path)
    except (OSError, RuntimeError) as error:  # pyogrio's errors are RuntimeErrors
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise PolygonError(f"{out_path}: cannot write polygons: {error}") from error
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
