"""Warnings the shard builder prints once each, on stderr.

They are about things that build but probably are not what the user meant: tiles that are
mostly padding, classes missing or rare in train.
"""

from __future__ import annotations

import math
import statistics
import sys

PADDING_WARN = 0.40  # warn when more than this share of train tile pixels is padding
MOST_ADVISED_PADDING = 0.25  # a proposed tile never pads more than this share of a tile
RARE_CLASS = 0.001  # warn when a class is under this share of the train pixels
TILE_STEP = 32  # suggested tile sizes are multiples of this
MIN_SUGGESTED_TILE = 256  # ... and no smaller than this, unless the images are: a tile
# must still hold a useful training crop, and smaller tiles always pad less


def print_warning(message: str) -> None:
    """Print ``warning: <message>`` on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def padding_share(sizes: list[tuple[int, int]], tile: int) -> float:
    """The share of train tile pixels that adds nothing when ``sizes`` (H, W) are cut at ``tile``.

    That is padding (an image shorter or narrower than the tile), and the pixels a tile at
    the bottom or right edge repeats from its neighbour: train tiles there end at the
    image's edge (``engine.data.build.tiling.train_window_start``), so only their own grid
    cell is new (a 300 px image at ``--tile 288``: 2x2 tiles of 288², 73 % repeated).
    """
    tiles = sum(math.ceil(h / tile) * math.ceil(w / tile) for h, w in sizes)
    return 1.0 - sum(h * w for h, w in sizes) / max(tiles * tile * tile, 1)


def fitting_tile(sizes: list[tuple[int, int]]) -> int:
    """A tile size that fits the images, ideally padding at most a quarter of a tile.

    The largest multiple of 32 from 256 (or the median short image side, when smaller) up to
    that side rounded up, whose padding is within 2 points of the least any such tile gives.
    When that is over :data:`MOST_ADVISED_PADDING` (small images between multiples of 32),
    multiples of 8 and the median short side itself are tried as well.
    """
    median = int(statistics.median(min(h, w) for h, w in sizes))
    top = TILE_STEP * math.ceil(median / TILE_STEP)
    low = min(MIN_SUGGESTED_TILE, top)
    candidates = set(range(low, top + 1, TILE_STEP))
    if min(padding_share(sizes, t) for t in candidates) > MOST_ADVISED_PADDING:
        candidates |= set(range(max(low - TILE_STEP, 8), top + 1, 8)) | {median}
    shares = {t: padding_share(sizes, t) for t in candidates}
    least = min(shares.values())
    return max(t for t, share in shares.items() if share <= least + 0.02)


def padding_warnings(sizes: list[tuple[int, int]], tile: int) -> list[str]:
    """A warning when more than 40 % of the tile pixels would be padding, with a tile that fits.

    Padding here includes the pixels edge tiles repeat (:func:`padding_share`). The tile
    proposed pads at most :data:`MOST_ADVISED_PADDING`; when no tile does (images of very
    different sizes) none is proposed.

    Args:
        sizes: ``(height, width)`` of every image.
        tile: The tile edge of the build.
    """
    if not sizes:
        return []
    share = padding_share(sizes, tile)
    if share <= PADDING_WARN:
        return []
    heights, widths = (statistics.median(s[i] for s in sizes) for i in (0, 1))
    better = fitting_tile(sizes)
    better_share = padding_share(sizes, better)
    advice = (
        f"; --tile {better} would give {100 * better_share:.0f} %"
        if better != tile and better_share < share - 0.05 and better_share <= MOST_ADVISED_PADDING
        else ""
    )
    return [
        f"tiles are {100 * share:.0f} % padding or repeated edge pixels (median image "
        f"{widths:.0f}x{heights:.0f} px, --tile {tile}){advice}"
    ]


def coverage_warnings(class_pixels: dict[str, list[int]], names: list[str]) -> list[str]:
    """Warnings for classes missing from train, or under 0.1 % of its pixels.

    A class with no pixels anywhere, none in train but some in val/test, or a train share
    under 0.1 % gets one warning each.

    Args:
        class_pixels: ``split → pixels per class`` (the manifest's ``class_pixels``).
        names: Class names in index order.
    """
    train = class_pixels.get("train", [0] * len(names))
    total = max(sum(train), 1)
    messages = []
    for index, name in enumerate(names):
        elsewhere = {s: c[index] for s, c in class_pixels.items() if s != "train" and c[index]}
        if train[index] == 0 and not elsewhere:
            messages.append(f"class {index} {name!r} has no pixels in any split")
        elif train[index] == 0:
            found = ", ".join(f"{n:,} in {s}" for s, n in elsewhere.items())
            messages.append(f"class {index} {name!r} has no pixels in train ({found})")
        elif train[index] / total < RARE_CLASS:
            messages.append(
                f"class {index} {name!r} is {100 * train[index] / total:.3f} % of the train "
                f"pixels (under {100 * RARE_CLASS:g} %)"
            )
    return messages


MIN_VAL_TILES = 8  # with fewer val tiles the best checkpoint is picked on a handful of pixels


def classes_missing(train: list[int], other: list[int], names: list[str]) -> list[str]:
    """The names of the classes with train pixels but none in ``other`` (pixels per class)."""
    return [name for name, n, m in zip(names, train, other) if n > 0 and m == 0]


def val_split_gaps(samples: int, val: list[int], train: list[int], names: list[str]) -> list[str]:
    """What makes a val split a weak judge of the best checkpoint (empty: nothing).

    Args:
        samples: Tiles in the val split.
        val: Its pixels per class.
        train: The train split's pixels per class.
        names: Class names in index order.
    """
    gaps = []
    if samples < MIN_VAL_TILES:
        tiles = f"{samples} tile{'' if samples == 1 else 's'}"
        gaps.append(f"only {tiles} (fewer than {MIN_VAL_TILES})")
    missing = classes_missing(train, val, names)
    if missing:
        gaps.append(f"no pixels of {', '.join(map(repr, missing))}, which train has")
    return gaps


def split_warnings(manifest: dict) -> list[str]:
    """Warnings about a built ``dataset.json``'s val and test splits against its train split.

    A val split of fewer than :data:`MIN_VAL_TILES` tiles, or without a class that train
    has, is where training picks its best checkpoint; a test split without such a class
    scores nothing of it.
    """
    names = [str(c["name"]) for c in manifest["classes"]]
    pixels, splits = manifest.get("class_pixels", {}), manifest.get("splits", {})
    train = pixels.get("train")
    if train is None:
        return []
    messages = []
    if "val" in splits and "val" in pixels:
        gaps = val_split_gaps(splits["val"]["num_samples"], pixels["val"], train, names)
        if gaps:
            messages.append(
                f"the val split has {' and '.join(gaps)}: training picks its best checkpoint "
                "on this split; a larger --val (or more, smaller groups) makes that choice sound"
            )
    missing = classes_missing(train, pixels.get("test", train), names)
    if "test" in splits and missing:
        messages.append(
            f"the test split has no pixels of {', '.join(map(repr, missing))}, which train "
            "has: its scores will say nothing about them"
        )
    return messages
