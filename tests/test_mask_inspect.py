"""Mask inspection: encodings, counts, draft classes file."""

import os
import subprocess
import sys

import numpy as np
import yaml
from conftest import REPO
from PIL import Image

from engine.data.sources.classes import DEFAULT_PALETTE, classes_from_dict, format_color
from engine.data.sources.mask_inspect import (
    draft_classes_yaml,
    inspect_masks,
    min_color_distance,
    to_lab,
)


def test_rgb_and_palette_masks_mix_as_colours(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[:2] = (132, 41, 246)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    palette = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 132, 41, 246] + [0] * 762)
    palette.save(tmp_path / "b.png")
    report = inspect_masks([tmp_path / "a.png", tmp_path / "b.png"])
    assert report.encoding == "rgb" and report.kinds == {"rgb": 1, "palette": 1}
    found = {report.describe(v.value): (v.pixels, v.files) for v in report.values}
    assert found == {"#8429F6": (13, 2), "#000000": (11, 2)}
    draft = classes_from_dict(yaml.safe_load(draft_classes_yaml(report)))
    assert [c.color for c in draft.classes] == ["#8429F6", "#000000"]


def test_single_band_and_16_bit_masks_are_index(tmp_path):
    Image.fromarray(np.array([[0, 3], [3, 3]], np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[1000, 3]], np.uint16)).save(tmp_path / "b.png")
    report = inspect_masks([tmp_path / "a.png", tmp_path / "b.png"])
    assert report.encoding == "index"
    assert {v.value: v.pixels for v in report.values} == {3: 4, 0: 1, 1000: 1}
    draft = yaml.safe_load(draft_classes_yaml(report))
    assert [c["value"] for c in draft["classes"]] == [0, 3, 1000]


def test_palette_only_masks_keep_indices_and_palette_colours(tmp_path):
    mask = Image.fromarray(np.array([[0, 2]], np.uint8), mode="P")
    mask.putpalette([0, 0, 0, 9, 9, 9, 200, 10, 10] + [0] * 759)
    mask.save(tmp_path / "m.png")
    report = inspect_masks([tmp_path / "m.png"])
    assert report.encoding == "index"
    draft = yaml.safe_load(draft_classes_yaml(report))
    assert [(c["value"], c["color"]) for c in draft["classes"]] == [(0, "#000000"), (2, "#C80A0A")]


def test_default_palette_is_distinct_and_never_the_error_map_colours():
    from engine.render.colors import ERROR_COLORS

    assert len(set(DEFAULT_PALETTE)) == len(DEFAULT_PALETTE) >= 16
    assert min_color_distance(list(DEFAULT_PALETTE)) >= 20
    error_colours = [format_color(c) for c in ERROR_COLORS.values()]
    lab, error_lab = to_lab(list(DEFAULT_PALETTE)), to_lab(error_colours)
    assert np.linalg.norm(lab[:, None] - error_lab[None], axis=-1).min() >= 32
    # Index classes without a colour get the palette, in order.
    index = classes_from_dict(
        {"encoding": "index", "classes": [{"name": f"c{i}", "value": i} for i in range(3)]}
    )
    assert [c.color for c in index.classes] == list(DEFAULT_PALETTE[:3])


def test_grey_coded_masks_draft_palette_colours_but_keep_their_values(tmp_path):
    greys = np.repeat(np.arange(1, 7, dtype=np.uint8)[:, None], 3, 1)  # (1,1,1) … (6,6,6)
    Image.fromarray(np.repeat(greys[None], 2, 0)).save(tmp_path / "rgb.png")
    report = inspect_masks([tmp_path / "rgb.png"])
    text = draft_classes_yaml(report)
    assert "the masks' own colours are too alike" in text
    draft = yaml.safe_load(text)
    assert sorted(c["value"] for c in draft["classes"]) == [format_color(g) for g in greys]
    assert [c["color"] for c in draft["classes"]] == list(DEFAULT_PALETTE[:6])
    # A palette file with near-identical colours: the same.
    mask = Image.fromarray(np.array([[0, 1, 2]], np.uint8), mode="P")
    mask.putpalette([10, 10, 10, 12, 12, 12, 14, 14, 14] + [0] * 759)
    mask.save(tmp_path / "p.png")
    draft = yaml.safe_load(draft_classes_yaml(inspect_masks([tmp_path / "p.png"])))
    assert [c["color"] for c in draft["classes"]] == list(DEFAULT_PALETTE[:3])


def test_script_keeps_an_existing_classes_file(tmp_path):
    Image.fromarray(np.array([[0, 3], [3, 3]], np.uint8)).save(tmp_path / "a.png")
    edited = tmp_path / "classes.yaml"
    edited.write_text("# my edits\n")
    command = [sys.executable, str(REPO / "launch/inspect_masks.py"), str(tmp_path / "*.png")]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    run = subprocess.run([*command, "--write-classes", str(edited)], capture_output=True, env=env)
    assert run.returncode == 2 and b"classes.yaml: already exists" in run.stderr
    assert edited.read_text() == "# my edits\n"
    run = subprocess.run(
        [*command, "--write-classes", str(edited), "--overwrite"], capture_output=True, env=env
    )
    assert run.returncode == 0 and yaml.safe_load(edited.read_text())["encoding"] == "index"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "classes.yaml"]


def test_signed_16_bit_tiff_masks_are_counted_and_drafted(tmp_path):
    """int16 −1/0/1 and uint16 TIFF masks (rasterio): values counted as stored, −1 stays −1."""
    import rasterio

    signed = np.array([[-1, 0, 1], [1, 1, -1]], np.int16)
    deep = np.array([[0, 40000, 40000]], np.uint16)
    for name, array in (("s.tif", signed), ("u.tif", deep)):
        height, width = array.shape
        with rasterio.open(
            tmp_path / name, "w", driver="GTiff", height=height, width=width, count=1,
            dtype=array.dtype.name, crs="EPSG:4326", transform=rasterio.Affine(1, 0, 0, 0, -1, 10),
        ) as dst:  # fmt: skip
            dst.write(array[None])
    report = inspect_masks([tmp_path / "s.tif", tmp_path / "u.tif"])
    assert report.encoding == "index"
    assert report.kinds == {"single-band int16": 1, "single-band uint16": 1}
    assert {v.value: (v.pixels, v.files) for v in report.values} == {
        -1: (2, 1),
        0: (2, 2),
        1: (3, 1),
        40000: (2, 1),
    }
    text = draft_classes_yaml(report)
    assert [c["value"] for c in yaml.safe_load(text)["classes"]] == [-1, 0, 1, 40000]
    assert "value: -1," in text and "often no data" in text.splitlines()[6]


def test_real_sentinel2_label_is_inspected_with_its_no_data_value():
    from engine.data.sources.paths import multispectral_dataset_dir

    labels = sorted((multispectral_dataset_dir() / "sen1floods11" / "Labels").glob("*.tif"))
    assert labels, "the multispectral sample data is missing (see its PROVENANCE.md)"
    import rasterio

    with rasterio.open(labels[0]) as src:
        stored = src.read(1)
    report = inspect_masks(labels)
    assert report.kinds == {"single-band int16": 1}
    values, counts = np.unique(stored, return_counts=True)
    assert {v.value: v.pixels for v in report.values} == dict(zip(values.tolist(), counts.tolist()))
    assert sorted(values.tolist()) == [-1, 0, 1]
    draft = yaml.safe_load(draft_classes_yaml(report))
    assert [c["value"] for c in draft["classes"]] == [-1, 0, 1]
