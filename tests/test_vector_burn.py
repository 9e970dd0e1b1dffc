"""Vector labels for the common case: footprints without attributes (``--burn CLASS``), features
that touch no image, and the real Sentinel-2 chip built from its own polygonised hand label."""

from __future__ import annotations

import numpy as np
import pyogrio.raw
import pytest
import rasterio
import rasterio.features
import rasterio.warp
import shapely
import shapely.geometry
import yaml
from rasterio.transform import from_origin

from engine.commands.build_shards import main as build_main
from engine.data.shards.loader import read_split
from engine.data.shards.manifest import load_manifest
from engine.data.sources.classes import classes_from_dict
from engine.data.sources.imageio import TRANSPARENT
from engine.data.sources.paths import multispectral_dataset_dir
from engine.data.sources.vector_labels import (
    VectorLabelError,
    VectorLabels,
    features_off_images,
    image_grid,
)

UTM = "EPSG:32633"
PIXEL = 0.5  # metres: an aerial tile
HEIGHT = WIDTH = 48
LEFTS = (500_000.0, 500_024.0)  # two tiles side by side, 48 px = 24 m wide each
TOP = 5_000_000.0
CLASSES = {"encoding": "index", "classes": [{"name": "land", "value": 0},
                                             {"name": "building", "value": 7}]}  # fmt: skip


def write_tile(path, left):
    profile = dict(driver="GTiff", height=HEIGHT, width=WIDTH, count=3, dtype="uint8", crs=UTM)
    with rasterio.open(path, "w", transform=from_origin(left, TOP, PIXEL, PIXEL), **profile) as out:
        out.write(np.full((3, HEIGHT, WIDTH), 90, np.uint8))
    return path


def footprints():
    """Building footprints in UTM metres; the last two lie on no tile (ids 4 and 5)."""
    house = shapely.box(500_003.2, 4_999_990.1, 500_009.7, 4_999_996.3)
    slanted = shapely.Polygon([(500_012, 4_999_980), (500_020, 4_999_984),
                               (500_017, 4_999_992), (500_009, 4_999_988)])  # fmt: skip
    straddling = shapely.box(500_021.3, 4_999_985.2, 500_028.6, 4_999_995.9)  # both tiles
    shed = shapely.box(500_030.25, 4_999_978.25, 500_031.75, 4_999_979.0)
    far = [
        shapely.box(500_100, 4_999_900, 500_110, 4_999_910),
        shapely.box(499_000, 5_000_500, 499_004, 5_000_504),
    ]
    return [house, slanted, straddling, shed, *far]


def write_footprints(path, shapes, crs="EPSG:4326"):
    """A GeoPackage of polygons and no attribute at all, in ``crs`` (reprojected from UTM)."""
    moved = [shapely.geometry.shape(rasterio.warp.transform_geom(UTM, crs, g.__geo_interface__))
             for g in shapes]  # fmt: skip
    wkb = np.array([shapely.to_wkb(g) for g in moved], dtype=object)
    pyogrio.raw.write(path, wkb, [], [], driver="GPKG", geometry_type="Polygon", crs=crs)
    assert pyogrio.read_info(path)["fields"].size == 0
    return path


def burnt(shapes, left, all_touched=False, crs="EPSG:4326"):
    """The independent expectation: rasterio rasterising the features on one tile's grid."""
    moved = [rasterio.warp.transform_geom(UTM, crs, g.__geo_interface__) for g in shapes]
    back = [rasterio.warp.transform_geom(crs, UTM, g) for g in moved]
    return rasterio.features.rasterize(
        [(g, 7) for g in back], out_shape=(HEIGHT, WIDTH), all_touched=all_touched,
        transform=from_origin(left, TOP, PIXEL, PIXEL), fill=0, dtype="int32",
    )  # fmt: skip


@pytest.fixture
def scene(tmp_path):
    for number, left in enumerate(LEFTS):
        write_tile(tmp_path / f"tile_{number}.tif", left)
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return tmp_path, write_footprints(tmp_path / "buildings.gpkg", footprints())


@pytest.mark.parametrize("all_touched", [False, True])
def test_burn_by_class_name_or_value_equals_rasterio(scene, all_touched):
    folder, vector = scene
    classes = classes_from_dict(CLASSES, "classes.yaml")
    for burn in ("building", 7, "7"):
        labels = VectorLabels(vector, None, "land", all_touched, burn=burn, classes=classes)
        for number, left in enumerate(LEFTS):
            values = labels.values_for(folder / f"tile_{number}.tif")
            np.testing.assert_array_equal(values, burnt(footprints(), left, all_touched))
    assert set(np.unique(values)) == {0, 7} and labels.attribute_values() == [7]
    # without a classes file an integer burns as itself
    bare = VectorLabels(vector, burn=3, background=0, all_touched=all_touched)
    want = burnt(footprints(), LEFTS[0], all_touched)
    np.testing.assert_array_equal(bare.values_for(folder / "tile_0.tif"), np.where(want, 3, 0))


def test_burn_errors_name_the_file_and_the_classes(scene):
    _, vector = scene
    classes = classes_from_dict(CLASSES, "classes.yaml")
    named = r"buildings\.gpkg: burn 'house' is neither a value nor a class name of classes\.yaml"
    with pytest.raises(VectorLabelError, match=named + r" \(classes: land, building\)$"):
        VectorLabels(vector, burn="house", classes=classes)
    with pytest.raises(VectorLabelError, match=r"buildings\.gpkg: burn 'house' must be an integer"):
        VectorLabels(vector, burn="house")
    with pytest.raises(VectorLabelError, match=r"buildings\.gpkg: no attribute 'cls'; its fields "
                       r"are none"):  # fmt: skip
        VectorLabels(vector, "cls")
    with pytest.raises(ValueError, match="exactly one of attribute and burn"):
        VectorLabels(vector, "cls", burn=7)


def test_features_off_every_image_are_found_in_another_crs(scene):
    folder, _ = scene
    vector = write_footprints(folder / "webmercator.gpkg", footprints(), crs="EPSG:3857")
    labels = VectorLabels(vector, burn=1)
    grids = [image_grid(folder / f"tile_{n}.tif") for n in range(2)]
    assert features_off_images(labels, grids) == ([5, 6], 6)  # GeoPackage fids start at 1
    assert features_off_images(labels, grids[:1]) == ([4, 5, 6], 6)  # the shed is on tile 1


def build(folder, vector, out, *extra):
    argv = ["--images", str(folder / "tile_*.tif"), "--vector", str(vector), "--classes",
            str(folder / "classes.yaml"), "--out", str(folder / out), "--tile", "48",
            "--val", "0", "--test", "0", "--workers", "1", *extra]  # fmt: skip
    return build_main(argv)


def test_build_with_burn_reports_features_off_the_images(scene, capsys):
    folder, vector = scene
    assert build(folder, vector, "shards", "--burn", "building", "--background", "land") == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "touch no image" in line]
    assert lines == [f"warning: {vector}: 2 of 6 features touch no image and label nothing "
                     "(feature ids 5, 6)"]  # fmt: skip
    manifest = load_manifest(folder / "shards")
    assert manifest.class_names == ["land", "building"]
    samples = {sample.key: sample.mask.numpy() for sample in read_split(manifest, "train")}
    assert len(samples) == 2
    for number, left in enumerate(LEFTS):
        (mask,) = [m for key, m in samples.items() if key.startswith(f"tile_{number}")]
        np.testing.assert_array_equal(mask, (burnt(footprints(), left) == 7).astype(np.uint8))
    # every feature on an image: no line
    inside = write_footprints(folder / "inside.gpkg", footprints()[:4])
    assert build(folder, inside, "inside", "--burn", "7", "--background", "0") == 0
    assert "touch no image" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], "exactly one of --attribute FIELD and --burn CLASS"),
        (["--burn", "building", "--attribute", "cls"], "exactly one of --attribute"),
    ],
)
def test_vector_needs_exactly_one_of_attribute_and_burn(scene, capsys, extra, expected):
    folder, vector = scene
    with pytest.raises(SystemExit) as stop:
        build(folder, vector, "bad", *extra)
    assert stop.value.code == 2 and expected in capsys.readouterr().err
    assert build(folder, vector, "bad", "--burn", "house") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {vector}: burn 'house' is neither") and "\n" not in err
    assert not (folder / "bad").exists()


S2 = "sen1floods11/S2/Spain_7370579_S2Hand.tif"
LABEL = "sen1floods11/Labels/Spain_7370579_LabelHand.tif"
S2_CLASSES = {"encoding": "index", "classes": [
    {"name": "land", "value": 0}, {"name": "water", "value": 1},
    {"name": "nodata", "value": -1, "ignore": True}]}  # fmt: skip
#: Pixels whose class may differ between the raster label and its polygons burnt back: at most
#: this share of the chip, and only pixels on a class edge (a 4-neighbour of another value).
EDGE_SHARE = 0.001


def polygonise_label(label, path):
    """The hand label as polygons with an integer ``cls`` (its no-data, -1, left out)."""
    with rasterio.open(label) as source:
        values, transform, crs = source.read(1), source.transform, source.crs
    found = rasterio.features.shapes(values, mask=values != -1, transform=transform)
    geometries, classes = zip(*((shapely.geometry.shape(g), int(v)) for g, v in found))
    wkb = np.array([shapely.to_wkb(g) for g in geometries], dtype=object)
    pyogrio.raw.write(path, wkb, [np.array(classes, np.int32)], ["cls"], driver="GPKG",
                      geometry_type="Polygon", crs=crs.to_wkt())  # fmt: skip
    return values, len(geometries)


def test_real_sentinel2_chip_built_from_its_polygonised_label(tmp_path, capsys):
    """Acceptance: the S2 chip built with --vector equals the build from its raster label."""
    root = multispectral_dataset_dir()
    assert (root / S2).is_file(), f"{root / S2}: the multispectral sample data is missing"
    raster_label, count = polygonise_label(root / LABEL, tmp_path / "hand.gpkg")
    assert count > 10
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump(S2_CLASSES))
    common = ["--images", str(root / S2), "--classes", str(tmp_path / "classes.yaml"),
              "--image-key", "(.*)_S2Hand", "--split-by", "blocks:1", "--tile", "128",
              "--workers", "1"]  # fmt: skip
    by_mask = common + ["--masks", str(root / LABEL), "--mask-key", "(.*)_LabelHand"]
    assert build_main(by_mask + ["--out", str(tmp_path / "masks")]) == 0
    by_vector = common + ["--vector", str(tmp_path / "hand.gpkg"), "--attribute", "cls"]
    assert build_main(by_vector + ["--out", str(tmp_path / "vector")]) == 0
    assert "touch no image" not in capsys.readouterr().err

    def tiles(out):
        manifest = load_manifest(tmp_path / out)
        return {(split, s.key): s.mask.numpy() for split in ("train", "val", "test")
                for s in read_split(manifest, split)}  # fmt: skip

    from_masks, from_vector = tiles("masks"), tiles("vector")
    assert sorted(from_masks) == sorted(from_vector) and len(from_masks) == 16
    differ = sum(int((from_masks[k] != from_vector[k]).sum()) for k in from_masks)
    assert differ <= EDGE_SHARE * raster_label.size, differ
    # the differences, if any, lie on edges of the raster label
    padded = np.pad(raster_label, 1, mode="edge")
    edge = np.zeros(raster_label.shape, bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + 512, dx : dx + 512] != raster_label
    burnt_back = VectorLabels(tmp_path / "hand.gpkg", "cls", "ignore").values_for(root / S2)
    burnt_back = np.where(burnt_back == TRANSPARENT, -1, burnt_back)
    mismatch = (burnt_back != raster_label) & ~edge
    assert not mismatch.any() and (burnt_back != raster_label).sum() == differ
    assert {(m == 255).sum() for m in from_vector.values()} != {0}  # no data stays ignored
