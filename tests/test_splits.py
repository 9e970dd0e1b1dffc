"""Splits (too few groups is an error naming --split-by blocks:N; block splits keep blocks
whole) and the builder's warnings (mostly-padding tiles, classes missing from train)."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import REPO, build_tiny, make_tiny_dataset
from PIL import Image

from engine.data.build.advice import (
    coverage_warnings,
    fitting_tile,
    padding_share,
    padding_warnings,
)
from engine.data.build.splits import (
    SplitBy,
    SplitError,
    parse_split_by,
    split_groups,
    suggest_block_tiles,
)
from engine.data.shards.manifest import load_manifest


def tile_splits(out) -> dict[tuple[str, int, int], str]:
    """(pair key, row, col) → split, read from every tile's meta.json in the shards."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith("meta.json"):
                    meta = json.loads(tar.extractfile(member).read())
                    window = meta["window"]
                    found[meta["key"], window["row"], window["col"]] = meta["split"]
                    assert shard.name.startswith(meta["split"] + "-")
    return found


def test_two_groups_without_split_by_is_an_error_naming_blocks(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", groups=2, per_group=1, size=(128, 128))
    with pytest.raises(SplitError) as caught:
        build_tiny(root, tmp_path / "out", tile=16, val=0.34, test=0.34)
    message = str(caught.value)
    assert "2 group(s) (Tile 0, Tile 1) are too few for train + val + test" in message
    assert "--split-by blocks:" in message and "\n" not in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("*.tar"))
    # Asking for fewer splits still works by group.
    manifest = build_tiny(root, tmp_path / "ok", tile=16, val=0.5, test=0)
    assert sorted(manifest["splits"]) == ["train", "val"]
    assert manifest["split"] == {
        "by": "group",
        "seed": 0,
        "fractions": {"val": 0.5, "test": 0},
        "units": {"train": 1, "val": 1, "test": 0},
    }


def test_two_groups_split_by_blocks_fills_every_split_without_straddling(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", groups=2, per_group=1, size=(128, 112))
    options = dict(tile=16, val=0.25, test=0.25, split_by="blocks:2")
    manifest = build_tiny(root, tmp_path / "a", **options)
    # 128x112 at tile 16 = 8x7 tiles; 2x2-tile blocks → 4x4 = 16 blocks an image, 32 in all.
    assert manifest["split"] == {
        "by": "blocks",
        "block_tiles": 2,
        "seed": 0,
        "fractions": {"val": 0.25, "test": 0.25},
        "units": {"train": 16, "val": 8, "test": 8},
    }
    assert all(manifest["splits"][s]["num_samples"] > 0 for s in ("train", "val", "test"))
    assert load_manifest(tmp_path / "a").split_method["block_tiles"] == 2
    splits = tile_splits(tmp_path / "a")
    assert len(splits) == 2 * 8 * 7
    blocks: dict[tuple[str, int, int], set[str]] = {}
    for (key, row, col), split in splits.items():
        blocks.setdefault((key, row // 32, col // 32), set()).add(split)
    assert len(blocks) == 32 and all(len(s) == 1 for s in blocks.values())
    # Both scenes are in each split's groups; class pixels are counted per split.
    assert manifest["splits"]["val"]["groups"] == ["Tile 0", "Tile 1"]
    counted = manifest["class_pixels"], manifest["ignore_pixels"]
    total = sum(sum(counted[0][s]) + counted[1][s] for s in manifest["splits"])
    assert total == 2 * 128 * 112
    # Deterministic: the same seed gives the same files; another seed another assignment.
    build_tiny(root, tmp_path / "b", **options)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    build_tiny(root, tmp_path / "c", **(options | {"seed": 1}))
    assert tile_splits(tmp_path / "c") != splits


def test_too_few_blocks_and_bad_split_by(tmp_path):
    root = make_tiny_dataset(tmp_path / "d", groups=1, per_group=1, size=(32, 32))
    with pytest.raises(SplitError, match=r"1 block\(s\) of 4x4 tiles .* try --split-by blocks:1"):
        build_tiny(root, tmp_path / "out", tile=16, split_by="blocks:4")
    assert parse_split_by("group") == SplitBy() and parse_split_by("blocks:3") == SplitBy(
        "blocks", 3
    )
    for bad in ("blocks", "blocks:0", "tiles:2", "blocks:x"):
        with pytest.raises(SplitError, match="expected group | blocks:N"):
            parse_split_by(bad)


def test_suggested_block_size_leaves_enough_blocks():
    # Two 1024x1024 scenes at tile 256: 4x4 tiles each. 15 % fractions want ≥ 14 blocks.
    assert suggest_block_tiles([(1024, 1024)] * 2, 256, 0.15, 0.15) == 1
    # 34 % wants ≥ 6 blocks: 2x2-tile blocks give 2x2 blocks a scene (8); with 3x3-tile
    # blocks the last tile row and column (under half a block) join the block before: 1.
    assert suggest_block_tiles([(1024, 1024)] * 2, 256, 0.34, 0.34) == 2


def test_padding_warning_names_a_fitting_tile(tmp_path, capsys):
    assert padding_warnings([(512, 512)] * 3, 1024) == [
        "tiles are 75 % padding or repeated edge pixels (median image 512x512 px, --tile 1024); "
        "--tile 512 would give 0 %"
    ]
    assert (
        padding_warnings([(512, 512)], 512) == [] and padding_warnings([(2000, 3000)], 1024) == []
    )
    # Images of mixed odd sizes pad least at tiny tiles; the advice stays a trainable tile.
    mixed = [(644, 797), (979, 842), (1013, 1205), (520, 701), (853, 1099)]
    assert fitting_tile(mixed) >= 256
    assert fitting_tile([(64, 64)] * 3) == 64  # unless the images are smaller
    # Train tiles end at the image's edge: there only their own grid cell is new.
    assert padding_share([(512, 1024)], 256) == 0.0
    assert padding_share([(300, 1000)], 256) == 1 - (300 * 1000) / (2 * 4 * 256**2)
    assert padding_share([(150, 1024)], 256) == 1 - 150 / 256
    root = make_tiny_dataset(tmp_path / "d", groups=1, per_group=1, size=(150, 150))
    build_tiny(root, tmp_path / "out", tile=256, val=0, test=0)
    printed = capsys.readouterr().err.splitlines()
    assert (
        printed.count(
            "warning: tiles are 66 % padding or repeated edge pixels (median image 150x150 px, "
            "--tile 256); --tile 160 would give 12 %"
        )
        == 1
    )


def test_class_coverage_warnings(tmp_path, capsys):
    assert coverage_warnings(
        {"train": [5000, 0, 3, 0], "val": [10, 7, 0, 0]}, ["a", "b", "c", "d"]
    ) == [
        "class 1 'b' has no pixels in train (7 in val)",
        "class 2 'c' is 0.060 % of the train pixels (under 0.1 %)",
        "class 3 'd' has no pixels in any split",
    ]
    root = make_tiny_dataset(tmp_path / "d", groups=3, per_group=1)
    train = next(g for g, s in split_groups(["Tile 0", "Tile 1", "Tile 2"], 0.3, 0.3, 0).items()
                 if s == "train")  # fmt: skip
    mask = np.zeros((40, 56, 3), np.uint8)
    mask[:, :] = (255, 0, 0)
    Image.fromarray(mask).save(root / train / "masks/part_0.png")  # no green, no blue in train
    build_tiny(root, tmp_path / "out", val=0.3, test=0.3)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "class" in line]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: class 1 'green' has no pixels in train (")
    assert warnings[1].startswith("warning: class 2 'blue' has no pixels in train (")


def test_help_shows_defaults():
    for script, shown in (
        ("build_shards.py", ["(default: 1024)", "(default: 0.15)", "(default: group)"]),
        ("inspect_masks.py", ["(default: 1)"]),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "launch" / script), "--help"],
            capture_output=True,
            text=True,
            env=os.environ | {"PYTHONPATH": str(REPO), "COLUMNS": "200"},
            check=True,
        )
        for text in shown:
            assert text in result.stdout, (script, text)
        assert "(default: None)" not in result.stdout
