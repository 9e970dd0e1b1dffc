"""Pairing real naming: key regexes, mask templates, CSV keys, symlink loops, member names."""

import os

import numpy as np
import pytest
from conftest import make_tiny_dataset
from PIL import Image

from engine.data.sources.pairing import PairingError, pair_by_glob, pair_from_csv


def png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_key_regexes_pair_different_names(tmp_path):
    for n in (3, 4):
        png(tmp_path / f"imgs/site a/scene_img_{n}.png")
        png(tmp_path / f"lbls/site a/scene_lbl_{n}.png")
    images, masks = str(tmp_path / "imgs/**/*.png"), str(tmp_path / "lbls/**/*.png")
    with pytest.raises(PairingError) as caught:
        pair_by_glob(images, masks)
    message = str(caught.value)
    # The computed keys side by side, the files, and the ways out.
    assert "'site a/scene_img_3' | 'site a/scene_lbl_3'" in message
    assert "image without mask: " + str(tmp_path / "imgs/site a/scene_img_3.png") in message
    for option in ("--image-key", "--mask-key", "--mask-from", "--pairs-csv"):
        assert option in message
    pairs = pair_by_glob(images, masks, image_key=r"(.*)_img(_\d+)$", mask_key=r"(.*)_lbl(_\d+)$")
    assert [(p.key, p.group, p.mask.name) for p in pairs] == [
        ("site a/scene_3", "site a", "scene_lbl_3.png"),
        ("site a/scene_4", "site a", "scene_lbl_4.png"),
    ]
    with pytest.raises(PairingError, match=r"scene_lbl_3\.png: --mask-key 'nope' does not match"):
        pair_by_glob(images, masks, image_key=r"(.*)_img(_\d+)$", mask_key="nope")


def test_mask_template(tmp_path):
    png(tmp_path / "a/images/x.png")
    png(tmp_path / "a/masks/x_mask.png")
    (pair,) = pair_by_glob(
        str(tmp_path / "*/images/*"), str(tmp_path / "*/masks/*"), mask_from="{key}_mask"
    )
    assert (pair.key, pair.mask.name) == ("a/x", "x_mask.png")
    (pair,) = pair_by_glob(
        str(tmp_path / "*/images/*"), str(tmp_path / "*/masks/*"), mask_from="{folder}/{stem}_mask"
    )
    assert pair.mask.name == "x_mask.png"
    with pytest.raises(PairingError, match="--mask-from '{name}_mask'.*{key}, {stem}, {folder}"):
        pair_by_glob(
            str(tmp_path / "*/images/*"), str(tmp_path / "*/masks/*"), mask_from="{name}_mask"
        )


def test_csv_paths_relative_to_the_csv_and_keys_like_globs(tmp_path, monkeypatch):
    root = make_tiny_dataset(tmp_path / "data", groups=2, per_group=1)
    by_glob = pair_by_glob(str(root / "*/images/*.png"), str(root / "*/masks/*.png"))
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    relative = root / "relative.csv"
    relative.write_text(
        "image,mask\n"
        + "".join(f"Tile {g}/images/part_0.png,Tile {g}/masks/part_0.png\n" for g in (0, 1))
    )
    listed = tmp_path / "lists" / "absolute.csv"  # outside the data folder, absolute paths
    listed.parent.mkdir()
    listed.write_text("image,mask\n" + "".join(f"{p.image},{p.mask}\n" for p in by_glob))
    for csv_file in (relative, listed):
        pairs = pair_from_csv(csv_file, group_pattern=r"^(Tile \d)/")
        assert [(p.key, p.group) for p in pairs] == [(p.key, p.group) for p in by_glob]
        assert [(p.key, p.group) for p in pairs] == [
            ("Tile 0/part_0", "Tile 0"), ("Tile 1/part_0", "Tile 1"),
        ]  # fmt: skip
    twice = root / "twice.csv"
    twice.write_text("image,mask\n" + "Tile 0/images/part_0.png,Tile 0/masks/part_0.png\n" * 2)
    with pytest.raises(PairingError, match=r"twice.csv:3: image .*part_0.png is also on row 2"):
        pair_from_csv(twice)


def test_symlink_loop_under_double_star_counts_each_file_once(tmp_path):
    png(tmp_path / "data/images/x.png")
    png(tmp_path / "data/masks/x.png")
    os.symlink(tmp_path / "data", tmp_path / "data/loop")
    data = tmp_path / "data"
    pairs = pair_by_glob(str(data / "**/images/*.png"), str(data / "**/masks/*.png"))
    assert [(p.key, p.image, p.mask) for p in pairs] == [
        ("x", tmp_path / "data/images/x.png", tmp_path / "data/masks/x.png")
    ]


@pytest.mark.parametrize("names", [("a b", "a_b"), ("v1.2", "v1_2")])
def test_keys_that_share_a_member_name_are_an_error(tmp_path, names):
    for name in names:
        png(tmp_path / f"images/{name}.png")
        png(tmp_path / f"masks/{name}.png")
    first, second = (str(tmp_path / f"images/{n}.png") for n in sorted(names))
    with pytest.raises(PairingError) as caught:
        pair_by_glob(str(tmp_path / "images/*.png"), str(tmp_path / "masks/*.png"))
    message = str(caught.value)
    assert first in message and second in message and "same shard member name" not in message
    assert f"become the shard member name {names[1]!r}" in message
