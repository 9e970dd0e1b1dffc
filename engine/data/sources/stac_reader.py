"""A STAC item's selected assets as one raster: a VRT file per item, read by the raster reader.

:func:`item_raster` selects the assets (:mod:`.stac_assets`), reads their headers and puts
them on one grid (:mod:`.stac_grid`), and writes ``<item id>.vrt`` (and, with labels,
``<item id>.label.vrt``) into a folder the caller owns. The VRT is an ordinary raster for
everything downstream: :func:`open_item` opens it with
:func:`engine.data.sources.rasters.open_raster` (windowed reads of native values, band names
= the selection's names, the first image asset's nodata), the shard builder pairs it with
its label VRT, prediction predicts it. Images are resampled bilinear, labels nearest.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.data.sources.raster_base import RasterReader
from engine.data.sources.stac import StacError
from engine.data.sources.stac_assets import AssetBand, label_asset, select_assets
from engine.data.sources.stac_grid import (
    AssetHeader,
    ItemGrid,
    covers,
    item_grid,
    read_header,
    vrt_xml,
)

#: Items whose asset headers are read at once (remote headers are a few small requests each).
HEADER_THREADS = 8


def file_stem(item_id: str) -> str:
    """The item id as a file stem (also a safe id for the prediction's STAC item).

    Characters other than ASCII letters, digits, ``-``, ``_`` and ``.`` become ``_``; no
    leading ``-`` or ``.``; at most 200 characters.
    """
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in item_id)
    return stem.lstrip("-.").rstrip(".")[:200] or "item"


@dataclass(frozen=True)
class ItemRaster:
    """The files that read one item on one grid.

    Attributes:
        item: The :class:`pystac.Item`.
        image: The VRT of the selected image bands.
        names: The image's band names (the selection's).
        assets: Band name → asset key it is read from.
        grid: The grid (CRS, transform, size).
        label: The label VRT (nearest) on the same grid, or ``None``.
        label_kind: ``raster`` or ``vector`` (STAC label extension), or ``None``.
        label_href: The label asset's location, or ``None``.
    """

    item: Any
    image: Path
    names: list[str]
    assets: dict[str, str]
    grid: ItemGrid
    label: Path | None = None
    label_kind: str | None = None
    label_href: str | None = field(default=None)


def _expand(
    item: Any, selection: list[AssetBand], headers: dict[str, AssetHeader]
) -> list[tuple[str, AssetHeader, int, str]]:
    """``(name, header, band number, asset key)`` of every band read, in order."""
    bands = []
    for choice in selection:
        header = headers[choice.key]
        if choice.band is not None:
            if choice.band > header.count:
                raise StacError(
                    f"item {item.id!r}: asset {choice.key!r} has {header.count} band(s), "
                    f"its eo:bands say band {choice.band} is {choice.name!r}"
                )
            bands.append((choice.name, header, choice.band, choice.key))
        elif header.count == 1:
            bands.append((choice.name, header, 1, choice.key))
        else:
            bands += [
                (f"{choice.name}{n}", header, n, choice.key) for n in range(1, header.count + 1)
            ]
    dtypes = {header.dtype for _, header, _, _ in bands}
    if len(dtypes) != 1:
        listed = ", ".join(f"{key}: {h.dtype}" for _, h, _, key in bands)
        raise StacError(f"item {item.id!r}: selected assets of different pixel types ({listed})")
    return bands


def item_raster(
    item: Any,
    wanted: list[str],
    folder: str | Path,
    *,
    resolution: float | None = None,
    labels: bool = False,
    label_key: str | None = None,
) -> ItemRaster:
    """Write the VRT(s) reading ``item``'s selected assets on one grid into ``folder``.

    Args:
        item: A :class:`pystac.Item` (absolute asset hrefs: :func:`.stac.load_items`).
        wanted: Asset keys or band names (:func:`.stac_assets.select_assets`).
        folder: Where ``<stem>.vrt`` (and ``<stem>.label.vrt``) go; must exist.
        resolution: Pixel size in CRS units (default: the finest selected asset's).
        labels: Also read the item's raster labels (``label_key`` or the label extension);
            a vector label asset is returned as ``label_href`` with ``label_kind`` vector.
        label_key: ``--label-asset``.

    Raises:
        StacError: one line naming the item (missing asset or band, unreadable asset, no
            projection information, different CRSs or pixel types, label asset missing).
    """
    selection = select_assets(item, wanted)
    headers: dict[str, AssetHeader] = {}
    for choice in selection:
        if choice.key not in headers:
            headers[choice.key] = read_header(item, choice)
    bands = _expand(item, selection, headers)
    grid = item_grid(item, headers, resolution)
    stem = Path(folder) / file_stem(item.id)
    image = stem.with_name(stem.name + ".vrt")
    nodata = bands[0][1].nodata
    image.write_text(vrt_xml(grid, [(n, h, b) for n, h, b, _ in bands], "bilinear", nodata))
    raster = ItemRaster(item, image, [b[0] for b in bands], {b[0]: b[3] for b in bands}, grid)
    if not labels:
        return raster
    choice, kind = label_asset(item, label_key)
    if kind == "vector":
        return replace(raster, label_kind=kind, label_href=choice.href)
    header = read_header(item, choice)
    item_grid(item, {**headers, choice.key: header})  # the same CRS, or an error naming both
    if header.nodata is None and not covers(header, grid):
        raise StacError(
            f"item {item.id!r}: label asset {choice.key!r} does not cover the image's extent "
            "and has no nodata value, so the pixels outside it would read as class value 0"
        )
    label = stem.with_name(stem.name + ".label.vrt")
    label.write_text(vrt_xml(grid, [("label", header, 1)], "nearest", header.nodata))
    return replace(raster, label=label, label_kind=kind, label_href=choice.href)


def item_rasters(
    items: list[Any],
    wanted: list[str],
    folder: str | Path,
    *,
    resolution: float | None = None,
    labels: bool = False,
    label_key: str | None = None,
    threads: int = HEADER_THREADS,
) -> list[ItemRaster]:
    """:func:`item_raster` of every item, their headers read by ``threads`` threads.

    Raises:
        StacError: the first failing item's error, in item order.
    """
    from concurrent.futures import ThreadPoolExecutor

    stems = [file_stem(item.id) for item in items]
    for stem in {s for s in stems if stems.count(s) > 1}:
        ids = [item.id for item, other in zip(items, stems, strict=True) if other == stem]
        raise StacError(f"items {ids[0]!r} and {ids[1]!r} would share the file name {stem}")

    def one(item: Any) -> ItemRaster:
        return item_raster(item, wanted, folder, resolution=resolution, labels=labels,
                           label_key=label_key)  # fmt: skip

    with ThreadPoolExecutor(max(1, min(threads, len(items)))) as pool:
        return list(pool.map(one, items))


def open_item(
    item: Any, wanted: list[str], folder: str | Path, *, resolution: float | None = None
) -> RasterReader:
    """A window reader of ``item``'s selected assets on one grid (see :func:`item_raster`).

    Remote assets get the shard store's retries and timeouts inside
    :func:`engine.data.sources.stac_grid.remote_reads` (the commands enter it).
    """
    from engine.data.sources.rasters import open_raster

    return open_raster(item_raster(item, wanted, folder, resolution=resolution).image)
