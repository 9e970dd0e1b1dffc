"""Vectorising predicted masks (``predict.py --polygons``): regions, classes, CRS, units, and
the cleaning: sieve and minimum area, background left out, simplification keeping shared edges.

``EXACT`` (``min_area=0``, every class) vectorises the raster as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from engine.infer.polygons import PolygonError, write_polygons

NAMES = ["land", "water", "road"]
PIXEL = 10.0  # metres
EXACT = {"min_area": 0, "classes": "all"}


def write_mask(path: Path, mask: np.ndarray, crs: str | None = "EPSG:32632", **extra) -> Path:
    bands = mask[None] if mask.ndim == 2 else mask
    georef = {"crs": crs, "transform": from_origin(500000, 5000000, PIXEL, PIXEL)} if crs else {}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=bands.shape[1],
        width=bands.shape[2],
        count=bands.shape[0],
        dtype=bands.dtype.name,
        **georef,
        **extra,
    ) as dst:
        dst.write(bands)
    return path


def scene() -> np.ndarray:
    """Class 0 background, two class-1 squares touching only at a corner, a class-2 L,
    a lone class-1 pixel, and a nodata (255) strip."""
    mask = np.zeros((40, 50), np.uint8)
    mask[5:10, 5:10] = 1
    mask[10:15, 10:15] = 1  # corner-touching: a separate region (4-connectivity)
    mask[20:35, 30:33] = 2
    mask[32:35, 33:45] = 2
    mask[2, 40] = 1
    mask[:, 47:] = 255
    return mask


def read(path: Path):
    meta, _, geometry, fields = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(geometry), dict(zip(meta["fields"], fields))


def test_one_polygon_per_region_with_exact_areas(tmp_path):
    mask = scene()
    source = write_mask(tmp_path / "x_mask.tif", mask, nodata=255)
    count = write_polygons(source, tmp_path / "x.gpkg", NAMES, **EXACT)
    meta, geometries, fields = read(tmp_path / "x.gpkg")
    assert meta["crs"] == "EPSG:32632" and count == len(geometries)
    assert sorted(zip(fields["class"], fields["class_index"])) == sorted(
        [("land", 0), ("water", 1), ("water", 1), ("water", 1), ("road", 2)]
    )
    for index, name in enumerate(NAMES):
        mine = fields["class_index"] == index
        assert set(fields["class"][mine]) == {name}
        area = shapely.area(geometries[mine]).sum()
        assert area == pytest.approx((mask == index).sum() * PIXEL**2, rel=1e-9)
    # nodata makes no polygon: everything vectorised lies left of the nodata strip
    assert shapely.union_all(geometries).bounds[2] == pytest.approx(500000 + 47 * PIXEL)
    assert not list(tmp_path.glob("*partial*"))


def test_geojson_is_reprojected_to_wgs84(tmp_path):
    source = write_mask(tmp_path / "x_mask.tif", scene(), nodata=255)
    write_polygons(source, tmp_path / "x.gpkg", NAMES)
    write_polygons(source, tmp_path / "x.geojson", NAMES)
    assert pyogrio.read_info(tmp_path / "x.geojson")["crs"] == "EPSG:4326"
    _, projected, fields = read(tmp_path / "x.gpkg")
    _, wgs84, fields84 = read(tmp_path / "x.geojson")
    lon, lat = shapely.get_coordinates(wgs84).T
    assert (8.9 < lon).all() and (lon < 9.1).all() and (45.1 < lat).all() and (lat < 45.2).all()

    def back(coords):
        xs, ys = rasterio.warp.transform("EPSG:4326", "EPSG:32632", coords[:, 0], coords[:, 1])
        return np.column_stack([xs, ys])

    returned = shapely.transform(wgs84, back)
    order, order84 = np.argsort(shapely.area(projected)), np.argsort(shapely.area(returned))
    assert fields["class_index"][order].tolist() == fields84["class_index"][order84].tolist()
    # 7 decimals of a degree (RFC 7946) move a vertex by about a centimetre
    error = np.abs(shapely.area(returned)[order84] - shapely.area(projected)[order])
    assert (error <= shapely.length(projected)[order] * 0.02).all()


def test_min_area_in_pixels_and_simplify_in_pixel_widths(tmp_path):
    mask = np.zeros((60, 60), np.uint8)
    rows = np.arange(60)
    mask[rows[:, None] > rows[None, :]] = 1  # a staircase diagonal: many vertices
    mask[0, 59] = 2  # one pixel
    source = write_mask(tmp_path / "m.tif", mask)
    assert write_polygons(source, tmp_path / "all.gpkg", NAMES, **EXACT) == 3
    assert write_polygons(source, tmp_path / "big.gpkg", NAMES, min_area=2, classes="all") == 2
    write_polygons(source, tmp_path / "simple.gpkg", NAMES, min_area=2, simplify=1.0, classes="all")
    _, stairs, fields = read(tmp_path / "big.gpkg")
    _, simple, fields_simple = read(tmp_path / "simple.gpkg")
    assert fields["class_index"].tolist() == fields_simple["class_index"].tolist()
    assert (shapely.get_num_coordinates(simple) < shapely.get_num_coordinates(stairs) / 10).all()
    # a tolerance of one pixel width moves each edge by at most a pixel
    tolerance = shapely.length(stairs) * PIXEL
    assert (np.abs(shapely.area(simple) - shapely.area(stairs)) <= tolerance).all()


def test_original_values_map_back_to_classes_and_bad_requests_are_named(tmp_path):
    values = np.zeros(256, np.uint16)
    values[:3] = [100, 2000, 30000]
    values[255] = 65535
    mask = values[scene()]
    source = write_mask(tmp_path / "v_mask.tif", mask, nodata=65535)
    write_polygons(source, tmp_path / "v.gpkg", NAMES, values=values, **EXACT)
    _, _, fields = read(tmp_path / "v.gpkg")
    assert sorted(fields["class"].tolist()) == ["land", "road", "water", "water", "water"]
    with pytest.raises(PolygonError, match=r"v\.shp: polygons are written as"):
        write_polygons(source, tmp_path / "v.shp", NAMES)
    rgb = write_mask(tmp_path / "rgb.tif", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(PolygonError, match=r"rgb\.tif: 3-band mask"):
        write_polygons(rgb, tmp_path / "rgb.gpkg", NAMES)
    with pytest.raises(PolygonError, match="cannot write polygons"):
        write_polygons(source, tmp_path / "missing" / "v.gpkg", NAMES)
    assert not list(tmp_path.glob("*partial*")) and not (tmp_path / "rgb.gpkg").exists()


def test_a_mask_without_crs_gives_pixel_coordinates_and_no_crs(tmp_path):
    from PIL import Image

    mask = scene()
    Image.fromarray(mask).save(tmp_path / "plain_mask.png")
    # a PNG declares no nodata: 255 (ignore/nodata) still makes no polygon, it is no class
    assert write_polygons(tmp_path / "plain_mask.png", tmp_path / "plain.gpkg", NAMES, **EXACT) == 5
    meta, geometries, fields = read(tmp_path / "plain.gpkg")
    assert meta["crs"] is None and sorted(set(fields["class_index"].tolist())) == [0, 1, 2]
    assert shapely.area(geometries).sum() == (mask != 255).sum()  # one unit per pixel
    assert shapely.union_all(geometries).bounds == (0.0, 0.0, 47.0, 40.0)
    with pytest.raises(PolygonError, match=r"plain_mask\.png: no CRS, but GeoJSON coordinates"):
        write_polygons(tmp_path / "plain_mask.png", tmp_path / "plain.geojson", NAMES)
    # with the input's georeferencing the PNG mask's polygons are placed on the map
    georef = {"crs": "EPSG:32632", "transform": from_origin(500000, 5000000, PIXEL, PIXEL)}
    write_polygons(tmp_path / "plain_mask.png", tmp_path / "placed.geojson", NAMES, georef=georef)
    write_mask(tmp_path / "geo_mask.tif", mask, nodata=255)
    write_polygons(tmp_path / "geo_mask.tif", tmp_path / "geo.geojson", NAMES)
    _, placed, _ = read(tmp_path / "placed.geojson")
    _, expected, _ = read(tmp_path / "geo.geojson")
    assert shapely.equals(shapely.normalize(placed), shapely.normalize(expected)).all()


def checkerboard_scene() -> np.ndarray:
    """Land left, road right, a checkerboard of land and water (one-pixel regions) between,
    a water lake with a speckled shore, and a nodata strip."""
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 40:] = 2
    rows, cols = np.indices(mask.shape)
    board = (slice(8, 28), slice(20, 50))
    mask[board] = np.where((rows + cols)[board] % 2, 1, mask[board])
    mask[32:44, 4:20] = 1
    mask[30, 4:20:2] = 1  # one-pixel specks beside the lake's shore
    mask[:, 62:] = 255
    return mask


def test_a_checkerboard_prediction_gives_no_one_pixel_shapes(tmp_path):
    mask = checkerboard_scene()
    source = write_mask(tmp_path / "board_mask.tif", mask, nodata=255)
    raw = write_polygons(source, tmp_path / "raw.gpkg", NAMES, **EXACT)
    assert raw > 300  # the raster as it is: hundreds of one-pixel squares
    count = write_polygons(source, tmp_path / "clean.gpkg", NAMES, classes="all")
    _, geometries, fields = read(tmp_path / "clean.gpkg")
    assert count == len(geometries) == 3  # land, the lake, road
    assert shapely.area(geometries).min() >= 4 * PIXEL**2  # the default minimum area
    # Exactly GDAL's sieve of the raster (each speck joins its largest neighbour), vectorised:
    # rasterising the polygons gives the sieved mask back, nodata untouched.
    valid = mask != 255
    sieved = rasterio.features.sieve(mask, 4, mask=valid, connectivity=4)
    burned = rasterio.features.rasterize(
        zip(geometries, fields["class_index"].tolist()), out_shape=mask.shape, fill=255,
        transform=from_origin(500000, 5000000, PIXEL, PIXEL), dtype="uint8",
    )  # fmt: skip
    np.testing.assert_array_equal(burned, sieved)
    assert (burned[30, 4:20] == 0).all() and (burned[10:26, 22:37] == 0).all()
    assert (burned[10:26, 43:48] == 2).all()
    # a board with no region of 4 pixels to join is noise: nothing is written for it
    noise = ((np.indices((12, 12)).sum(axis=0) % 2) + 1).astype(np.uint8)
    source = write_mask(tmp_path / "noise_mask.tif", noise)
    assert write_polygons(source, tmp_path / "noise.gpkg", NAMES, classes="all") == 0
    assert write_polygons(source, tmp_path / "noise4.gpkg", NAMES, min_area=1) == 144


def test_background_is_not_written_unless_asked(tmp_path):
    source = write_mask(tmp_path / "x_mask.tif", scene(), nodata=255)

    def written(names, **options):
        write_polygons(source, tmp_path / "x.gpkg", names, min_area=0, **options)
        return sorted(read(tmp_path / "x.gpkg")[2]["class"].tolist())

    assert written(NAMES) == ["road", "water", "water", "water"]  # land: the first class
    assert written(NAMES, classes="all") == ["land", "road", "water", "water", "water"]
    assert written(NAMES, classes="road, land") == ["land", "road"]
    # a class named background is the background, wherever it is
    assert written(["land", "water", "Background"]) == ["land", "water", "water", "water"]
    with pytest.raises(PolygonError, match=r"--polygon-classes 'lake': give foreground, all or "
                       r"class names of the model \(land, water, road\)"):  # fmt: skip
        written(NAMES, classes="lake")


def blobs(height: int = 80, width: int = 96) -> np.ndarray:
    """Four classes in smooth irregular regions (thresholded smoothed noise), seeded."""
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(height // 8 + 2, width // 8 + 2))
    smooth = np.kron(noise, np.ones((8, 8)))
    kernel = np.ones(9) / 9
    for axis in (0, 1):
        smooth = np.apply_along_axis(lambda line: np.convolve(line, kernel, "same"), axis, smooth)
    smooth = smooth[4 : 4 + height, 4 : 4 + width]
    mask = np.digitize(smooth, np.quantile(smooth, [0.25, 0.5, 0.75])).astype(np.uint8)
    mask[:, -6:] = 255  # nodata
    return mask


def test_simplified_neighbours_still_tile_the_area(tmp_path):
    mask = blobs()
    source = write_mask(tmp_path / "blobs_mask.tif", mask, nodata=255)
    names = ["land", "water", "road", "forest"]
    write_polygons(source, tmp_path / "raw.gpkg", names, classes="all")
    write_polygons(source, tmp_path / "simple.gpkg", names, classes="all", simplify=1.5)
    _, raw, _ = read(tmp_path / "raw.gpkg")
    _, simple, fields = read(tmp_path / "simple.gpkg")
    assert len(simple) == len(raw) > 8
    assert shapely.get_num_coordinates(simple).sum() < shapely.get_num_coordinates(raw).sum() / 2
    valid_area = (mask != 255).sum() * PIXEL**2
    union = shapely.union_all(simple)
    overlaps = shapely.area(simple).sum() - union.area
    gaps = valid_area - union.area
    small = 0.01 * PIXEL**2  # a hundredth of a pixel, in all
    assert abs(overlaps) <= small and abs(gaps) <= small, (overlaps, gaps)
    # the simplified area stays on the raster's: the outline of the valid area is kept
    assert union.symmetric_difference(shapely.union_all(raw)).area <= small
    # and only the foreground written by default, edges still shared with it
    write_polygons(source, tmp_path / "fore.gpkg", names, simplify=1.5)
    _, fore, fields_fore = read(tmp_path / "fore.gpkg")
    assert 0 not in fields_fore["class_index"] and len(fore) == (fields["class_index"] != 0).sum()
    mine = shapely.to_wkt(shapely.normalize(simple[fields["class_index"] != 0]))
    assert sorted(mine) == sorted(shapely.to_wkt(shapely.normalize(fore)))
