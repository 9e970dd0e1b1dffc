"""Splits by ground footprint: overlapping georeferenced images share a split whatever their
folders, the manifest records the ground splits share, a flat folder of plain images warns,
and chips no larger than a tile never cross splits (generated GeoTIFFs and PNGs)."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from conftest import CLASSES, COLOURS, make_tiny_dataset
from PIL import Image
from rasterio.warp import transform_bounds

from engine.commands.build_shards import main as build_main
from engine.data.build.advice import fitting_tile, padding_share, padding_warnings
from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.footprints import read_footprints, shared_areas
from engine.data.build.splits import PairSplit, SplitBy, image_sizes, plan_splits
from engine.data.sources.classes import load_classes
from engine.data.sources.pairing import pair_by_glob

UTM = "EPSG:32633"
SIZE = 64  # pixels of 10 m
ORIGINS = {  # group folder → top-left corner in UTM 33N; a and b overlap by half an image
    "a": (500_000, 4_000_000),
    "b": (500_320, 4_000_000),
    "c": (510_000, 4_000_000),
    "d": (520_000, 4_000_000),
    "e": (530_000, 4_000_000),
    "f": (540_000, 4_000_000),
}


def write_geotiff(path: Path, crs: str, transform, size=(SIZE, SIZE), seed=0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=size[0], width=size[1], count=3, dtype="uint8")
    with rasterio.open(path, "w", crs=crs, transform=transform, **profile) as out:
        out.write(rng.integers(0, 256, (3, *size), dtype=np.uint8))


def write_mask(path: Path, size=(SIZE, SIZE), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    index = np.random.default_rng(seed).integers(0, 3, size)
    Image.fromarray(np.array(COLOURS, np.uint8)[index]).save(path)


def make_acquisitions(root: Path) -> Path:
    """Six UTM scenes in six folders (a and b overlap), and g: c's ground again, in WGS 84."""
    for seed, (group, (x, y)) in enumerate(ORIGINS.items()):
        write_geotiff(
            root / group / "images/scene.tif", UTM, Affine(10, 0, x, 0, -10, y), seed=seed
        )
        write_mask(root / group / "masks/scene.png", seed=seed)
    x, y = ORIGINS["c"]
    west, south, east, north = transform_bounds(UTM, "EPSG:4326", x, y - 640, x + 640, y)
    transform = Affine((east - west) / SIZE, 0, west, 0, -(north - south) / SIZE, north)
    write_geotiff(root / "g/images/scene.tif", "EPSG:4326", transform, seed=9)
    write_mask(root / "g/masks/scene.png", seed=9)
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return root


def build(root: Path, out: Path, images="*/images/*", masks="*/masks/*.png", **options) -> dict:
    pairs = pair_by_glob(str(root / images), str(root / masks), options.pop("group", None))
    settings = dict(tile=32, val=0.25, test=0.25, samples_per_shard=50) | options
    return build_shards(pairs, load_classes(root / "classes.yaml"), out, BuildOptions(**settings))


def split_of_each_pair(out: Path) -> dict[str, set[str]]:
    """Pair key → the splits its tiles are in, read from every tile's meta.json."""
    found: dict[str, set[str]] = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith("meta.json"):
                    meta = json.loads(tar.extractfile(member).read())
                    found.setdefault(meta["key"], set()).add(meta["split"])
    return found


@pytest.fixture(scope="module")
def acquisitions(tmp_path_factory) -> Path:
    return make_acquisitions(tmp_path_factory.mktemp("geo") / "data")


def test_overlapping_acquisitions_share_a_split_whatever_their_folders(acquisitions, tmp_path):
    pairs = pair_by_glob(str(acquisitions / "*/images/*"), str(acquisitions / "*/masks/*.png"))
    footprints = read_footprints(pairs)
    sizes = image_sizes(pairs)
    apart = set()
    for seed in range(8):
        plan, record = plan_splits(pairs, sizes, 32, SplitBy(), 0.25, 0.25, seed, footprints)
        split = {key.split("/")[0]: plan[key].split for key in plan}
        assert split["a"] == split["b"] and split["c"] == split["g"], seed
        apart |= {(x, y) for x in split for y in split if split[x] != split[y]}
        assert record["joined"] == [["a", "b"], ["c", "g"]]
        assert sum(record["units"].values()) == 5  # 7 folders, 5 places
        assert set(record["shared_area"].values()) == {0.0}
    assert ("c", "d") in apart and ("a", "e") in apart  # places that do not overlap may differ
    manifest = build(acquisitions, tmp_path / "out", seed=3)
    footprints_record = manifest["split"]["footprints"]
    assert footprints_record.pop("resolution_m") == pytest.approx(10.0, rel=1e-3)
    assert footprints_record == {"crs": UTM, "area_unit": "metre²", "images": 7}
    assert manifest["split"]["shared_area"] == {
        "train/val": 0.0,
        "train/test": 0.0,
        "val/test": 0.0,
    }
    tiles = split_of_each_pair(tmp_path / "out")
    assert tiles["a/scene"] == tiles["b/scene"] and tiles["c/scene"] == tiles["g/scene"]
    assert all(len(splits) == 1 for splits in tiles.values())


def test_shared_area_measures_the_ground_two_splits_hold(acquisitions):
    """What the record would say of a split that put a and b apart: half an image of ground."""
    pairs = pair_by_glob(str(acquisitions / "*/images/*"), str(acquisitions / "*/masks/*.png"))
    footprints = read_footprints(pairs)
    assert footprints.crs_name() == UTM
    regions = {"train": [footprints.shapes["a/scene"]], "val": [footprints.shapes["b/scene"]]}
    assert shared_areas(regions, footprints) == {"train/val": pytest.approx(32 * 64 * 100)}
    # g (WGS 84) lands on c's ground once put in UTM: nearly the whole image is shared.
    regions = {"train": [footprints.shapes["c/scene"]], "test": [footprints.shapes["g/scene"]]}
    assert shared_areas(regions, footprints)["train/test"] == pytest.approx(640 * 640, rel=0.01)


def test_ground_resolution_in_metres_whatever_the_crs(acquisitions):
    """10 m UTM pixels, and the WGS 84 scene's degrees converted at its latitude (~36° N)."""
    pairs = pair_by_glob(str(acquisitions / "*/images/*"), str(acquisitions / "*/masks/*.png"))
    footprints = read_footprints(pairs)
    assert footprints.resolution_m() == pytest.approx(10.0, rel=1e-3)
    only_wgs84 = read_footprints([p for p in pairs if p.key.startswith("g/")])
    # the scene spans 640 m of UTM ground: its degree pixels measure 10 m within the sphere's
    # approximation and the UTM scale factor at 15° E (0.9996 at the central meridian)
    assert only_wgs84.resolution_m() == pytest.approx(10.0, rel=0.01)
    doubled = read_footprints([p for p in pairs if p.key.startswith("a/")])
    grid = doubled.grids["a/scene"]
    doubled.grids["a/scene"] = type(grid)(grid.crs, grid.transform * Affine.scale(2), 32, 32)
    assert doubled.resolution_m() == pytest.approx(20.0)


def test_blocks_keep_overlapping_images_whole(acquisitions, tmp_path):
    manifest = build(acquisitions, tmp_path / "out", split_by="blocks:1", seed=1)
    record = manifest["split"]
    assert record["joined"] == [["a/scene", "b/scene"], ["c/scene", "g/scene"]]
    assert sum(record["units"].values()) == 2 + 3 * 4  # two pairs whole, three images in 2x2
    assert set(record["shared_area"].values()) == {0.0} and len(record["shared_area"]) == 3
    tiles = split_of_each_pair(tmp_path / "out")
    for key in ("a/scene", "b/scene", "c/scene", "g/scene"):
        assert len(tiles[key]) == 1, key
    assert tiles["a/scene"] == tiles["b/scene"] and tiles["c/scene"] == tiles["g/scene"]
    assert any(len(tiles[key]) > 1 for key in ("d/scene", "e/scene", "f/scene"))


def test_build_prints_the_ground_splits_share(acquisitions, tmp_path, capsys):
    code = build_main([
        "--images", str(acquisitions / "*/images/*"), "--masks", str(acquisitions / "*/masks/*"),
        "--classes", str(acquisitions / "classes.yaml"), "--out", str(tmp_path / "out"),
        "--tile", "32", "--val", "0.25", "--test", "0.25",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert (
        "ground shared by splits (7 georeferenced images, EPSG:32633, metre²): "
        "train/val 0, train/test 0, val/test 0"
    ) in printed


def flat_folder(root: Path, count: int) -> Path:
    for index in range(count):
        write_mask(root / "masks" / f"site{index % 3}_{index}.png", size=(40, 40), seed=index)
        image = np.random.default_rng(index).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"site{index % 3}_{index}.png")
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))
    return root


def test_flat_folder_of_plain_images_warns_once(tmp_path, capsys):
    root = flat_folder(tmp_path / "flat", 9)
    build(root, tmp_path / "out", images="images/*", masks="masks/*")
    printed = [line for line in capsys.readouterr().err.splitlines() if "own group" in line]
    assert printed == [
        "warning: 9 images without georeferencing lie in one folder and each is its own group, "
        "so images of one scene can land in train and test: set groups with --group REGEX on "
        "the names (first capture group = group, e.g. --group '^([^_]+)_'), one folder per "
        "scene, or a 'group' column in --pairs-csv"
    ]
    manifest = build(root, tmp_path / "grouped", images="images/*", masks="masks/*",
                     group="^(site\\d)_", val=0.34, test=0.34)  # fmt: skip
    assert "own group" not in capsys.readouterr().err
    assert "footprints" not in manifest["split"] and "shared_area" not in manifest["split"]
    assert sorted(g for s in manifest["splits"].values() for g in s["groups"]) == [
        "site0", "site1", "site2",
    ]  # fmt: skip
    build(flat_folder(tmp_path / "few", 8), tmp_path / "few-out", images="images/*",
          masks="masks/*")  # fmt: skip
    assert "own group" not in capsys.readouterr().err


def test_chips_never_cross_splits_and_the_advice_pads_little(tmp_path, capsys):
    root = make_tiny_dataset(tmp_path / "chips", groups=2, per_group=5, size=(300, 300))
    sizes = [(300, 300)] * 10
    assert padding_share(sizes, 288) == pytest.approx(1 - 300**2 / (4 * 288**2))  # not 0 %
    advised = fitting_tile(sizes)
    assert advised == 320 and padding_share(sizes, advised) <= 0.25
    assert padding_warnings(sizes, 288) == [
        "tiles are 73 % padding or repeated edge pixels (median image 300x300 px, --tile 288); "
        "--tile 320 would give 12 %"
    ]
    assert fitting_tile([(65, 65)] * 3) == 65  # small chips: the chip side, not 96 (54 %)
    # No tile pads under a quarter for these two sizes: the warning proposes none.
    assert padding_warnings([(100, 100), (300, 300)], 1024) == [
        "tiles are 95 % padding or repeated edge pixels (median image 200x200 px, --tile 1024)"
    ]
    for tile in (288, advised):
        out = tmp_path / f"tile{tile}"
        build(root, out, images="*/images/*.png", masks="*/masks/*.png", tile=tile,
              split_by="blocks:1", val=0.2, test=0.2)  # fmt: skip
        tiles = split_of_each_pair(out)
        assert len(tiles) == 10 and all(len(splits) == 1 for splits in tiles.values()), tile
        assert {s for splits in tiles.values() for s in splits} == {"train", "val", "test"}
    manifest = json.loads((tmp_path / "tile320" / "dataset.json").read_text())
    assert sum(split["num_samples"] for split in manifest["splits"].values()) == 10


def test_block_grid_gives_the_remainder_to_the_last_block():
    split = PairSplit("", 1, {(0, 0): "train", (0, 1): "val"}, (1, 2))
    assert [split.at(0, col, 288) for col in (0, 288, 576)] == ["train", "val", "val"]
