"""How the shard builder splits samples into train, val and test.

Two ways, both seeded and leak-free:

* ``group`` (the default): whole groups (scenes) are shuffled and assigned to test, val and
  train, so no scene is on two sides. Groups whose georeferenced images' footprints overlap
  (:mod:`engine.data.build.footprints`) are joined first: no ground is on two sides.
* ``blocks:N``: each image is cut into blocks of N×N whole tiles (a last block shorter than
  half a block joins the one before); the blocks of all images are shuffled and assigned
  by the same fractions. A tile never straddles two splits and neighbouring tiles of one
  block stay together. Images whose footprints overlap are not cut: each set of them is
  one unit. For datasets with too few groups.

With georeferenced images the ``split`` record says what ground each pair of splits shares
(0 by construction, measured all the same: :func:`engine.data.build.footprints.shared_areas`).

When there are too few groups for the requested splits the plan is an error that names
``--split-by blocks:N`` with a suggested N: a validation split is never dropped silently.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from engine.data.build.footprints import Footprints, connected, overlapping, shared_areas
from engine.data.shards.manifest import SPLITS
from engine.data.sources.imageio import image_size
from engine.data.sources.pairing import Pair
from engine.data.sources.pictures import ImageReadError
from engine.errors import UserError

SPLIT_BY_HELP = "group | blocks:N"
FLAT_FOLDER = 8  # more images than this, each its own group in one folder: a warning


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


def block_counts(size: tuple[int, int], tile: int, block_tiles: int) -> tuple[int, int]:
    """Blocks of an image of ``size`` (H, W) along its rows and columns.

    Blocks are N×N tiles from the top-left; a last block shorter than half a block joins
    the one before it (a 300 px chip at ``--tile 288 --split-by blocks:1`` is one block),
    so an image is never cut into a sliver on the other side of a split.
    """
    side = tile * block_tiles
    rows, cols = ((2 * length + side) // (2 * side) for length in size)
    return max(rows, 1), max(cols, 1)


def block_of(
    row: int, col: int, tile: int, block_tiles: int, counts: tuple[int, int]
) -> tuple[int, int]:
    """The ``(block row, block col)`` of the tile whose top-left pixel is ``(row, col)``.

    ``counts`` is the image's :func:`block_counts`: the last block takes the remainder.
    """
    side = tile * block_tiles
    return min(row // side, counts[0] - 1), min(col // side, counts[1] - 1)


def block_window(
    cell: tuple[int, int], size: tuple[int, int], tile: int, block_tiles: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The pixel ``(rows, cols)`` (half-open) of block ``cell`` of an image of ``size``."""
    side = tile * block_tiles
    counts = block_counts(size, tile, block_tiles)
    spans = []
    for index, count, length in zip(cell, counts, size):
        spans.append((index * side, length if index == count - 1 else (index + 1) * side))
    return spans[0], spans[1]


@dataclass(frozen=True)
class PairSplit:
    """Where the tiles of one pair go: all to ``split``, or per block (``blocks``)."""

    split: str = ""
    block_tiles: int = 0
    blocks: dict[tuple[int, int], str] = field(default_factory=dict)
    block_grid: tuple[int, int] = (1, 1)  # the image's block_counts

    def at(self, row: int, col: int, tile: int) -> str:
        """The split of the tile whose top-left pixel is ``(row, col)``."""
        if not self.blocks:
            return self.split
        return self.blocks[block_of(row, col, tile, self.block_tiles, self.block_grid)]

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


def suggest_block_tiles(sizes: list[tuple[int, int]], tile: int, val: float, test: float) -> int:
    """A block size for ``--split-by blocks:N`` that gives every requested split blocks.

    The largest N with at least 2 / (smallest non-zero fraction) blocks in all, else 1.
    """
    fractions = [f for f in (val, test) if f > 0]
    target = max(1 + len(fractions), math.ceil(2 / min(fractions)) if fractions else 1)
    largest = max((math.ceil(max(s) / tile) for s in sizes), default=1)
    for n in range(largest, 0, -1):
        if sum(math.prod(block_counts(s, tile, n)) for s in sizes) >= target:
            return n
    return 1


def _describe(units: list[str], limit: int = 4) -> str:
    shown = ", ".join(units[:limit])
    return shown + (f", … ({len(units)} in all)" if len(units) > limit else "")


def flat_folder_warning(pairs: list[Pair], footprints: Footprints | None) -> str | None:
    """One line when many images without georeferencing are each their own group.

    That happens to a flat folder of images (no ``--group``, no folders, no CSV ``group``
    column): tiles of one scene or place may then land in train and test.
    """
    loose = [p for p in pairs if footprints is None or p.key not in footprints.shapes]
    if len(loose) <= FLAT_FOLDER or any("/" in p.key or p.group != p.key for p in loose):
        return None
    return (
        f"{len(loose)} images without georeferencing lie in one folder and each is its own "
        "group, so images of one scene can land in train and test: set groups with --group "
        "REGEX on the names (first capture group = group, e.g. --group '^([^_]+)_'), one "
        "folder per scene, or a 'group' column in --pairs-csv"
    )


def _joined_groups(pairs: list[Pair], footprints: Footprints | None) -> dict[str, str]:
    """``group → unit``: groups joined when any of their images' footprints overlap.

    A unit is named after its first group by name.
    """
    links = overlapping(footprints) if footprints else []
    by_group: dict[str, list[str]] = {}
    for pair in pairs:
        by_group.setdefault(pair.group, []).append(pair.key)
    links += [(keys[0], key) for keys in by_group.values() for key in keys[1:]]
    component = connected([p.key for p in pairs], links)
    members: dict[str, set[str]] = {}
    for pair in pairs:
        members.setdefault(component[pair.key], set()).add(pair.group)
    return {g: min(gs) for gs in members.values() for g in gs}


@dataclass(frozen=True)
class _Request:
    """What :func:`plan_splits` was asked for."""

    tile: int
    split_by: SplitBy
    val: float
    test: float
    seed: int

    def wanted(self) -> list[str]:
        """The splits that must get units."""
        return ["train"] + [s for s, f in (("val", self.val), ("test", self.test)) if f > 0]


def _plan_groups(
    pairs: list[Pair], sizes: dict, request: _Request, footprints: Footprints | None
) -> tuple[dict[str, PairSplit], dict]:
    """Whole groups, groups joined by overlapping footprints, to each split."""
    wanted = request.wanted()
    unit_of = _joined_groups(pairs, footprints)
    units = sorted(set(unit_of.values()))
    joined = sorted(
        sorted(g for g in unit_of if unit_of[g] == u) for u in units
        if sum(v == u for v in unit_of.values()) > 1
    )  # fmt: skip
    if len(units) < len(wanted):
        n = suggest_block_tiles(list(sizes.values()), request.tile, request.val, request.test)
        groups = sorted(unit_of)
        counted = f"{len(groups)} group(s) ({_describe(groups)})"
        if joined:
            counted += f", {len(units)} once groups whose footprints overlap are joined,"
        raise SplitError(
            f"{counted} are too few for {' + '.join(wanted)} (one group each): pass "
            f"--split-by blocks:{n} to split {n}x{n}-tile blocks of each image instead (seeded, "
            "no tile on two sides; overlapping images stay whole), --group REGEX for finer "
            "groups, or --val 0 / --test 0"
        )
    assignment = split_groups(units, request.val, request.test, request.seed)
    plan = {p.key: PairSplit(assignment[unit_of[p.group]]) for p in pairs}
    record = {"units": {s: sum(a == s for a in assignment.values()) for s in SPLITS}}
    return plan, record | ({"joined": joined} if joined else {})


def _plan_blocks(
    pairs: list[Pair], sizes: dict, request: _Request, footprints: Footprints | None
) -> tuple[dict[str, PairSplit], dict]:
    """N×N-tile blocks of each image to each split; images that overlap others stay whole."""
    tile, n, wanted = request.tile, request.split_by.block_tiles, request.wanted()
    keys = [p.key for p in pairs]
    component = connected(keys, overlapping(footprints) if footprints else [])
    whole: dict[str, list[str]] = {}
    for key in keys:
        whole.setdefault(component[key], []).append(key)
    whole = {root: members for root, members in whole.items() if len(members) > 1}
    ids: dict[str, tuple[str, tuple[int, int] | None]] = {f"{r}#whole": (r, None) for r in whole}
    for key in keys:
        if component[key] not in whole:
            rows, cols = block_counts(sizes[key], tile, n)
            ids |= {f"{key}#{r},{c}": (key, (r, c)) for r in range(rows) for c in range(cols)}
    if len(ids) < len(wanted):
        smaller = suggest_block_tiles(list(sizes.values()), tile, request.val, request.test)
        kept = f", {sum(map(len, whole.values()))} overlapping images kept whole" if whole else ""
        raise SplitError(
            f"--split-by blocks:{n}: {len(ids)} block(s) of {n}x{n} tiles of {tile} px{kept} are "
            f"too few for {' + '.join(wanted)}; try --split-by blocks:{min(smaller, n - 1) or 1}"
        )
    assignment = split_groups(list(ids), request.val, request.test, request.seed)
    per_pair: dict[str, dict[tuple[int, int], str]] = {key: {} for key in keys}
    plan: dict[str, PairSplit] = {}
    for unit, split in assignment.items():
        key, cell = ids[unit]
        if cell is None:
            plan |= {member: PairSplit(split) for member in whole[key]}
        else:
            per_pair[key][cell] = split
    for key, cells in per_pair.items():
        if key not in plan:
            plan[key] = PairSplit("", n, cells, block_counts(sizes[key], tile, n))
    units = {s: sum(a == s for a in assignment.values()) for s in SPLITS}
    record = {"block_tiles": n, "units": units}
    return plan, record | ({"joined": sorted(whole.values())} if whole else {})


def plan_splits(
    pairs: list[Pair],
    sizes: dict[str, tuple[int, int]],
    tile: int,
    split_by: SplitBy,
    val: float,
    test: float,
    seed: int,
    footprints: Footprints | None = None,
) -> tuple[dict[str, PairSplit], dict]:
    """Decide the split of every tile.

    Georeferenced images whose footprints overlap go to one split: with ``group`` their
    groups are joined into one unit, with ``blocks`` they are kept whole (one unit), not cut.

    Args:
        pairs: The pairs, with their groups.
        sizes: ``key → (height, width)`` (see :func:`image_sizes`).
        tile: Tile edge in pixels.
        split_by: Whole groups, or blocks of N×N tiles.
        val: Fraction of units (groups or blocks) for validation.
        test: Fraction of units for testing.
        seed: Seed of the assignment.
        footprints: The georeferenced images' footprints (:func:`read_footprints`), if any.

    Returns:
        ``key → PairSplit`` and the manifest's ``split`` record (how the split was made;
        with footprints, the ground area each pair of splits shares).

    Raises:
        SplitError: when the fractions are invalid or the units are too few for every
            requested split (the message names ``--split-by blocks:N`` or a smaller N).
    """
    check_fractions(val, test)
    request = _Request(tile, split_by, val, test, seed)
    record: dict = {"by": split_by.by, "seed": seed, "fractions": {"val": val, "test": test}}
    plan_units = _plan_groups if split_by.by == "group" else _plan_blocks
    plan, how = plan_units(pairs, sizes, request, footprints)
    record |= how
    if footprints is not None:
        record["footprints"] = {
            "crs": footprints.crs_name(),
            "area_unit": footprints.area_unit(),
            "images": len(footprints.shapes),
            "resolution_m": footprints.resolution_m(),
        }
        record["shared_area"] = shared_areas(_regions(plan, sizes, tile, footprints), footprints)
    return plan, record


def _regions(
    plan: dict[str, PairSplit], sizes: dict, tile: int, footprints: Footprints
) -> dict[str, list]:
    """``split → footprints`` of the georeferenced images or blocks it holds."""
    regions: dict[str, list] = {s: [] for s in SPLITS}
    for key, shape in footprints.shapes.items():
        pair_split = plan[key]
        if not pair_split.blocks:
            regions[pair_split.split].append(shape)
            continue
        for cell, split in pair_split.blocks.items():
            rows, cols = block_window(cell, sizes[key], tile, pair_split.block_tiles)
            regions[split].append(footprints.window(key, rows, cols))
    return regions


def describe_shared_area(record: dict) -> str | None:
    """``ground shared by splits (EPSG:…, metre²): train/val 0, …`` from a ``split`` record."""
    if "shared_area" not in record:
        return None
    where = record["footprints"]
    shared = ", ".join(f"{pair} {area:.6g}" for pair, area in record["shared_area"].items())
    return (
        f"ground shared by splits ({where['images']} georeferenced images, {where['crs']}, "
        f"{where['area_unit']}): {shared or 'one split only'}"
    )


def groups_by_split(pairs: list[Pair], plan: dict[str, PairSplit]) -> dict[str, list[str]]:
    """The groups with tiles in each split (disjoint for ``group`` splits)."""
    found: dict[str, set[str]] = {s: set() for s in SPLITS}
    for pair in pairs:
        for split in plan[pair.key].splits():
            found[split].add(pair.group)
    return {s: sorted(g) for s, g in found.items()}
