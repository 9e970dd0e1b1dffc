"""STAC items for predictions (``predict --stac``) and the static catalog that holds them.

:func:`prediction_item` describes one predicted COG as a STAC Item: its footprint in
WGS84 longitude/latitude, the projection extension (``proj:code`` or ``proj:wkt2``,
``proj:shape``, ``proj:transform``, ``proj:bbox``), the raster extension on the asset (data
type, nodata, sampling, spatial resolution of each band), the classification extension on
the asset (each class's value, machine name, title and colour), a ``derived_from`` link to
the item the prediction was made from, that item's datetime and the terraseg version
(processing extension). :func:`write_catalog` writes items as a self-contained catalog
(relative links and asset hrefs) that ``pystac.Catalog.from_file`` reads back; each file
is written under a temporary name and renamed, ``catalog.json`` last, so a catalog on disk
never lists an item that is not there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.errors import UserError

if TYPE_CHECKING:
    import pystac
    import rasterio

#: The asset key of the predicted raster in each item.
ASSET_KEY = "prediction"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Points per footprint edge: enough that a reprojected edge follows its curve.
EDGE_POINTS = 21


class StacItemError(UserError):
    """A prediction that cannot be described as a STAC item; the message names the file."""


def _check_id(item_id: str, what: object) -> None:
    """Item ids become folder and file names in a catalog: no paths, no hidden names."""
    usable = all(c.isalnum() or c in "-_." for c in item_id) and 0 < len(item_id) <= 200
    if not usable or item_id.startswith("."):
        raise StacItemError(
            f"{what}: item id {item_id!r} is not usable as a file name in a catalog "
            "(letters, digits, '_', '-', '.', not starting with '.', at most 200 characters)"
        )


def _footprint(src: rasterio.io.DatasetReader) -> dict[str, Any]:
    """The raster's bounds as a GeoJSON polygon in its CRS, each edge densified."""
    left, bottom, right, top = src.bounds
    steps = [i / (EDGE_POINTS - 1) for i in range(EDGE_POINTS)]
    ring = (
        [(left + (right - left) * s, bottom) for s in steps]
        + [(right, bottom + (top - bottom) * s) for s in steps[1:]]
        + [(right - (right - left) * s, top) for s in steps[1:]]
        + [(left, top - (top - bottom) * s) for s in steps[1:]]
    )
    return {"type": "Polygon", "coordinates": [ring]}


def _lon_lat(src: rasterio.io.DatasetReader, path: Path) -> tuple[dict[str, Any], list[float]]:
    """The footprint in WGS84 (GeoJSON order: longitude, latitude) and its bbox."""
    import shapely.geometry
    from rasterio.warp import transform_geom

    try:
        geometry = transform_geom(src.crs, "EPSG:4326", _footprint(src), precision=7)
    except Exception as error:  # GDAL/PROJ errors have no common type
        raise StacItemError(
            f"{path}: its footprint does not map to longitude/latitude: {error}"
        ) from None
    bounds = shapely.geometry.shape(geometry).bounds
    return dict(geometry), [round(v, 7) for v in bounds]


def _projection(src: rasterio.io.DatasetReader) -> dict[str, Any]:
    """Projection-extension fields: the CRS as an authority code, else as WKT2."""
    fields: dict[str, Any] = {
        "shape": [src.height, src.width],
        "transform": list(src.transform)[:6],
        "bbox": list(src.bounds),
    }
    authority = src.crs.to_authority()
    if authority:
        fields["code"] = f"{authority[0]}:{authority[1]}"
    else:
        fields["wkt2"] = src.crs.to_wkt()
    return fields


def _resolution_m(src: rasterio.io.DatasetReader) -> float | None:
    """Pixel size in metres (the mean of x and y) for a projected CRS; None otherwise."""
    if not src.crs.is_projected:
        return None
    _, metres_per_unit = src.crs.linear_units_factor
    return float((abs(src.res[0]) + abs(src.res[1])) / 2 * metres_per_unit)


def _raster_bands(src: rasterio.io.DatasetReader) -> list[Any]:
    from pystac.extensions.raster import DataType, RasterBand, Sampling

    point = src.tags().get("AREA_OR_POINT", "Area").lower() == "point"
    resolution = _resolution_m(src)
    nodatas = [
        int(v) if v is not None and float(v).is_integer() and kind in "ui" else v
        for v, kind in zip(src.nodatavals, (np.dtype(t).kind for t in src.dtypes))
    ]
    return [
        RasterBand.create(
            nodata=nodatas[band],
            sampling=Sampling.POINT if point else Sampling.AREA,
            data_type=DataType(src.dtypes[band]),
            spatial_resolution=resolution,
        )
        for band in range(src.count)
    ]


def _classification(classes: Sequence[tuple[int, str, tuple[int, int, int]]]) -> list[Any]:
    """Classification-extension classes; ``name`` is the title made machine-readable."""
    from pystac.extensions.classification import Classification

    out, seen = [], set()
    for value, title, rgb in classes:
        name = re.sub(r"[^0-9A-Za-z_-]+", "_", title).strip("_") or f"class_{value}"
        if name in seen:
            name = f"{name}_{value}"
        seen.add(name)
        out.append(
            Classification.create(
                value=int(value),
                name=name,
                title=title,
                description=title,
                color_hint="".join(f"{int(c):02X}" for c in rgb),
            )
        )
    return out


def _read_cog(cog_path: Path) -> dict[str, Any]:
    """What the item needs from the raster: footprints, projection, bands, media type."""
    import rasterio
    from pystac import MediaType

    try:
        src_context = rasterio.open(cog_path)
    except rasterio.errors.RasterioIOError as error:
        raise StacItemError(f"{cog_path}: cannot be read as a raster: {error}") from None
    with src_context as src:
        if src.crs is None:
            raise StacItemError(f"{cog_path}: has no CRS, so its STAC item would have no footprint")
        geometry, bbox = _lon_lat(src, cog_path)
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        return {
            "geometry": geometry,
            "bbox": bbox,
            "projection": _projection(src),
            "bands": _raster_bands(src),
            "media_type": MediaType.COG if layout.upper() == "COG" else MediaType.GEOTIFF,
        }


def _when(source: pystac.Item | None, datetime: dt.datetime | None) -> dict[str, Any]:
    """The item's time: the one given, else the source's instant or range, else now."""
    if datetime is not None:
        return {"datetime": datetime}
    if source is not None and source.datetime is not None:
        return {"datetime": source.datetime}
    if source is not None and "start_datetime" in source.properties:
        keys = ("start_datetime", "end_datetime")
        return {"datetime": None, "properties": {k: source.properties.get(k) for k in keys}}
    return {"datetime": dt.datetime.now(dt.timezone.utc)}


def _link_source(item: pystac.Item, source: pystac.Item) -> None:
    """A ``derived_from`` link to the source's self href (or canonical link) when it has one."""
    import pystac

    href = source.get_self_href()
    if href is None:
        canonical = source.get_single_link("canonical")
        href = canonical.href if canonical is not None else None
    if href is not None:
        item.add_link(
            pystac.Link("derived_from", href, media_type=pystac.MediaType.GEOJSON, title=source.id)
        )


def prediction_item(
    source: pystac.Item | None,
    cog_path: Path,
    *,
    item_id: str,
    classes: Sequence[tuple[int, str, tuple[int, int, int]]],
    model_name: str | None = None,
    datetime: dt.datetime | None = None,
) -> pystac.Item:
    """A STAC Item describing the predicted COG ``cog_path``.

    Args:
        source: The item the prediction was made from (its datetime and a ``derived_from``
            link to its self href are taken); None for a prediction of a plain file.
        cog_path: The predicted raster (a COG; another GeoTIFF gets the GeoTIFF media type).
        item_id: The new item's id (a file name in the catalog: no ``/``, no leading ``.``).
        classes: ``(pixel value, name, (r, g, b))`` per class, for the classification
            extension.
        model_name: Recorded as ``terraseg:model`` when given.
        datetime: The item's datetime; the source's when None (its start/end range when it
            has no instant), else the time of writing.

    Returns:
        The item, its one asset (``prediction``) holding ``cog_path`` as an absolute href.

    Raises:
        StacItemError: naming ``cog_path`` when it is not a raster, has no CRS, its footprint
            cannot be mapped to longitude/latitude, or ``item_id`` is not a safe file name.
    """
    import pystac
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    _check_id(item_id, cog_path)
    found = _read_cog(Path(cog_path))
    when = _when(source, datetime)
    properties: dict[str, Any] = {
        **when.get("properties", {}),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "processing:software": {"terraseg": __version__},
    }
    if model_name:
        properties["terraseg:model"] = model_name
    if source is not None:
        properties["terraseg:source_item"] = source.id
    item = pystac.Item(
        id=item_id,
        geometry=found["geometry"],
        bbox=found["bbox"],
        datetime=when["datetime"],
        properties=properties,
        stac_extensions=[PROCESSING_SCHEMA],
    )
    ProjectionExtension.ext(item, add_if_missing=True).apply(**found["projection"])
    asset = pystac.Asset(
        href=str(Path(cog_path).resolve()),
        media_type=found["media_type"],
        roles=["data"],
        title="terraseg prediction",
    )
    item.add_asset(ASSET_KEY, asset)
    RasterExtension.ext(asset, add_if_missing=True).apply(found["bands"])
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=_classification(classes))
    if source is not None:
        _link_source(item, source)
    return item


def _write_json(payload: dict[str, Any], path: Path) -> None:
    """Write ``path`` under a temporary name in its folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_catalog(
    items: Sequence[pystac.Item], out_dir: Path, *, catalog_id: str, description: str
) -> Path:
    """Write ``items`` as a self-contained STAC catalog in ``out_dir``.

    The layout is pystac's: ``out_dir/catalog.json`` and ``out_dir/<id>/<id>.json`` per
    item; links and asset hrefs are relative (assets on another drive stay absolute), so
    the folder can be moved with its rasters. The items passed in are not changed.

    Args:
        items: The items (e.g. from :func:`prediction_item`); their ids must be unique.
        out_dir: The catalog's folder (created when missing).
        catalog_id: The catalog's id.
        description: The catalog's description.

    Returns:
        The path of ``catalog.json``.

    Raises:
        StacItemError: naming ``out_dir`` and the id when two items share an id or an id is
            not a safe file name.
    """
    import pystac

    out_dir = Path(out_dir).resolve()
    ids = [item.id for item in items]
    for item_id in ids:
        _check_id(item_id, out_dir)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise StacItemError(f"{out_dir}: two or more items have the id {duplicates[0]!r}")
    catalog = pystac.Catalog(
        id=catalog_id, description=description, catalog_type=pystac.CatalogType.SELF_CONTAINED
    )
    catalog.add_items([item.clone() for item in items])
    catalog.normalize_hrefs(str(out_dir))
    catalog.make_all_asset_hrefs_relative()
    for item in catalog.get_items():
        href = item.get_self_href()
        assert href is not None  # normalize_hrefs set it
        _write_json(item.to_dict(include_self_link=False, transform_hrefs=True), Path(href))
    path = out_dir / "catalog.json"
    _write_json(catalog.to_dict(include_self_link=False, transform_hrefs=True), path)
    return path
