"""How the shard builder splits samples into train, val and test.

Two ways, both seeded and leak-free:

* ``group`` (the default): whole groups (scenes) are shuffled and assigned to test, val and
  train, so no scene is on two sides.
* ``blocks:N``: each image is cut into blocks of N×N whole tiles; the blocks of all images
  are shuffled and assigned by the same fractions. A tile never straddles two splits and
  neighbouring tiles of one block stay together. For datasets with too few groups.

When there are too few groups for the requested splits the plan is an error that names
``--split-by blocks:N`` with a suggested N: a validation split is never dropped silently.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from engine.data.shards.manifest import SPLITS
from engine.data.sources.imageio import image_size
from engine.data.sources.pairing import Pair
from engine.data.sources.pictures import ImageReadError
from engine.errors import UserError

SPLIT_BY_HELP = "group | blocks:N"


class SplitError(UserError):
    """The requested split cannot be made; the message says why and what to pass instead."""


@dataclass(frozen=True)
class SplitBy:
    """A parsed ``--split-by``: ``by`` is ``group`` or ``blocks`` (with ``block_tiles``)."""

    by: str = "group"
    block_tiles: int = 0


def parse_split_by(text: str) -> SplitBy:
    """Parse ``group`` or ``blocks:N`` (N ≥ 1 tiles a block side).

    Raises:
        SplitError: for anything else.
    """
    text = str(text).strip()
    if text == "group":
        return SplitBy()
    name, _, number = text.partition(":")
    if name == "blocks" and number.isdigit() and int(number) >= 1:
        return SplitBy("blocks", int(number))
    raise SplitError(f"--split-by {text!r}: expected {SPLIT_BY_HELP} (N ≥ 1 tiles)")


def check_fractions(val: float, test: float) -> None:
    """Raise :class:`SplitError` unless both fractions are in [0, 1) and sum below 1."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise SplitError(f"--val {val} and --test {test} must be in [0, 1) and sum below 1")


def split_groups(groups: list[str], val: float, test: float, seed: int) -> dict[str, str]:
    """Assign whole units (groups or blocks) to ``train``/``val``/``test``, seeded.

    Each non-zero fraction gets at least one unit as long as one is left for training
    (:func:`plan_splits` refuses plans where that drops a split).

    Raises:
        SplitError: when the fractions are invalid.
    """
    check_fractions(val, test)
    ordered = sorted(set(groups))
    random.Random(seed).shuffle(ordered)
    count = len(ordered)

    def share(fraction: float) -> int:
        return max(1, round(fraction * count)) if fraction > 0 else 0

    n_test = min(share(test), max(count - 1, 0))
    n_val = min(share(val), max(count - 1 - n_test, 0))
    assignment = {g: "test" for g in ordered[:n_test]}
    assignment |= {g: "val" for g in ordered[n_test : n_test + n_val]}
    assignment |= {g: "train" for g in ordered[n_test + n_val :]}
    return assignment


def block_of(row: int, col: int, tile: int, block_tiles: int) -> tuple[int, int]:
    """The ``(block row, block col)`` of the tile whose top-left pixel is ``(row, col)``."""
    side = tile * block_tiles
    return row // side, col // side


@dataclass(frozen=True)
class PairSplit:
    """Where the tiles of one pair go: all to ``split``, or per block (``blocks``)."""

    split: str = ""
    block_tiles: int = 0
    blocks: dict[tuple[int, int], str] = field(default_factory=dict)

    def at(self, row: int, col: int, tile: int) -> str:
        """The split of the tile whose top-left pixel is ``(row, col)``."""
        if not self.blocks:
            return self.split
        return self.blocks[block_of(row, col, tile, self.block_tiles)]

    def splits(self) -> set[str]:
        """Every split that gets tiles of this pair."""
        return set(self.blocks.values()) if self.blocks else {self.split}


def image_sizes(pairs: list[Pair]) -> dict[str, tuple[int, int]]:
    """``key → (height, width)`` of each pair's image, from the file headers only.

    Raises:
        ImageReadError: naming an image whose size cannot be read.
    """
    sizes = {}
    for pair in pairs:
        try:
            sizes[pair.key] = image_size(pair.image)
        except FileNotFoundError as error:
            raise ImageReadError(f"{pair.image}: file not found") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageReadError(
                f"{pair.image}: cannot read the image size (truncated or corrupt?): {error}"
            ) from error
    return sizes


def _grid(size: tuple[int, int], tile: int, block_tiles: int = 1) -> tuple[int, int]:
    side = tile * block_tiles
    return math.ceil(size[0] / side), math.ceil(size[1] / side)


def suggest_block_tiles(sizes: list[tuple[int, int]], tile: int, val: float, test: float) -> int:
    """A block size for ``--split-by blocks:N`` that gives every requested split blocks.

    The largest N with at least 2 / (smallest non-zero fraction) blocks in all, else 1.
    """
    fractions = [f for f in (val, test) if f > 0]
    target = max(1 + len(fractions), math.ceil(2 / min(fractions)) if fractions else 1)
    largest = max((max(_grid(s, tile)) for s in sizes), default=1)
    for n in range(largest, 0, -1):
        if sum(math.prod(_grid(s, tile, n)) for s in sizes) >= target:
            return n
    return 1


def _describe(units: list[str], limit: int = 4) -> str:
    shown = ", ".join(units[:limit])
    return shown + (f", … ({len(units)} in all)" if len(units) > limit else "")


def plan_splits(
    pairs: list[Pair],
    sizes: dict[str, tuple[int, int]],
    tile: int,
    split_by: SplitBy,
    val: float,
    test: float,
    seed: int,
) -> tuple[dict[str, PairSplit], dict]:
    """Decide the split of every tile.

    Args:
        pairs: The pairs, with their groups.
        sizes: ``key → (height, width)`` (see :func:`image_sizes`).
        tile: Tile edge in pixels.
        split_by: Whole groups, or blocks of N×N tiles.
        val: Fraction of units for validation.
        test: Fraction of units for testing.
        seed: Seed of the assignment.

    Returns:
        ``key → PairSplit`` and the manifest's ``split`` record (how the split was made).

    Raises:
        SplitError: when the fractions are invalid or the units are too few for every
            requested split (the message names ``--split-by blocks:N`` or a smaller N).
    """
    check_fractions(val, test)
    wanted = ["train"] + [s for s, f in (("val", val), ("test", test)) if f > 0]
    record = {"by": split_by.by, "seed": seed, "fractions": {"val": val, "test": test}}
    if split_by.by == "group":
        groups = sorted({p.group for p in pairs})
        if len(groups) < len(wanted):
            n = suggest_block_tiles(list(sizes.values()), tile, val, test)
            raise SplitError(
                f"{len(groups)} group(s) ({_describe(groups)}) are too few for "
                f"{' + '.join(wanted)} (one group each): pass --split-by blocks:{n} to split "
                f"{n}x{n}-tile blocks of each image instead (seeded, no tile on two sides), "
                "--group REGEX for finer groups, or --val 0 / --test 0"
            )
        assignment = split_groups(groups, val, test, seed)
        plan = {p.key: PairSplit(assignment[p.group]) for p in pairs}
        record["units"] = {s: sum(a == s for a in assignment.values()) for s in SPLITS}
        return plan, record
    n = split_by.block_tiles
    blocks = {
        p.key: [(r, c) for r in range(_grid(sizes[p.key], tile, n)[0])
                for c in range(_grid(sizes[p.key], tile, n)[1])]
        for p in pairs
    }  # fmt: skip
    ids = {f"{key}#{r},{c}": (key, (r, c)) for key, cells in blocks.items() for r, c in cells}
    if len(ids) < len(wanted):
        smaller = suggest_block_tiles(list(sizes.values()), tile, val, test)
        raise SplitError(
            f"--split-by blocks:{n}: {len(ids)} block(s) of {n}x{n} tiles of {tile} px are too "
            f"few for {' + '.join(wanted)}; try --split-by blocks:{min(smaller, n - 1) or 1}"
        )
    assignment = split_groups(list(ids), val, test, seed)
    per_pair: dict[str, dict[tuple[int, int], str]] = {p.key: {} for p in pairs}
    for block_id, split in assignment.items():
        key, cell = ids[block_id]
        per_pair[key][cell] = split
    plan = {key: PairSplit("", n, cells) for key, cells in per_pair.items()}
    record["block_tiles"] = n
    record["units"] = {s: sum(a == s for a in assignment.values()) for s in SPLITS}
    return plan, record


def groups_by_split(pairs: list[Pair], plan: dict[str, PairSplit]) -> dict[str, list[str]]:
    """The groups with tiles in each split (disjoint for ``group`` splits)."""
    found: dict[str, set[str]] = {s: set() for s in SPLITS}
    for pair in pairs:
        for split in plan[pair.key].splits():
            found[split].add(pair.group)
    return {s: sorted(g) for s, g in found.items()}
