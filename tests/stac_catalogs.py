"""Generated STAC catalogs for the tests: COGs written by rasterio, catalogs by pystac.

A scene is a UTM grid at 10 m; :func:`write_scene` writes one COG per band (10 m bands at
full size, 20 m bands at half size, block-averaged so that a bilinear read back onto the
10 m grid is close to the 10 m truth), a label COG, and returns the per-band arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import rasterio
from affine import Affine
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

CRS = "EPSG:32633"
BANDS_10M = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
BANDS_20M = {"B11": "swir16"}


def write_cog(
    path: Path,
    array: np.ndarray,
    transform: Affine | None,
    crs: str | None = CRS,
    nodata: float | None = None,
    descriptions: list[str] | None = None,
) -> Path:
    """Write ``array`` (``HxW`` or ``CxHxW``) as a COG with 128-pixel blocks."""
    data = array[None] if array.ndim == 2 else array
    profile = {
        "driver": "COG", "height": data.shape[1], "width": data.shape[2],
        "count": data.shape[0], "dtype": data.dtype.name, "blocksize": 128,
        "compress": "deflate", "overview_resampling": "nearest",
    }  # fmt: skip
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for index, text in enumerate(descriptions or [], 1):
            dst.set_band_description(index, text)
    return path


def scene_arrays(size: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth uint16 bands (10 m: ``size``², 20 m: ``size/2``²) and a 0/1/2 label."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    arrays = {}
    for n, band in enumerate([*BANDS_10M, *BANDS_20M]):
        field = 1000 + 400 * n + 300 * np.sin(rows / 9 + n) + 300 * np.cos(cols / 13 - n)
        arrays[band] = (field + rng.normal(0, 5, field.shape)).astype(np.uint16)
    for band in BANDS_20M:
        full = arrays[band].astype(np.float64)
        arrays[band] = full.reshape(size // 2, 2, size // 2, 2).mean(axis=(1, 3)).astype(np.uint16)
    arrays["label"] = ((rows // 16 + cols // 16) % 3).astype(np.uint8)
    return arrays


def write_scene(
    folder: Path,
    item_id: str,
    origin: tuple[float, float],
    size: int = 128,
    seed: int = 0,
) -> tuple[pystac.Item, dict[str, np.ndarray]]:
    """COGs of one scene in ``folder/item_id`` and its STAC item (eo:bands, proj:*, label).

    Saved with :func:`save_catalog` into ``folder``, the item lands next to its COGs.
    """
    arrays = scene_arrays(size, seed)
    left, top = origin
    folder = folder / item_id
    folder.mkdir(parents=True, exist_ok=True)
    bbox_utm = (left, top - 10 * size, left + 10 * size, top)
    geometry = transform_geom(CRS, "EPSG:4326", mapping(box(*bbox_utm)))
    item = pystac.Item(
        item_id, geometry, list(shape(geometry).bounds),
        pystac.utils.str_to_datetime("2024-06-01T10:00:00Z"), {"proj:code": CRS},
    )  # fmt: skip
    for band, common in {**BANDS_10M, **BANDS_20M}.items():
        pixel = 10 if band in BANDS_10M else 20
        transform = Affine(pixel, 0, left, 0, -pixel, top)
        write_cog(folder / f"{item_id}_{band}.tif", arrays[band], transform, nodata=0)
        item.add_asset(band, pystac.Asset(
            f"./{item_id}_{band}.tif", media_type=pystac.MediaType.COG, roles=["data"],
            extra_fields={"eo:bands": [{"name": band, "common_name": common}],
                          "proj:transform": list(transform)[:6],
                          "proj:shape": list(arrays[band].shape)},
        ))  # fmt: skip
    label_transform = Affine(10, 0, left, 0, -10, top)
    write_cog(folder / f"{item_id}_label.tif", arrays["label"], label_transform, nodata=255)
    item.add_asset("label", pystac.Asset(f"./{item_id}_label.tif", roles=["labels"]))
    return item, arrays


def save_catalog(folder: Path, items: list[pystac.Item]) -> Path:
    """A self-contained static catalog of ``items`` in ``folder``; returns catalog.json."""
    catalog = pystac.Catalog("scenes", "generated scenes")
    for item in items:
        catalog.add_item(item)
    catalog.normalize_and_save(str(folder), pystac.CatalogType.SELF_CONTAINED)
    return folder / "catalog.json"
