"""Where the shard builder cuts each tile of an image.

Tiles follow a grid of ``tile`` steps from the top-left. Train tiles at the bottom or right
edge end at the image's edge instead of holding padding (shards/README.md, Tar members).
"""

from __future__ import annotations

from collections.abc import Callable


def tile_windows(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Cut an image into a grid of ``(row, col, height, width)`` windows of at most ``tile``."""
    return [
        (row, col, min(tile, height - row), min(tile, width - col))
        for row in range(0, height, tile)
        for col in range(0, width, tile)
    ]


def train_window_start(
    row: int, col: int, size: tuple[int, int], tile: int, split_at: Callable[[int, int], str]
) -> tuple[int, int]:
    """Where the train tile of grid cell ``(row, col)`` is cut from an image of ``size`` (H, W).

    A grid tile at the bottom or right edge holds only the image's last strip; the rest
    would be padding (black pixels the network trains on, ignored labels). Where the image
    is at least a tile long in that direction, the tile is moved back to end at the edge
    instead, overlapping its neighbour, so it holds only image pixels. It moves only as far
    as every grid cell it then covers is train too: no val or test pixel (``--split-by
    blocks``) enters a train tile. Val and test tiles stay on the grid, padded, so each of
    their pixels is scored once.

    Args:
        row: The grid cell's top row.
        col: The grid cell's left column.
        size: The image's ``(height, width)``.
        tile: The tile edge.
        split_at: The split of the grid cell at ``(row, col)`` (``PairSplit.at``).

    Returns:
        The top-left pixel of the tile to store.
    """
    snapped_row = min(row, max(size[0] - tile, 0))
    snapped_col = min(col, max(size[1] - tile, 0))

    def all_train(top: int, left: int) -> bool:
        rows = range(top - top % tile, min(top + tile, size[0]), tile)
        cols = range(left - left % tile, min(left + tile, size[1]), tile)
        return all(split_at(r, c) == "train" for r in rows for c in cols)

    candidates = [(snapped_row, snapped_col), (snapped_row, col), (row, snapped_col)]
    return next((start for start in candidates if all_train(*start)), (row, col))
