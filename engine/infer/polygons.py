"""Vectorising a predicted mask: one polygon per connected region (``predict.py --polygons``).

:func:`write_polygons` reads band 1 of the *written* mask file, maps its values to class
indices (a mask written with ``--values original`` through the same table; one-band masks
only), removes small regions, and runs GDAL's polygonize (``rasterio.features.shapes``).
Each connected region of one class (4-connectivity: pixels touching only at a corner are
separate regions) becomes one feature with the attributes ``class`` (the class name) and
``class_index``. Pixels equal to the mask's nodata value (255: the input's nodata; the
model never predicts an ignored class) and values of no class make no polygon, and are
never merged into one.

Small regions (``min_area``, in **pixels**; default :data:`DEFAULT_MIN_AREA` = 4): first
GDAL's sieve (``rasterio.features.sieve``, 4-connectivity) gives every region of fewer
pixels the class of its largest neighbour region that is at least that large, so a
one-pixel speck or a fringe of a sliding-window prediction joins the region around it
instead of becoming a shape; regions still smaller (a patch of pure noise, with no large
neighbour) are then dropped. 4 pixels is the smallest square (2x2) with an inside; one- to
three-pixel regions are almost always noise at class borders (at 10 m Sentinel-2 pixels,
4 pixels are 400 m², a small building block; at 0.5 m aerial, 1 m²). ``min_area`` 0 or 1
keeps every region exactly as the raster has it.

Classes (``classes``): ``"foreground"`` (default) writes every class but the background;
``"all"`` every class; or a comma list of class names. The background is the class named
``background`` (any case) if the model has one, else the first class (index 0: ``land`` in
the Dubai and Sen1Floods11 class lists). Unwritten classes still take part in the sieve and
the simplification, so the written polygons keep their edges with them.

Simplification (``simplify``, in **pixel widths**, 0: none): with shapely >= 2.1 (GEOS >=
3.12) the regions are simplified as one coverage (``shapely.coverage_simplify``,
Visvalingam-Whyatt; the tolerance is about the square root of the area of the triangles
removed): each boundary two regions share is simplified once, so neighbours still meet
exactly, with no gap and no overlap; the outline of the vectorised area (the raster's edge,
nodata, dropped noise) is kept as the raster has it. An older shapely (the requirement is
>= 2.0, which has no coverage simplification) falls back to Douglas-Peucker per polygon
(``preserve_topology=True``), which simplifies a shared boundary twice, so neighbours may
no longer meet exactly. Both units mean the same whatever
the CRS (degrees in EPSG:4326).

CRS: a GeoPackage is written in the raster's CRS; a GeoJSON file is reprojected to
EPSG:4326 (longitude, latitude) as RFC 7946 requires, written with GDAL's ``RFC7946=YES``
(7 decimals, about 1 cm). A raster without a CRS (e.g. a PNG input's mask) gives a
GeoPackage in its pixel coordinates (x right, y down) without a CRS; GeoJSON is refused
for it, since GeoJSON coordinates are always longitude/latitude.

Writing uses pyogrio (``pyogrio.raw.write`` with shapely WKB) to ``<stem>.partial<suffix>``,
renamed when complete. Memory: the mask is read whole (its values plus one byte per pixel of
class index and one of validity, for the sieve), and GDAL holds every polygon at once, so
it grows with the raster size and with the number and detail of the regions.
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
DEFAULT_MIN_AREA = 4.0  # pixels: the smallest square with an inside (see the module notes)
POLYGON_CLASSES = ("foreground", "all")  # or a comma list of class names
NO_CLASS = 255  # class index of pixels that make no polygon (nodata, no class)


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


def background_index(class_names: Sequence[str]) -> int:
    """The background class: the one named ``background`` (any case), else the first."""
    lowered = [str(name).lower() for name in class_names]
    return lowered.index("background") if "background" in lowered else 0


def polygon_class_indices(selection: str, class_names: Sequence[str]) -> list[int]:
    """The class indices ``selection`` writes: ``foreground``, ``all`` or a comma list of names.

    Raises:
        PolygonError: for a name the model has not (the classes listed) or an empty list.
    """
    if selection == "all":
        return list(range(len(class_names)))
    if selection == "foreground":
        background = background_index(class_names)
        return [index for index in range(len(class_names)) if index != background]
    names = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [name for name in names if name not in class_names]
    if unknown or not names:
        raise PolygonError(
            f"--polygon-classes {selection!r}: give foreground, all or class names of the "
            f"model ({', '.join(map(str, class_names))})"
        )
    return sorted({list(class_names).index(name) for name in names})


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
    indices: np.ndarray  # their class indices
    crs: Any
    to_map: Any  # pixel -> map affine of a mask without its own georeferencing, else None
    pixel_width: float


def _class_indices(band: np.ndarray, lookup: dict[float, int], nodata: float | None) -> np.ndarray:
    """The mask's values as class indices (uint8), :data:`NO_CLASS` for nodata and no class."""
    indices = np.full(band.shape, NO_CLASS, np.uint8)
    for value, index in lookup.items():
        if nodata is None or value != nodata:
            indices[band == value] = index
    return indices


def _sieved_regions(indices: np.ndarray, transform: Any, min_area: float) -> tuple[list, list]:
    """Sieve ``indices`` in place, polygonise it: (shapely polygons, class indices), big enough."""
    import shapely
    from rasterio.features import shapes, sieve

    valid = indices != NO_CLASS
    size = math.ceil(min_area)
    if size > 1:
        sieve(indices, size, out=indices, mask=valid, connectivity=4)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    geometries, classes = [], []
    for shape, value in shapes(indices, mask=valid, connectivity=4, transform=transform):
        geometry = shapely.geometry.shape(shape)
        if geometry.area >= min_area * pixel_area * (1 - 1e-9):
            geometries.append(geometry)
            classes.append(int(value))
    return geometries, classes


def _read_regions(
    mask_path: Path, out_path: Path, driver: str, lookup: dict[float, int], min_area: float,
    georef: dict[str, Any] | None,
) -> _Regions:  # fmt: skip
    """The mask's regions of a known class, sieved and at least ``min_area`` pixels."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

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
        indices = _class_indices(src.read(1), lookup, nodata)
    geometries, classes = _sieved_regions(indices, transform, min_area)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    array = np.array(geometries, dtype=object)
    return _Regions(array, np.array(classes, np.int64), crs, to_map, math.sqrt(pixel_area))


def simplify_regions(geometries: np.ndarray, tolerance: float) -> np.ndarray:
    """Simplify polygons that tile an area, keeping their shared edges (see the module notes).

    Args:
        geometries: Polygons that meet only along their edges (a coverage).
        tolerance: In the geometries' units.
    """
    import shapely

    coverage_simplify = getattr(shapely, "coverage_simplify", None)
    if coverage_simplify is None:  # shapely < 2.1: per polygon, shared edges twice
        return shapely.simplify(geometries, tolerance, preserve_topology=True)
    # The outer boundary (the raster's edge, nodata, dropped noise) stays as the raster has it
    return coverage_simplify(geometries, tolerance, simplify_boundary=False)


def write_polygons(
    mask_path: str | Path,
    out_path: str | Path,
    class_names: Sequence[str],
    *,
    values: np.ndarray | None = None,
    min_area: float = DEFAULT_MIN_AREA,
    simplify: float = 0.0,
    classes: str = "foreground",
    georef: dict[str, Any] | None = None,
) -> int:
    """Vectorise a written mask into one polygon feature per connected region.

    Args:
        mask_path: The mask raster (``predict.py``'s ``<stem>_mask``), class indices or,
            with ``values``, the dataset's own values.
        out_path: ``.gpkg`` (the raster's CRS) or ``.geojson`` (EPSG:4326).
        class_names: Class names in class-index order.
        values: The ``--values original`` table the mask was written with (``[256]``).
        min_area: Regions of fewer pixels join their largest neighbour (sieve), or are
            dropped when none is that large; 0 or 1 keeps every region.
        simplify: Simplification tolerance in pixel widths (0: none), shared edges kept.
        classes: ``"foreground"`` (all but the background), ``"all"``, or class names
            (comma-separated).
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
    wanted = polygon_class_indices(classes, class_names)
    lookup = _class_lookup(len(class_names), values, mask_path)
    regions = _read_regions(mask_path, out_path, driver, lookup, min_area, georef)
    array, crs = regions.geometries, regions.crs
    if simplify and len(array):
        array = simplify_regions(array, simplify * regions.pixel_width)
    keep = np.isin(regions.indices, wanted) & ~shapely.is_empty(array)
    array, indices = array[keep], regions.indices[keep].tolist()
    if regions.to_map is not None and len(array):
        a, b, c, d, e, f = regions.to_map[:6]
        matrix = np.array([[a, d], [b, e]])
        array = shapely.transform(array, lambda xy: xy @ matrix + np.array([c, f]))
    options: dict[str, Any] = {}
    if driver == "GeoJSON":
        array = _reproject(array, crs, GEOJSON_CRS) if len(array) else array
        crs = rasterio.crs.CRS.from_string(GEOJSON_CRS)
        options["layer_options"] = {"RFC7946": "YES"}
    _write(out_path, driver, array, indices, class_names, crs, options)
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
