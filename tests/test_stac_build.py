"""``terraseg build --stac``: items as images (assets of 10 m and 20 m on one grid), labels
from a label asset, a vector file or the STAC label extension, overlapping items in one
split, and what dataset.json records of the items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from stac_catalogs import CRS, save_catalog, write_scene

from engine.commands import build_shards as build_command
from engine.data.shards.loader import read_split
from engine.data.shards.manifest import load_manifest

BANDS = ["red", "green", "blue", "nir", "swir16"]
ORIGINS = {  # scene-a and scene-b overlap (half their width); the others stand alone
    "scene-a": (500000.0, 5000000.0),
    "scene-b": (500640.0, 5000000.0),
    "scene-c": (505000.0, 5000000.0),
    "scene-d": (510000.0, 5000000.0),
    "scene-e": (515000.0, 5000000.0),
}
CLASSES = {
    "encoding": "index",
    "classes": [{"name": f"class{v}", "value": v} for v in (0, 1, 2)],
}


def _catalog(root: Path, label_type: str | None = None) -> tuple[Path, dict]:
    items, arrays = [], {}
    for seed, (name, origin) in enumerate(ORIGINS.items()):
        item, arrays[name] = write_scene(root, name, origin, seed=seed)
        if label_type:
            item.properties["label:type"] = label_type
        items.append(item)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return save_catalog(root, items), arrays


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> tuple[Path, dict]:
    return _catalog(tmp_path_factory.mktemp("stac"))


def _build(catalog: Path, out: Path, *extra: str) -> int:
    return build_command.main([
        "--stac", str(catalog), "--assets", ",".join(BANDS), "--classes",
        str(catalog.parent / "classes.yaml"), "--out", str(out), "--tile", "64",
        "--val", "0.25", "--test", "0.25", *extra,
    ])  # fmt: skip


def test_items_build_with_a_label_asset_and_the_manifest_records_them(catalog, tmp_path):
    path, arrays = catalog
    assert _build(path, tmp_path / "out", "--label-asset", "label") == 0
    manifest = load_manifest(tmp_path / "out")
    raw = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert [band["name"] for band in raw["bands"]] == BANDS
    assert raw["split"]["joined"] == [["scene-a", "scene-b"]]  # overlapping footprints
    record = raw["stac"]
    assert record["source"] == str(path) and record["band_names"] == BANDS
    assert [item["id"] for item in record["items"]] == list(ORIGINS)
    first = record["items"][0]
    assert first["datetime"] == "2024-06-01T10:00:00Z"
    assert first["assets"] == dict(zip(BANDS, ["B04", "B03", "B02", "B08", "B11"]))
    assert first["footprint"]["type"] == "Polygon" and first["grid"]["crs"] == CRS
    assert first["grid"]["transform"] == [10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0]
    samples = [s for split in raw["splits"] for s in read_split(manifest, split)]
    assert len(samples) == 5 * 4  # 128x128 items in 64-pixel tiles
    for sample in samples:
        item = sample.key.split("/")[0]
        meta = sample.meta
        assert meta["image"].endswith(f"#{item}")  # the item's href and id, not a temporary
        window = meta["window"]
        rows = slice(window["row"], window["row"] + window["height"])
        cols = slice(window["col"], window["col"] + window["width"])
        image = sample.image.permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(image[..., 0], arrays[item]["B04"][rows, cols])
        np.testing.assert_array_equal(sample.mask.numpy(), arrays[item]["label"][rows, cols])


def test_label_extension_raster_reads_the_labels_asset(tmp_path):
    path, _ = _catalog(tmp_path / "cat", label_type="raster")
    assert _build(path, tmp_path / "ext") == 0
    assert _build(path, tmp_path / "asset", "--label-asset", "label") == 0
    ext = json.loads((tmp_path / "ext" / "dataset.json").read_text())
    asset = json.loads((tmp_path / "asset" / "dataset.json").read_text())
    assert ext["class_pixels"] == asset["class_pixels"]
    assert sum(sum(v) for v in ext["class_pixels"].values()) == 5 * 128 * 128


def _polygons(path: Path, origin: tuple[float, float]) -> Path:
    """Two squares of class 2 and 1 over the first 32 columns and rows of a scene."""
    left, top = origin
    squares = [(2, left, top), (1, left + 320, top - 320)]
    features = [
        {"type": "Feature", "properties": {"class": value}, "geometry": {"type": "Polygon",
         "coordinates": [[[x, y], [x + 320, y], [x + 320, y - 320], [x, y - 320], [x, y]]]}}
        for value, x, y in squares
    ]  # fmt: skip
    path.write_text(json.dumps({
        "type": "FeatureCollection", "features": features,
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
    }))  # fmt: skip
    return path


def test_a_vector_file_labels_every_item(catalog, tmp_path):
    path, _ = catalog
    vector = _polygons(tmp_path / "labels.geojson", ORIGINS["scene-c"])
    extra = ["--vector", str(vector), "--attribute", "class", "--background", "0"]
    assert _build(path, tmp_path / "out", *extra) == 0
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    totals = np.sum([counts for counts in manifest["class_pixels"].values()], axis=0)
    assert totals.tolist() == [5 * 128 * 128 - 2 * 32 * 32, 32 * 32, 32 * 32]


def test_label_extension_vector_rasterises_each_items_labels(tmp_path):
    path, _ = _catalog(tmp_path / "cat")
    for name, origin in ORIGINS.items():
        item_file = path.parent / name / f"{name}.json"
        item = json.loads(item_file.read_text())
        _polygons(item_file.with_name("labels.geojson"), origin)
        item["properties"] |= {"label:type": "vector", "label:properties": ["class"]}
        item["assets"]["label"]["roles"] = ["metadata"]
        item["assets"]["labels"] = {"href": "./labels.geojson", "roles": ["labels"]}
        item_file.write_text(json.dumps(item))
    assert _build(path, tmp_path / "out", "--background", "0") == 0
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    totals = np.sum([counts for counts in manifest["class_pixels"].values()], axis=0)
    assert totals.tolist() == [5 * (128 * 128 - 2 * 32 * 32), 5 * 32 * 32, 5 * 32 * 32]


def test_errors_are_one_line_naming_the_item(catalog, tmp_path, capsys):
    path, _ = catalog
    assert _build(path, tmp_path / "a", "--label-asset", "mask") == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "item 'scene-a': label asset 'mask' missing" in error
    assert not (tmp_path / "a").exists()
    # no label asset, no --vector and no label extension
    assert _build(path, tmp_path / "b") == 2
    assert "item 'scene-a': no label asset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_command.main(["--stac", str(path), "--classes", "c.yaml", "--out", "x"])
    assert "need --assets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_command.main(["--stac", str(path), "--images", "*.tif", "--assets", "red",
                            "--classes", "c.yaml", "--out", "x"])  # fmt: skip
    assert "--images does not go with --stac" in capsys.readouterr().err


def test_large_footprints_are_recorded_as_their_hull():
    from engine.data.build.stac_pairs import FOOTPRINT_POINTS, _footprint

    angles = np.linspace(0, 2 * np.pi, FOOTPRINT_POINTS + 50)
    ring = [[14 + 0.1 * np.cos(a) + 0.01 * (i % 2), 45 + 0.1 * np.sin(a)]
            for i, a in enumerate(angles)]  # fmt: skip
    ring.append(ring[0])
    square = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    assert _footprint(square) == (square, False)
    hull, is_hull = _footprint({"type": "Polygon", "coordinates": [ring]})
    assert is_hull and len(hull["coordinates"][0]) < len(ring)


def test_items_sharing_a_file_name_are_refused(catalog, tmp_path):
    from engine.data.sources.stac import StacError, load_items
    from engine.data.sources.stac_reader import item_rasters

    path, _ = catalog
    first, second = load_items(path)[:2]
    first.id, second.id = "tile/1", "tile_1"
    with pytest.raises(StacError, match="items 'tile/1' and 'tile_1' would share the file name"):
        item_rasters([first, second], ["red"], tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any file is written
