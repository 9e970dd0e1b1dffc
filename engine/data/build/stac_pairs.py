"""STAC items as the builder's image/label pairs, and what the manifest records of them.

Each item is one image: its selected assets on one grid, a VRT written into a folder the
build owns (:func:`engine.data.sources.stac_reader.item_raster`). Its labels are, by what the
command asks for:

- ``--label-asset KEY``: that raster asset of the item, read on the image's grid (nearest);
- ``--vector FILE``: one vector file for every item, rasterised on each image's grid (the
  builder's vector labels);
- neither: the STAC label extension: ``label:type raster`` reads the ``labels`` asset like
  ``--label-asset``; ``label:type vector`` rasterises the ``labels`` asset (a local vector
  file) on the image's grid, its class attribute the first of ``label:properties`` (or the
  command's ``--attribute``/``--burn``).

The pair key is the item id; the group is the item id (or ``--group``'s match on it), and
items whose footprints overlap share a split all the same (the builder's footprint rule,
on the VRT's grid). :func:`stac_record` is the manifest's ``stac`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.sources.pairing import Pair, group_of
from engine.data.sources.stac import StacError, is_remote
from engine.data.sources.stac_reader import ItemRaster, item_rasters
from engine.data.sources.vector_labels import VectorLabels

#: Points of an item's footprint kept in the manifest (more: its convex hull).
FOOTPRINT_POINTS = 256


@dataclass(frozen=True)
class StacPair(Pair):
    """A pair read from a STAC item.

    Attributes:
        source: The item's location (its self href) and id, for sample metadata.
        vector_labels: The item's own vector labels (label extension), or ``None``.
    """

    source: str = ""
    vector_labels: VectorLabels | None = None


@dataclass(frozen=True)
class StacLabels:
    """How the items' labels are read (module notes).

    Attributes:
        asset: ``--label-asset`` KEY, or ``None``.
        vector: ``--vector FILE`` given (labels from the builder's vector file).
        attribute: ``--attribute`` for label-extension vector labels (default: the first
            ``label:properties``).
        burn: ``--burn`` for label-extension vector labels.
        background: ``--background`` for label-extension vector labels.
        classes: The classes file (for vector label values).
        unknown: ``--unknown``.
    """

    asset: str | None = None
    vector: bool = False
    attribute: str | None = None
    burn: int | str | None = None
    background: int | str | None = None
    classes: Any = None
    unknown: str = "error"


def _item_vector(item: Any, raster: ItemRaster, labels: StacLabels) -> VectorLabels:
    """The label-extension vector labels of one item."""
    href = raster.label_href or ""
    if is_remote(href):
        raise StacError(
            f"item {item.id!r}: vector labels {href} are remote; only local vector label "
            "files are read (or give --vector FILE)"
        )
    attribute, burn = labels.attribute, labels.burn
    if attribute is None and burn is None:
        properties = item.properties.get("label:properties")
        if not (isinstance(properties, list) and properties and isinstance(properties[0], str)):
            raise StacError(
                f"item {item.id!r}: label:type vector without label:properties; give "
                "--attribute FIELD or --burn CLASS"
            )
        attribute = properties[0]
    return VectorLabels(
        href, attribute, labels.background, burn=burn, classes=labels.classes,
        unknown=labels.unknown,
    )  # fmt: skip


def stac_pairs(
    items: list[Any],
    assets: list[str],
    folder: str | Path,
    labels: StacLabels,
    *,
    resolution: float | None = None,
    group: str | None = None,
) -> tuple[list[Pair], list[ItemRaster]]:
    """One pair per item, its image (and raster label) VRT written into ``folder``.

    Raises:
        StacError: naming the item (see :func:`engine.data.sources.stac_reader.item_raster`).
    """
    pairs: list[Pair] = []
    rasters = item_rasters(
        items, assets, folder, resolution=resolution, labels=not labels.vector,
        label_key=labels.asset,
    )  # fmt: skip
    for item, raster in zip(items, rasters, strict=True):
        vector = None
        if raster.label_kind == "vector":
            vector = _item_vector(item, raster, labels)
        mask = raster.label or (Path(raster.label_href) if raster.label_href else raster.image)
        source = f"{item.get_self_href()}#{item.id}"
        pairs.append(
            StacPair(
                item.id,
                raster.image,
                mask,
                group_of(item.id, group) if group else item.id,
                source=source,
                vector_labels=vector,
            )
        )
    return pairs, rasters


def _footprint(geometry: Any) -> tuple[Any, bool]:
    """The item's geometry (its convex hull past :data:`FOOTPRINT_POINTS`), and if hulled.

    The hull keeps the manifest small whatever a catalog's footprints hold.
    """
    import shapely
    from shapely.geometry import mapping, shape

    if not isinstance(geometry, dict):
        return None, False
    try:
        polygon = shape(geometry)
    except Exception:  # not GeoJSON: recorded as it is, bounded by the item's own size
        return geometry, False
    if shapely.get_num_coordinates(polygon) <= FOOTPRINT_POINTS:
        return geometry, False
    return mapping(polygon.convex_hull), True


def _item_record(raster: ItemRaster) -> dict:
    item, grid = raster.item, raster.grid
    epsg = grid.crs.to_epsg()
    footprint, hull = _footprint(item.geometry)
    return {
        "id": item.id,
        "href": item.get_self_href(),
        "datetime": item.properties.get("datetime"),
        "start_datetime": item.properties.get("start_datetime"),
        "end_datetime": item.properties.get("end_datetime"),
        "collection": item.collection_id,
        "bbox": list(item.bbox) if item.bbox else None,
        "footprint": footprint,
        "footprint_is_hull": hull,
        "assets": raster.assets,
        "labels": raster.label_href,
        "grid": {
            "crs": f"EPSG:{epsg}" if epsg else grid.crs.to_wkt(),
            "transform": list(grid.transform)[:6],
            "height": grid.height,
            "width": grid.width,
        },
    }


def stac_record(source: str, assets: list[str], rasters: list[ItemRaster],
                resolution: float | None) -> dict:  # fmt: skip
    """The manifest's ``stac`` entry: where the items came from and each item read."""
    return {
        "source": source,
        "assets": list(assets),
        "band_names": rasters[0].names if rasters else [],
        "resolution": resolution,
        "items": [_item_record(raster) for raster in rasters],
    }
