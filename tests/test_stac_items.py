"""STAC items for predicted COGs and the self-contained catalog they are written to."""

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely.geometry
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

import engine
from engine.infer.stac_items import ASSET_KEY, StacItemError, prediction_item, write_catalog
from engine.render.colors import class_info, hex_to_rgb

WHEN = dt.datetime(2024, 3, 9, 6, 45, tzinfo=dt.timezone.utc)
#: A dataset.json's classes, as predict reads them (names and palette).
MANIFEST = {
    "classes": [
        {"index": 0, "name": "Building", "color": "#3C1098"},
        {"index": 1, "name": "Land (unpaved area)", "color": "#8429F6"},
        {"index": 2, "name": "Water", "color": "#E2A929"},
    ]
}


def _classes() -> list[tuple[int, str, tuple[int, int, int]]]:
    names, palette = class_info(MANIFEST)
    return [(i, name, hex_to_rgb(color)) for i, (name, color) in enumerate(zip(names, palette))]


def _cog(path: Path, crs="EPSG:32640", transform=None, shape=(200, 300), driver="COG") -> Path:
    transform = transform or from_origin(300_000, 2_800_000, 0.5, 0.5)
    mask = (np.arange(shape[0] * shape[1]).reshape(shape) % 3).astype(np.uint8)
    profile = dict(driver=driver, width=shape[1], height=shape[0], count=1, dtype="uint8")
    with rasterio.open(path, "w", crs=crs, transform=transform, nodata=255, **profile) as dst:
        dst.write(mask, 1)
    return path


def _source(
    href: str | None = "https://stac.example/collections/s2/items/S2_T40RCN",
) -> pystac.Item:
    item = pystac.Item("S2_T40RCN", None, None, WHEN, {})
    if href:
        item.set_self_href(href)
    return item


def test_the_item_describes_the_cog(tmp_path):
    cog = _cog(tmp_path / "scene_mask.tif")
    item = prediction_item(
        _source(), cog, item_id="scene-prediction", classes=_classes(), model_name="resunet34"
    )
    # Footprint: the raster's corners and centre in lon/lat, transformed point by point.
    xs, ys = [300_000, 300_000, 300_150, 300_150, 300_075], [2_799_900, 2_800_000] * 2 + [2_799_950]
    lons, lats = transform_points("EPSG:32640", "EPSG:4326", xs, ys)
    corners, centre = list(zip(lons, lats))[:4], (lons[4], lats[4])
    west, south, east, north = item.bbox
    assert 54 < west < east < 56 and 25 < south < north < 26  # near Dubai
    for lon, lat in corners:
        assert west - 1e-6 <= lon <= east + 1e-6 and south - 1e-6 <= lat <= north + 1e-6
    footprint = shapely.geometry.shape(item.geometry)
    assert footprint.is_valid and footprint.contains(shapely.geometry.Point(*centre))
    ring = shapely.geometry.Polygon([corners[0], corners[2], corners[3], corners[1]])
    assert footprint.area == pytest.approx(ring.area, rel=1e-3)

    props = item.properties
    assert props["proj:code"] == "EPSG:32640" and props["proj:shape"] == [200, 300]
    assert props["proj:transform"] == [0.5, 0.0, 300_000.0, 0.0, -0.5, 2_800_000.0]
    assert props["proj:bbox"] == [300_000.0, 2_799_900.0, 300_150.0, 2_800_000.0]
    assert item.datetime == WHEN and props["processing:software"] == {
        "terraseg": engine.__version__
    }
    assert props["terraseg:model"] == "resunet34" and props["terraseg:source_item"] == "S2_T40RCN"

    asset = item.assets[ASSET_KEY]
    assert asset.media_type == pystac.MediaType.COG and asset.roles == ["data"]
    assert Path(asset.href) == cog.resolve()
    (band,) = asset.extra_fields["raster:bands"]
    assert isinstance(band["nodata"], int)  # a uint8 raster's nodata, not 255.0
    assert band == {
        "nodata": 255,
        "sampling": "area",
        "data_type": "uint8",
        "spatial_resolution": 0.5,
    }
    classes = asset.extra_fields["classification:classes"]
    assert [(c["value"], c["name"], c["title"], c["color_hint"]) for c in classes] == [
        (0, "Building", "Building", "3C1098"),
        (1, "Land_unpaved_area", "Land (unpaved area)", "8429F6"),
        (2, "Water", "Water", "E2A929"),
    ]
    schemas = " ".join(item.stac_extensions)
    for name in ("projection", "raster", "classification", "processing"):
        assert f"stac-extensions.github.io/{name}/" in schemas
    (link,) = item.get_links("derived_from")
    assert link.href == "https://stac.example/collections/s2/items/S2_T40RCN"


def test_without_a_source_href_the_source_is_named_not_linked(tmp_path):
    cog = _cog(tmp_path / "a.tif")
    item = prediction_item(_source(href=None), cog, item_id="a", classes=_classes())
    assert (
        item.get_links("derived_from") == []
        and item.properties["terraseg:source_item"] == "S2_T40RCN"
    )
    given = dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc)
    plain = prediction_item(None, cog, item_id="b", classes=_classes(), datetime=given)
    assert plain.datetime == given and "terraseg:source_item" not in plain.properties

    span = {"start_datetime": "2024-01-01T00:00:00Z", "end_datetime": "2024-01-31T00:00:00Z"}
    ranged = pystac.Item("r", None, None, None, span)
    from_range = prediction_item(ranged, cog, item_id="c", classes=_classes())
    assert from_range.datetime is None
    assert from_range.properties["start_datetime"] == "2024-01-01T00:00:00Z"


def test_a_geographic_cog_has_no_metric_resolution(tmp_path):
    cog = _cog(tmp_path / "geo.tif", crs="EPSG:4326", transform=from_origin(55.0, 25.5, 1e-4, 1e-4))
    item = prediction_item(None, cog, item_id="geo", classes=_classes(), datetime=WHEN)
    assert item.bbox == pytest.approx([55.0, 25.48, 55.03, 25.5])
    (band,) = item.assets[ASSET_KEY].extra_fields["raster:bands"]
    assert "spatial_resolution" not in band


def test_a_crs_without_a_code_is_written_as_wkt2(tmp_path):
    local = CRS.from_proj4(
        "+proj=tmerc +lat_0=0 +lon_0=55.3 +k=1 +x_0=500000 +y_0=0 +ellps=WGS84 +units=m"
    )
    cog = _cog(tmp_path / "local.tif", crs=local, transform=from_origin(500_000, 2_800_000, 1, 1))
    item = prediction_item(None, cog, item_id="local", classes=_classes(), datetime=WHEN)
    assert item.properties.get("proj:code") is None
    assert CRS.from_wkt(item.properties["proj:wkt2"]) == local
    assert item.bbox[0] == pytest.approx(55.3, abs=0.01)  # the false origin sits on lon_0


def test_a_plain_geotiff_is_not_called_a_cog(tmp_path):
    tif = _cog(tmp_path / "strips.tif", driver="GTiff")
    item = prediction_item(None, tif, item_id="strips", classes=_classes(), datetime=WHEN)
    assert item.assets[ASSET_KEY].media_type == pystac.MediaType.GEOTIFF


def test_bad_inputs_are_one_line_errors(tmp_path):
    no_crs = tmp_path / "nocrs.tif"
    with rasterio.open(no_crs, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as d:
        d.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(StacItemError, match=f"{no_crs}: has no CRS"):
        prediction_item(None, no_crs, item_id="x", classes=_classes())
    not_raster = tmp_path / "notes.tif"
    not_raster.write_text("not a raster")
    with pytest.raises(StacItemError, match=f"{not_raster}: cannot be read as a raster"):
        prediction_item(None, not_raster, item_id="x", classes=_classes())
    cog = _cog(tmp_path / "ok.tif")
    assert prediction_item(None, cog, item_id="Île_2024.v1", classes=_classes()).id == "Île_2024.v1"
    for bad in ("../escape", "a/b", "a\\b", ".hidden", "", "x" * 201, "tab\there"):
        with pytest.raises(StacItemError, match="is not usable as a file name"):
            prediction_item(None, cog, item_id=bad, classes=_classes())


def test_the_catalog_reads_back_with_relative_links(tmp_path):
    out = tmp_path / "predictions"
    out.mkdir()
    cogs = [_cog(out / f"tile{i}_mask.tif") for i in range(2)]
    items = [
        prediction_item(_source(f"https://stac.example/items/src{i}"), cog, item_id=f"tile{i}",
                        classes=_classes())
        for i, cog in enumerate(cogs)
    ]  # fmt: skip
    path = write_catalog(items, out, catalog_id="terraseg-predictions", description="test run")
    assert path == out / "catalog.json"
    assert all(item.get_self_href() is None for item in items)  # the caller's items unchanged
    assert not list(out.rglob("*.tmp"))

    raw = json.loads(path.read_text())
    assert raw["id"] == "terraseg-predictions" and raw["type"] == "Catalog"
    assert sorted(link["href"] for link in raw["links"] if link["rel"] == "item") == [
        "./tile0/tile0.json",
        "./tile1/tile1.json",
    ]
    raw_item = json.loads((out / "tile0" / "tile0.json").read_text())
    assert raw_item["assets"][ASSET_KEY]["href"] == "../tile0_mask.tif"
    assert not any(link["rel"] == "self" for link in raw_item["links"])

    catalog = pystac.Catalog.from_file(str(path))
    read = {item.id: item for item in catalog.get_items()}
    assert set(read) == {"tile0", "tile1"}
    for i, cog in enumerate(cogs):
        asset = read[f"tile{i}"].assets[ASSET_KEY]
        assert Path(asset.get_absolute_href()) == cog.resolve()
        assert asset.extra_fields["classification:classes"][2]["color_hint"] == "E2A929"
        (link,) = read[f"tile{i}"].get_links("derived_from")
        assert link.href == f"https://stac.example/items/src{i}"
        with rasterio.open(asset.get_absolute_href()) as src:
            assert src.shape == tuple(read[f"tile{i}"].properties["proj:shape"])


def test_the_catalog_refuses_duplicate_ids(tmp_path):
    cog = _cog(tmp_path / "a.tif")
    items = [prediction_item(None, cog, item_id="same", classes=_classes(), datetime=WHEN)] * 2
    with pytest.raises(StacItemError, match="the id 'same'"):
        write_catalog(items, tmp_path / "cat", catalog_id="c", description="d")
    assert not (tmp_path / "cat" / "catalog.json").exists()
