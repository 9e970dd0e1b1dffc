"""Shard builder: pairing, tiling, splits, stats, reproducibility and bad input."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny as build
from conftest import make_tiny_dataset as make_dataset
from conftest import write_pair
from PIL import Image

from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.output import BuildError
from engine.data.build.splits import split_groups
from engine.data.build.tiling import tile_windows, train_window_start
from engine.data.shards.codecs import decode_image
from engine.data.shards.loader import Codecs, read_samples
from engine.data.shards.manifest import ManifestError, load_manifest
from engine.data.sources.classes import ClassesError, classes_from_dict, load_classes
from engine.data.sources.pairing import PairingError, pair_by_glob, pair_from_csv
from engine.data.sources.pictures import ImageReadError


def read_members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_pairing_by_key_in_dubai_layout_and_parallel_trees(tmp_path):
    make_dataset(tmp_path / "d", groups=2, per_group=2)
    pairs = pair_by_glob(str(tmp_path / "d/*/images/*.png"), str(tmp_path / "d/*/masks/*.png"))
    assert [(p.key, p.group) for p in pairs] == [
        ("Tile 0/part_0", "Tile 0"), ("Tile 0/part_1", "Tile 0"),
        ("Tile 1/part_0", "Tile 1"), ("Tile 1/part_1", "Tile 1"),
    ]  # fmt: skip
    for folder in ("imgs/a", "labels/a"):
        (tmp_path / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs/a/x.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "labels/a/x.png")
    (pair,) = pair_by_glob(str(tmp_path / "imgs/**/*.jpg"), str(tmp_path / "labels/**/*.png"))
    assert (pair.key, pair.group) == ("a/x", "a")
    (pair,) = pair_by_glob(
        str(tmp_path / "imgs/**/*.jpg"), str(tmp_path / "labels/**/*.png"), r"^(\w)/"
    )
    assert pair.group == "a"


def test_pairs_from_csv(tmp_path):
    make_dataset(tmp_path, groups=1, per_group=2)
    (tmp_path / "pairs.csv").write_text(
        "image,mask,group\nTile 0/images/part_0.png,Tile 0/masks/part_0.png,g1\n"
        "Tile 0/images/part_1.png,Tile 0/masks/part_1.png,g2\n"
    )
    pairs = pair_from_csv(tmp_path / "pairs.csv")
    assert [p.group for p in pairs] == ["g1", "g2"]
    (tmp_path / "bad.csv").write_text(
        "image,mask\nTile 0/images/nope.png,Tile 0/masks/part_0.png\n"
    )
    with pytest.raises(PairingError, match="nope.png"):
        pair_from_csv(tmp_path / "bad.csv")


def test_split_by_group_is_seeded_and_disjoint():
    groups = [f"g{i}" for i in range(10)]
    a = split_groups(groups, 0.2, 0.2, seed=3)
    assert a == split_groups(list(reversed(groups)), 0.2, 0.2, seed=3)
    assert a != split_groups(groups, 0.2, 0.2, seed=4)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 2}
    assert set(split_groups(["only"], 0.2, 0.2, 0).values()) == {"train"}


def test_tile_windows_cover_image_once():
    windows = tile_windows(70, 33, 32)
    covered = np.zeros((70, 33), int)
    for row, col, h, w in windows:
        assert h <= 32 and w <= 32
        covered[row : row + h, col : col + w] += 1
    assert (covered == 1).all() and len(windows) == 3 * 2


def test_build_writes_tiles_masks_stats_and_manifest(tmp_path):
    root = make_dataset(tmp_path / "data")
    manifest = build(root, tmp_path / "out")
    loaded = load_manifest(tmp_path / "out")
    assert loaded.class_names == ["red", "green", "blue"] and loaded.tile_size == 32
    groups = [set(manifest["splits"][s]["groups"]) for s in manifest["splits"]]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 4
    # 40x56 images at tile 32 → 2x2 tiles each, 8 images in all.
    assert sum(s["num_samples"] for s in manifest["splits"].values()) == 32
    mask_pixels = {s: 0 for s in manifest["splits"]}
    for split in manifest["splits"]:
        for shard in loaded.split(split).shards:
            members = read_members(shard)
            for name, data in members.items():
                if name.endswith(f"mask.{loaded.mask_codec}"):
                    mask = decode_image(data, loaded.mask_codec)
                    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1, 2, 255}
                    mask_pixels[split] += np.bincount(mask.ravel(), minlength=256)[:3].sum()
                if name.endswith("meta.json"):
                    meta = json.loads(data)
                    assert (
                        meta["split"] == split
                        and meta["group"] in manifest["splits"][split]["groups"]
                    )
    for split, pixels in mask_pixels.items():
        images = 2 * len(manifest["splits"][split]["groups"])
        assert sum(manifest["class_pixels"][split]) == (40 * 56 - 9) * images
        if split != "train":  # train tiles overlap at the image edges (counted once above)
            assert pixels == (40 * 56 - 9) * images
        # 9 no-data pixels per image, 2 images per group.
        assert manifest["ignore_pixels"][split] == 9 * 2 * len(manifest["splits"][split]["groups"])
    # Statistics: train pixels whose label is a class (the no-data corner is left out).
    pixels = np.concatenate(
        [
            np.asarray(Image.open(p), dtype=np.float64)[3:, :].reshape(-1, 3)
            for g in manifest["splits"]["train"]["groups"]
            for p in sorted((root / g / "images").glob("*.png"))
        ]
        + [
            np.asarray(Image.open(p), dtype=np.float64)[:3, 3:].reshape(-1, 3)
            for g in manifest["splits"]["train"]["groups"]
            for p in sorted((root / g / "images").glob("*.png"))
        ]
    )
    assert "mean" not in manifest and manifest["version"] == 3
    assert [b["name"] for b in manifest["bands"]] == ["red", "green", "blue"]
    assert manifest["rgb_bands"] == [0, 1, 2]
    np.testing.assert_allclose([b["mean"] for b in manifest["bands"]], pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose([b["std"] for b in manifest["bands"]], pixels.std(0), rtol=1e-12)
    np.testing.assert_allclose(loaded.mean, pixels.mean(0) / 255, rtol=1e-12)
    low, high = np.percentile(pixels, [2, 98], axis=0, method="inverted_cdf")
    assert [b["display"] for b in manifest["bands"]] == [[lo, hi] for lo, hi in zip(low, high)]


def test_padding_is_ignore_and_windows_recorded(tmp_path):
    root = make_dataset(tmp_path / "data", groups=1, per_group=1, size=(20, 45))
    build(root, tmp_path / "out", tile=32, val=0, test=0, image_codec="png")
    members = read_members(tmp_path / "out" / "train-000000.tar")
    windows = sorted(
        (json.loads(v)["window"]["col"], json.loads(v)["window"]["width"])
        for k, v in members.items()
        if k.endswith("meta.json")
    )
    assert windows == [(0, 32), (13, 32)]  # the right tile ends at the image's edge
    right = decode_image(members["Tile_0/part_0/r00000_c00013.mask.png"], "png")
    assert (right[20:, :] == 255).all()  # 20 rows: shorter than the tile, so padded
    assert (right[:20, :] != 255).all()


def test_train_tiles_end_at_the_image_edge():
    every = lambda row, col: "train"  # noqa: E731
    starts = [train_window_start(r, c, (600, 1100), 512, every)
              for r, c, _, _ in tile_windows(600, 1100, 512)]  # fmt: skip
    assert starts == [(0, 0), (0, 512), (0, 588), (88, 0), (88, 512), (88, 588)]
    # Shorter than a tile: nothing to move back over, the tile is padded.
    assert train_window_start(0, 512, (300, 700), 512, every) == (0, 188)
    # A val block next door: the tile moves back only where it covers train cells alone.
    val_middle = lambda row, col: "val" if col == 512 else "train"  # noqa: E731
    assert train_window_start(0, 1024, (600, 1100), 512, val_middle) == (0, 1024)
    assert train_window_start(512, 1024, (600, 1100), 512, val_middle) == (88, 1024)


def test_train_tiles_hold_image_pixels_only_and_no_val_pixel(tmp_path):
    root = make_dataset(tmp_path / "data", groups=2, per_group=2, size=(100, 90))
    manifest = build(root, tmp_path / "out", split_by="blocks:1", val=0.3, test=0)
    loaded = load_manifest(tmp_path / "out")
    codec, whole = loaded.image_codec, {"train": 0, "val": 0}
    windows: dict[str, dict[str, list]] = {}
    for split in manifest["splits"]:
        for shard in loaded.split(split).shards:
            members = read_members(shard)
            for name, data in members.items():
                if not name.endswith("meta.json"):
                    continue
                meta = json.loads(data)
                w = meta["window"]
                windows.setdefault(meta["key"], {}).setdefault(split, []).append(w)
                mask = decode_image(members[name.replace("meta.json", f"mask.{codec}")], codec)
                padding = np.ones((32, 32), bool)
                padding[: w["height"], : w["width"]] = False
                assert (mask[padding] == 255).all()
                image = np.asarray(Image.open(meta["image"]))
                tile = decode_image(members[name.replace("meta.json", f"image.{codec}")], codec)
                cut = image[w["row"] : w["row"] + w["height"], w["col"] : w["col"] + w["width"]]
                np.testing.assert_array_equal(tile[: w["height"], : w["width"]], cut)
                whole[split] += (w["height"], w["width"]) == (32, 32)
    assert len(windows) == 4 and {"train", "val"} <= set(manifest["splits"])
    moved_back = 0
    for key, by_split in windows.items():
        covered = {s: np.zeros((100, 90), int) for s in ("train", "val")}
        for split, cuts in by_split.items():
            for w in cuts:
                rows, cols = (
                    slice(w["row"], w["row"] + w["height"]),
                    slice(w["col"], w["col"] + w["width"]),
                )
                covered[split][rows, cols] += 1
        assert ((covered["train"] > 0) | (covered["val"] > 0)).all(), key  # nothing left out
        assert not ((covered["train"] > 0) & (covered["val"] > 0)).any(), key  # no leak
        assert covered["val"].max() <= 1, key  # each val pixel scored once
        moved_back += int((covered["train"] > 1).any())
    assert moved_back > 0  # some train tiles did reach back over a train neighbour
    # 100x90 at tile 32: 4x3 grid cells, 9 of them whole. Train has more whole tiles.
    cells = {s: sum(len(b.get(s, [])) for b in windows.values()) for s in whole}
    on_grid = [
        w["row"] % 32 == w["col"] % 32 == 0 for b in windows.values() for w in b.get("val", [])
    ]
    assert all(on_grid) and whole["val"] < cells["val"]  # val stays on the grid, padded
    assert whole["train"] > 9 * cells["train"] / 12


@pytest.mark.parametrize("codec", ["png", "jpg", "webp", "npy"])
def test_rebuild_is_byte_identical(tmp_path, codec):
    root = make_dataset(tmp_path / "data", groups=3, per_group=2)
    build(root, tmp_path / "a", image_codec=codec)
    build(root, tmp_path / "b", image_codec=codec, workers=2)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_codecs_decode_to_the_same_samples(tmp_path):
    """Lossless codecs give identical pixels; ``npy`` shards store raw masks, the others PNG."""
    root = make_dataset(tmp_path / "data", groups=3, per_group=2)
    decoded = {}
    for codec in ("png", "webp", "npy", "jpg"):
        build(root, tmp_path / codec, image_codec=codec)
        manifest = load_manifest(tmp_path / codec)
        assert manifest.mask_codec == ("npy" if codec == "npy" else "png")
        members = read_members(manifest.split("train").shards[0])
        assert {name.split(".", 1)[1] for name in members} == {
            f"image.{codec}",
            f"mask.{manifest.mask_codec}",
            "meta.json",
        }
        samples = read_samples(list(manifest.split("train").shards), Codecs.of(manifest))
        decoded[codec] = {s.key: (s.image, s.mask) for s in samples}
    reference = decoded["npy"]
    for codec, samples in decoded.items():
        assert samples.keys() == reference.keys()
        for key, (image, mask) in samples.items():
            assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
            assert torch.equal(mask, reference[key][1]), (codec, key)
            if codec != "jpg":
                assert torch.equal(image, reference[key][0]), (codec, key)
            else:  # lossy, but the same picture
                assert (image.float() - reference[key][0].float()).abs().mean() < 4


def test_manifest_versions(tmp_path):
    """Version 1 and 2 manifests (RGB, 0–1 mean/std) still load; newer ones are refused."""
    build(make_dataset(tmp_path / "data", groups=3), tmp_path / "out", image_codec="png")
    path = tmp_path / "out" / "dataset.json"
    data = json.loads(path.read_text())
    assert data["version"] == 3 and data["mask_codec"] == "png"
    written = load_manifest(tmp_path / "out")
    old = {k: v for k, v in data.items() if k not in ("bands", "rgb_bands", "mask_codec")}
    old |= {"mean": written.mean, "std": written.std}  # a version 2 manifest's 0-1 values
    path.write_text(json.dumps(old | {"version": 1}))
    assert load_manifest(tmp_path / "out").mask_codec == "png"
    path.write_text(json.dumps(old | {"version": 2, "mask_codec": "png"}))
    v2 = load_manifest(tmp_path / "out")
    assert v2.in_channels == 3 and v2.normalization.rgb_bands == (0, 1, 2)
    np.testing.assert_allclose(v2.mean, written.mean, rtol=1e-12)
    assert Codecs.of(v2).bands == 3 and Codecs.of(v2).dtype == "uint8"
    samples = read_samples(list(v2.split("train").shards), Codecs.of(v2))
    assert next(iter(samples)).image.dtype == torch.uint8
    path.write_text(json.dumps(data | {"version": 4}))
    with pytest.raises(ManifestError, match="dataset.json: shard format version 4 is newer"):
        load_manifest(tmp_path / "out")


def no_tar_left(tmp_path: Path) -> bool:
    return not list(tmp_path.rglob("*.tar"))


def test_truncated_jpeg(tmp_path):
    root = make_dataset(tmp_path / "data", groups=3)
    Image.fromarray(np.full((40, 56, 3), 128, np.uint8)).save(root / "Tile 1/images/part_0.jpg")
    (root / "Tile 1/images/part_0.png").unlink()
    data = (root / "Tile 1/images/part_0.jpg").read_bytes()
    (root / "Tile 1/images/part_0.jpg").write_bytes(data[: len(data) // 2])
    pairs = pair_by_glob(str(root / "*/images/*"), str(root / "*/masks/*.png"))
    with pytest.raises(ImageReadError, match=r"part_0\.jpg.*(truncated|corrupt)"):
        build_shards(
            pairs, load_classes(root / "classes.yaml"), tmp_path / "out", BuildOptions(tile=32)
        )
    assert no_tar_left(tmp_path) and not (tmp_path / "out").exists()


def test_mask_of_different_size(tmp_path):
    root = make_dataset(tmp_path / "data", groups=3)
    Image.fromarray(np.zeros((41, 56, 3), np.uint8)).save(root / "Tile 1/masks/part_1.png")
    with pytest.raises(BuildError, match=r"Tile 1/masks/part_1\.png: mask is 56x41"):
        build(root, tmp_path / "out")
    assert no_tar_left(tmp_path)


def test_unknown_colour_names_file_value_and_count(tmp_path):
    root = make_dataset(tmp_path / "data", groups=3)
    mask = np.zeros((40, 56, 3), np.uint8)
    mask[:5, :4] = (18, 52, 86)
    Image.fromarray(mask).save(root / "Tile 0/masks/part_1.png")
    with pytest.raises(BuildError, match=r"Tile 0/masks/part_1\.png.*#123456 \(20 pixels\)"):
        build(root, tmp_path / "out")
    assert no_tar_left(tmp_path)
    manifest = build(root, tmp_path / "out2", unknown="ignore")
    # 6 images: five with 9 no-data pixels, one all no-data or unknown.
    assert sum(manifest["ignore_pixels"].values()) == 5 * 9 + 40 * 56


def test_unpaired_image_is_listed(tmp_path):
    root = make_dataset(tmp_path / "data", groups=2)
    (root / "Tile 1/masks/part_1.png").unlink()
    with pytest.raises(PairingError, match=r"image without mask: .*Tile 1/images/part_1\.png"):
        build(root, tmp_path / "out")
    assert no_tar_left(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairingError, match="matched no image files"):
        pair_by_glob(str(tmp_path / "empty/*.png"), str(tmp_path / "empty/*.png"))


def _write_tiff(path, array):
    import rasterio

    with rasterio.open(
        path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
        count=array.shape[2], dtype=array.dtype,
    ) as dataset:  # fmt: skip
        dataset.write(np.moveaxis(array, -1, 0))


def test_two_band_tiff_and_tiff_variants(tmp_path):
    root = make_dataset(tmp_path / "data", groups=3)
    _write_tiff(root / "Tile 0/images/part_0.tif", np.zeros((40, 56, 2), np.uint8))
    (root / "Tile 0/images/part_0.png").unlink()
    pairs = pair_by_glob(str(root / "*/images/*"), str(root / "*/masks/*.png"))
    # A 2-band image builds on its own (npy), but not among RGB images.
    with pytest.raises(BuildError, match=r"part_0\.tif: 2 uint8 bands \(band1, band2\) differ"):
        build_shards(
            pairs, load_classes(root / "classes.yaml"), tmp_path / "out", BuildOptions(tile=32)
        )
    assert no_tar_left(tmp_path)
    # An undescribed 3-band uint8 TIFF is RGB, as the PNGs beside it.
    _write_tiff(root / "Tile 0/images/part_0.tif", np.full((40, 56, 3), 9, np.uint8))
    manifest = build_shards(
        pairs, load_classes(root / "classes.yaml"), tmp_path / "out", BuildOptions(tile=32)
    )
    assert [b["name"] for b in manifest["bands"]] == ["red", "green", "blue"]


def test_existing_output_needs_overwrite(tmp_path):
    root = make_dataset(tmp_path / "data", groups=2)
    build(root, tmp_path / "out", val=0, test=0)
    with pytest.raises(BuildError, match="not empty"):
        build(root, tmp_path / "out", val=0, test=0)
    build(root, tmp_path / "out", val=0, test=0, overwrite=True)
    assert load_manifest(tmp_path / "out").split("train").num_samples == 16


def test_classes_file_errors(tmp_path):
    with pytest.raises(ClassesError, match="listed twice"):
        classes_from_dict(
            {"classes": [{"name": "a", "value": "#010101"}, {"name": "b", "value": "#010101"}]}
        )
    with pytest.raises(ClassesError, match="bad value"):
        classes_from_dict({"classes": [{"name": "a", "value": "red"}]})
    with pytest.raises(ClassesError, match="unknown keys"):
        classes_from_dict(
            {"classes": [{"name": "a", "value": 1, "colour": "#FFFFFF"}], "encoding": "index"}
        )
    with pytest.raises(ClassesError, match="missing.yaml: classes file not found"):
        load_classes(tmp_path / "missing.yaml")
    index = classes_from_dict(
        {
            "encoding": "index",
            "classes": [{"name": "a", "value": [1, 2]}, {"name": "x", "value": 0, "ignore": True}],
        }
    )
    assert index.lookup == {1: 0, 2: 0, 0: 255} and index.classes[0].color.startswith("#")


@pytest.mark.parametrize("raw", [3.5, True, None, [1]])
def test_an_index_value_that_is_not_a_whole_number_is_refused(raw):
    entry = {"name": "a", "value": [raw]}
    with pytest.raises(ClassesError, match=r"classes\[0\]: bad value .* for encoding 'index'"):
        classes_from_dict({"encoding": "index", "classes": [entry]})
    same = classes_from_dict({"encoding": "index", "classes": [{"name": "a", "value": [3.0, "4"]}]})
    assert same.lookup == {3: 0, 4: 0}


def test_manifest_records_the_source_values_for_predictions_in_original_values(tmp_path):
    from engine.infer.values import original_values

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for group in ("A", "B", "C"):
        mask = rng.choice([10, 20, 30, 0], size=(32, 32)).astype(np.uint8)
        image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        write_pair(root, group, "x", image, mask)
    classes = classes_from_dict(
        {
            "encoding": "index",
            "classes": [
                {"name": "a", "value": 10, "color": "#112233"},
                {"name": "bc", "value": [20, 30], "color": "#445566"},
                {"name": "nodata", "value": 0, "color": "#000000", "ignore": True},
            ],
        }
    )
    pairs = pair_by_glob(str(root / "*/images/*.png"), str(root / "*/masks/*.png"))
    manifest = build_shards(
        pairs, classes, tmp_path / "shards", BuildOptions(tile=32, val=0.34, test=0)
    )
    assert [c["value"] for c in manifest["classes"]] == [10, [20, 30]]
    assert manifest["ignore_value"] == 0
    table = original_values(manifest)
    assert table[0] == 10 and table[1] == 20 and table[255] == 0
