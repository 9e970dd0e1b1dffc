"""Acceptance on the real Dubai data: inspection, group split, exact statistics, mask values."""

import json

import numpy as np
from PIL import Image

from engine.data.shards.loader import Codecs, read_samples
from engine.data.shards.manifest import load_manifest
from engine.data.sources.classes import parse_color, rgb_code
from engine.data.sources.imageio import read_mask_values
from engine.data.sources.mask_inspect import inspect_masks

PROVENANCE_SHARES = {  # measured from the masks, as PROVENANCE.md lists them
    "#8429F6": 52.4, "#E2A929": 13.6, "#3C1098": 13.3, "#FEDD3A": 10.3,
    "#6EC1E4": 9.4, "#9B9B9B": 0.5, "#000000": 0.6,
}  # fmt: skip


def test_inspection_finds_the_seven_colours_and_their_shares(dubai_dir):
    report = inspect_masks(sorted(dubai_dir.glob("*/masks/*.png")), workers=2)
    assert report.encoding == "rgb" and report.kinds == {"rgb": 54, "palette": 18}
    shares = {report.describe(v.value): 100 * v.pixels / report.total_pixels for v in report.values}
    assert shares.keys() == PROVENANCE_SHARES.keys()
    for colour, share in PROVENANCE_SHARES.items():
        assert abs(shares[colour] - share) < 0.06, colour
    black = next(v for v in report.values if report.describe(v.value) == "#000000")
    assert black.files == 9


def test_split_by_tile_and_exact_train_statistics(dubai_shards, dubai_dir):
    manifest = load_manifest(dubai_shards)
    splits = {name: set(manifest.split(name).groups) for name in ("train", "val", "test")}
    every = [g for groups in splits.values() for g in groups]
    assert len(every) == len(set(every)) == 8 and all(g.startswith("Tile ") for g in every)
    # Statistics cover the train pixels labelled with a class (not the ignored colours).
    class_codes = [rgb_code(parse_color(c["value"])) for c in manifest.data["classes"]]
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for group in sorted(splits["train"]):
        for path in sorted((dubai_dir / group / "images").glob("*.jpg")):
            mask_path = dubai_dir / group / "masks" / f"{path.stem}.png"
            labelled = np.isin(read_mask_values(mask_path, "rgb"), class_codes)
            pixels = np.asarray(Image.open(path).convert("RGB"), np.float64)[labelled] / 255
            total += pixels.sum(0)
            total_sq += (pixels**2).sum(0)
            count += len(pixels)
    mean = total / count
    std = np.sqrt(total_sq / count - mean**2)
    assert manifest.data["version"] == 3
    assert manifest.normalization.names == ["red", "green", "blue"]
    np.testing.assert_allclose(manifest.mean, mean, rtol=0, atol=1e-10)
    np.testing.assert_allclose(manifest.std, std, rtol=0, atol=1e-9)


def test_every_mask_value_is_a_class_or_ignore(dubai_shards):
    manifest = load_manifest(dubai_shards)
    assert manifest.class_names == [f"class_{i}" for i in range(5)]
    found = np.zeros(256, np.int64)
    for name in ("train", "val", "test"):
        split = manifest.split(name)
        samples = list(read_samples(list(split.shards), Codecs.of(manifest)))
        assert len(samples) == split.num_samples
        pixels = np.zeros(256, np.int64)
        tile = manifest.tile_size
        for sample in samples:
            assert sample.meta["group"] in split.groups
            # A train tile moved back to end at the image's edge counts only its grid cell.
            row, col = sample.meta["window"]["row"], sample.meta["window"]["col"]
            own = sample.mask.numpy()[-row % tile :, -col % tile :]
            pixels += np.bincount(own.ravel(), minlength=256)
        assert pixels[:5].tolist() == manifest.data["class_pixels"][name]
        found += pixels
    assert set(np.nonzero(found)[0]) == {0, 1, 2, 3, 4, 255}
    # The stray black covers ~17 % of Tile 8/masks/image_part_003.png: it became ignore.
    with open(dubai_shards / "dataset.json") as handle:
        assert sum(json.load(handle)["ignore_pixels"].values()) > 1_000_000
