"""Vector labels: polygons in one CRS rasterised onto images in another, as rasterio would."""

import json
import pickle

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
from rasterio.transform import from_origin

from engine.data.sources.classes import ClassesError, classes_from_dict
from engine.data.sources.imageio import TRANSPARENT
from engine.data.sources.pairing import PairingError, pairs_from_vector
from engine.data.sources.paths import multispectral_dataset_dir
from engine.data.sources.vector_labels import VectorLabelError, VectorLabels
from engine.errors import UserError

UTM = "EPSG:32633"
PIXEL = 10.0
LEFT, TOP = 500_000.0, 5_000_000.0  # 45.1° N, 15° E: inside zone 33
HEIGHT, WIDTH = 40, 56


def utm(col, row):
    """A point given in pixel units of the test image, in UTM metres."""
    return LEFT + col * PIXEL, TOP - row * PIXEL


def write_image(path, crs=UTM, height=HEIGHT, width=WIDTH):
    profile = dict(driver="GTiff", height=height, width=width, count=2, dtype="uint16")
    profile.update(transform=from_origin(LEFT, TOP, PIXEL, PIXEL))
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.ones((2, height, width), np.uint16))
    return path


def to_lonlat(geometry):
    """A UTM shapely geometry as a WGS84 shapely geometry."""
    mapping = rasterio.warp.transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(geometry))
    return shapely.geometry.shape(mapping)


def scene_shapes():
    """(shape in EPSG:4326, class id, class name), in file order; later ones overlap earlier."""
    box = shapely.box(*utm(10, 15), *utm(20, 5))  # pixel-aligned: rows 5..14, cols 10..19
    slanted = shapely.Polygon([utm(24.3, 3.2), utm(50.7, 9.9), utm(37.1, 30.6)])
    holed = shapely.Polygon(
        [utm(2.5, 20.5), utm(20.5, 20.5), utm(20.5, 36.5), utm(2.5, 36.5)],
        [[utm(8.2, 25.1), utm(14.8, 25.1), utm(14.8, 31.9), utm(8.2, 31.9)]],
    )
    over = shapely.Polygon([utm(30.4, 20.2), utm(60.0, 22.7), utm(45.5, 45.0)])  # crosses edges
    multi = shapely.MultiPolygon(
        [shapely.box(*utm(0.6, 3.4), *utm(4.4, 0.6)), shapely.box(*utm(50.2, 39.0), *utm(55, 33))]
    )
    far = shapely.box(*utm(500, 500), *utm(520, 480))  # far outside the image
    shapes = [(box, 1), (slanted, 2), (holed, 3), (over, 1), (multi, 2), (far, 3)]
    names = {1: "forest", 2: "water", 3: "urban"}
    return [(to_lonlat(g), value, names[value]) for g, value in shapes]


def write_vector(path, shapes, crs="EPSG:4326", driver="GPKG", geometry_type="Unknown"):
    """Write (geometry, class id, class name) rows with fields ``cls`` and ``name``."""
    geometry = np.array([shapely.to_wkb(g) for g, _, _ in shapes], dtype=object)
    fields = [np.array([v for _, v, _ in shapes], np.int64)]
    fields.append(np.array([n for _, _, n in shapes], dtype=object))
    pyogrio.raw.write(
        path, geometry, fields, ["cls", "name"], driver=driver,
        geometry_type=geometry_type, crs=crs,
    )  # fmt: skip
    return path


def expected(shapes, fill, all_touched, code=lambda value, name: value):
    """The independent computation: reproject each shape to the image CRS and burn in order."""
    burn = [
        (rasterio.warp.transform_geom("EPSG:4326", UTM, shapely.geometry.mapping(g)), code(v, n))
        for g, v, n in shapes
    ]
    return rasterio.features.rasterize(
        burn, out_shape=(HEIGHT, WIDTH), transform=from_origin(LEFT, TOP, PIXEL, PIXEL),
        fill=fill, all_touched=all_touched, dtype="int32",
    )  # fmt: skip


TEXT_CLASSES = {
    "encoding": "text",
    "classes": [
        {"name": "Land", "value": "land"},
        {"name": "Water", "value": "water"},
        {"name": "Trees", "value": "forest"},
        {"name": "Built", "value": "urban"},
    ],
}


@pytest.mark.parametrize("all_touched", [False, True])
def test_integer_polygons_in_another_crs_equal_rasterio(tmp_path, all_touched):
    image = write_image(tmp_path / "scene.tif")
    shapes = scene_shapes()
    labels = VectorLabels(write_vector(tmp_path / "labels.gpkg", shapes), "cls", 0, all_touched)
    values = labels.values_for(image)
    assert values.shape == (HEIGHT, WIDTH) and values.dtype == np.int32
    want = expected(shapes, 0, all_touched)
    np.testing.assert_array_equal(values, want)
    assert set(np.unique(values)) == {0, 1, 2, 3}
    # The chain lands where it should, independently of rasterio: the pixel-aligned box.
    if not all_touched:
        assert (values[5:15, 10:20] == 1).all() and (values[4, 10:20] != 1).all()
        assert values[28, 11] == 0  # inside the hole
    # The later feature wins where two overlap: the multipolygon over the crossing triangle.
    assert values[36, 50] == 2 and expected(shapes[:4], 0, all_touched)[36, 50] == 1
    assert labels.attribute_values() == [1, 2, 3]
    # The builder hands it to worker processes.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(labels)).values_for(image), want)


def test_all_touched_burns_more_pixels(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    path = write_vector(tmp_path / "labels.gpkg", scene_shapes())
    centres = VectorLabels(path, "cls", 0, all_touched=False).values_for(image)
    touched = VectorLabels(path, "cls", 0, all_touched=True).values_for(image)
    assert (touched != 0).sum() > (centres != 0).sum()


def test_text_values_background_ignore_or_named_class(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    shapes = scene_shapes()
    path = write_vector(tmp_path / "labels.gpkg", shapes)
    classes = classes_from_dict(TEXT_CLASSES, "classes.yaml")
    code = classes.text_code
    assert [code(t) for t in ("land", "water", "forest", "urban", "rock")] == [0, 1, 2, 3, None]
    ignore = VectorLabels(path, "name", None, classes=classes).values_for(image)
    np.testing.assert_array_equal(
        ignore, expected(shapes, TRANSPARENT, False, lambda v, name: code(name))
    )
    assert (ignore == TRANSPARENT).any()
    for background in ("land", "Land"):  # an attribute value, or a class name
        land = VectorLabels(path, "name", background, classes=classes).values_for(image)
        np.testing.assert_array_equal(land, np.where(ignore == TRANSPARENT, code("land"), ignore))
    assert VectorLabels(path, "name", classes=classes).attribute_values() == [
        "forest", "urban", "water",
    ]  # fmt: skip
    # The codes map to classes through the lookup, as mask values do.
    lookup = classes.lookup
    assert {classes.names[lookup[v]] for v in np.unique(land)} == {
        "Land",
        "Water",
        "Trees",
        "Built",
    }
    assert classes.manifest_classes()[2]["value"] == "forest"


def test_geojson_with_text_values(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    shapes = scene_shapes()[:4]
    features = [
        {"type": "Feature", "properties": {"kind": name},
         "geometry": shapely.geometry.mapping(g)}
        for g, _, name in shapes
    ]  # fmt: skip
    path = tmp_path / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    classes = classes_from_dict(TEXT_CLASSES, "classes.yaml")
    values = VectorLabels(path, "kind", "land", True, classes=classes).values_for(image)
    want = expected(shapes, classes.text_code("land"), True, lambda v, n: classes.text_code(n))
    np.testing.assert_array_equal(values, want)


def test_shapefile_and_text_integers(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    shapes = [(g, v, str(v)) for g, v, _ in scene_shapes()]
    path = write_vector(
        tmp_path / "labels.shp", shapes, driver="ESRI Shapefile", geometry_type="Polygon"
    )
    values = VectorLabels(path, "name", "ignore").values_for(image)  # "1", "2" count as ints
    np.testing.assert_array_equal(values, expected(shapes, TRANSPARENT, False))


def test_real_sentinel2_grid_in_wgs84(tmp_path):
    image = multispectral_dataset_dir() / "sen1floods11/S2/Spain_7370579_S2Hand.tif"
    assert image.is_file(), f"multispectral dataset not found: {image}"
    with rasterio.open(image) as source:
        crs, transform, shape = source.crs, source.transform, source.shape
        left, bottom, right, top = source.bounds
    # A UTM zone 30 polygon over the chip's middle, written in that CRS.
    lons, lats = [left, right, (left + right) / 2], [top, top, bottom]
    xs, ys = rasterio.warp.transform(crs, "EPSG:32630", lons, lats)
    middle = shapely.Polygon(zip(xs, ys)).buffer(-200.0)
    path = tmp_path / "labels.gpkg"
    write_vector(path, [(middle, 1, "water")], crs="EPSG:32630", geometry_type="Polygon")
    values = VectorLabels(path, "cls", 0, True).values_for(image)
    geometry = rasterio.warp.transform_geom("EPSG:32630", crs, shapely.geometry.mapping(middle))
    want = rasterio.features.rasterize(
        [(geometry, 1)], out_shape=shape, transform=transform, all_touched=True, dtype="int32"
    )
    np.testing.assert_array_equal(values, want)
    assert 0.15 < values.mean() < 0.5


def test_only_features_meeting_the_image_are_read(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    lonlat = scene_shapes()
    far_line = shapely.LineString([utm(600, 600), utm(700, 650)])
    near_line = shapely.LineString([utm(3, 3), utm(30, 20)])
    path = write_vector(tmp_path / "mixed.gpkg", lonlat + [(to_lonlat(far_line), 1, "forest")])
    VectorLabels(path, "cls", 0).values_for(image)  # the far line is filtered out by bbox
    path = write_vector(tmp_path / "near.gpkg", lonlat + [(to_lonlat(near_line), 1, "forest")])
    with pytest.raises(VectorLabelError, match=r"near\.gpkg: features of type LineString "):
        VectorLabels(path, "cls", 0).values_for(image)


def test_errors_name_the_file(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    shapes = scene_shapes()
    good = write_vector(tmp_path / "labels.gpkg", shapes)
    with pytest.raises(VectorLabelError, match=r"labels\.gpkg: no attribute 'class'; its fields "
                       r"are 'cls', 'name'"):  # fmt: skip
        VectorLabels(good, "class")
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        nocrs = write_vector(tmp_path / "nocrs.gpkg", shapes, crs=None)
    with pytest.raises(VectorLabelError, match=r"nocrs\.gpkg: the vector file has no CRS"):
        VectorLabels(nocrs, "cls")
    with pytest.raises(VectorLabelError, match=r"plain\.tif: the image has no CRS"):
        VectorLabels(good, "cls").values_for(write_image(tmp_path / "plain.tif", crs=None))
    empty = write_vector(tmp_path / "empty.gpkg", [], geometry_type="Polygon")
    with pytest.raises(VectorLabelError, match=r"empty\.gpkg: the vector file has no features"):
        VectorLabels(empty, "cls")
    points = [(shapely.Point(15.0, 45.1), 1, "forest")]
    points = write_vector(tmp_path / "points.gpkg", points, geometry_type="Point")
    with pytest.raises(VectorLabelError, match=r"points\.gpkg: features of type Point cannot"):
        VectorLabels(points, "cls")
    with pytest.raises(VectorLabelError, match=r"missing\.gpkg: vector label file not found"):
        VectorLabels(tmp_path / "missing.gpkg", "cls")
    (tmp_path / "junk.gpkg").write_text("not a vector file")
    with pytest.raises(VectorLabelError, match=r"junk\.gpkg: cannot read as a vector file"):
        VectorLabels(tmp_path / "junk.gpkg", "cls")
    with pytest.raises(VectorLabelError, match=r"labels\.gpkg: attribute 'name' holds 'forest', "
                       r"not an integer; text values need a classes file"):  # fmt: skip
        VectorLabels(good, "name").values_for(image)
    classes = classes_from_dict(TEXT_CLASSES, "c.yaml")
    with pytest.raises(VectorLabelError, match=r"background 'rock' is neither a value nor a class"):
        VectorLabels(good, "name", "rock", classes=classes)
    two = classes_from_dict({**TEXT_CLASSES, "classes": TEXT_CLASSES["classes"][:2]}, "two.yaml")
    with pytest.raises(VectorLabelError, match=r"labels\.gpkg: name value\(s\) not in two\.yaml: "
                       r"'forest' \(2 features\), 'urban' \(1 features\)\. Add them"):  # fmt: skip
        VectorLabels(good, "name", classes=two).values_for(image)
    lenient = VectorLabels(good, "name", "land", classes=two, unknown="ignore").values_for(image)
    assert set(np.unique(lenient)) == {TRANSPARENT, 0, 1}
    assert issubclass(VectorLabelError, UserError)


def test_null_attribute_is_an_error(tmp_path):
    image = write_image(tmp_path / "scene.tif")
    shapes = scene_shapes()[:2]
    features = [
        {"type": "Feature", "properties": {"kind": kind}, "geometry": shapely.geometry.mapping(g)}
        for (g, _, _), kind in zip(shapes, ["water", None])
    ]
    path = tmp_path / "nulls.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    classes = classes_from_dict(TEXT_CLASSES, "classes.yaml")
    with pytest.raises(VectorLabelError, match=r"nulls\.geojson: 1 feature\(s\) have no 'kind' "
                       r"value \(feature ids 1\)"):  # fmt: skip
        VectorLabels(path, "kind", classes=classes).values_for(image)


def test_text_classes_file_errors():
    with pytest.raises(ClassesError, match=r"c\.yaml: value 'water' is listed twice"):
        classes_from_dict(
            {"encoding": "text", "classes": [
                {"name": "A", "value": "water"}, {"name": "B", "value": ["x", "water"]},
            ]}, "c.yaml",
        )  # fmt: skip
    with pytest.raises(ClassesError, match=r"bad value None for encoding 'text'"):
        classes_from_dict({"encoding": "text", "classes": [{"name": "A", "value": None}]}, "c")


def test_pairs_from_vector(tmp_path):
    for site, stem in (("north", "a"), ("north", "b"), ("south", "c")):
        (tmp_path / site / "images").mkdir(parents=True, exist_ok=True)
        write_image(tmp_path / site / "images" / f"{stem}.tif")
    vector = write_vector(tmp_path / "labels.gpkg", scene_shapes())
    pairs = pairs_from_vector(str(tmp_path / "*/images/*.tif"), vector)
    assert [(p.key, p.group, p.mask) for p in pairs] == [
        ("north/a", "north", vector), ("north/b", "north", vector), ("south/c", "south", vector),
    ]  # fmt: skip
    labels = VectorLabels(pairs[0].mask, "cls", 0)
    np.testing.assert_array_equal(labels.values_for(pairs[2].image), expected(scene_shapes(), 0, 0))
    keyed = pairs_from_vector(str(tmp_path / "*/images/*.tif"), vector, r"^(\w)", r"/(\w)$")
    assert [(p.key, p.group) for p in keyed] == [("a", "a"), ("b", "b"), ("c", "c")]
    with pytest.raises(PairingError, match=r"--vector '.*nope\.gpkg': vector label file not found"):
        pairs_from_vector(str(tmp_path / "*/images/*.tif"), tmp_path / "nope.gpkg")


def test_build_shards_from_a_vector_file_matches_rasterio(tmp_path):
    """The launch script: images + a GeoPackage in EPSG:4326 → masks equal to rasterio's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from engine.data.shards.loader import read_split
    from engine.data.shards.manifest import load_manifest

    root = Path(__file__).resolve().parents[1]
    for scene in ("a", "b", "c"):
        (tmp_path / "images" / scene).mkdir(parents=True)
        write_image(tmp_path / "images" / scene / "scene.tif")
    shapes = scene_shapes()
    vector = write_vector(tmp_path / "labels.gpkg", shapes)
    classes = {"encoding": "text", "classes": TEXT_CLASSES["classes"][1:]}
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(classes))

    def build(attribute, out):  # three scenes of one footprint are one group: train only
        command = [
            sys.executable, str(root / "launch/build_shards.py"),
            "--images", str(tmp_path / "images/*/scene.tif"), "--vector", str(vector),
            "--attribute", attribute, "--classes", str(tmp_path / "classes.yaml"),
            "--out", str(tmp_path / out), "--tile", "64", "--val", "0", "--test", "0",
        ]  # fmt: skip
        env = os.environ | {"PYTHONPATH": str(root)}
        return subprocess.run(command, capture_output=True, text=True, env=env)

    run = build("name", "shards")
    assert run.returncode == 0, run.stderr
    manifest = load_manifest(tmp_path / "shards")
    assert manifest.class_names == ["Water", "Trees", "Built"]
    index = {"water": 0, "forest": 1, "urban": 2}
    want = expected(shapes, 255, False, code=lambda value, name: index[name])
    samples = list(read_split(manifest, "train"))
    assert len(samples) == 3
    for sample in samples:
        np.testing.assert_array_equal(sample.mask[:HEIGHT, :WIDTH], want)
    wrong = build("nope", "other")
    assert wrong.returncode == 2 and "labels.gpkg" in wrong.stderr and "nope" in wrong.stderr
    assert not (tmp_path / "other").exists()
