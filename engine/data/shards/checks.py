"""What every shard sample must be: the manifest's codecs, bands and type, masks of classes.

Checks run on what a member's header claims before anything is decoded (nothing is ever
allocated from a claimed shape), then on the arrays; a sample holds each member name once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
from webdataset.tariterators import base_plus_ext

from engine.data.shards.manifest import Manifest
from engine.data.shards.store import ShardReadError


class Codecs(NamedTuple):
    """Codecs of a shard folder's ``image.*`` and ``mask.*`` members, and what they must hold.

    ``tile``, ``num_classes``, ``bands`` and ``dtype`` come from the manifest (``tile``
    and ``num_classes`` ``None``: not checked): every decoded sample is checked to be a
    ``tile x tile x bands`` image of ``dtype`` and a uint8 ``tile x tile`` mask with values
    below ``num_classes`` or equal to ``ignore_index``.
    """

    image: str
    mask: str
    tile: int | None = None
    num_classes: int | None = None
    ignore_index: int = 255
    bands: int = 3
    dtype: str = "uint8"

    @classmethod
    def of(cls, manifest: Manifest) -> Codecs:
        """The codecs, tile size, classes, band count and band type the manifest names."""
        bands = manifest.normalization.bands
        return cls(
            manifest.image_codec,
            manifest.mask_codec,
            manifest.tile_size,
            manifest.num_classes,
            manifest.ignore_index,
            len(bands),
            bands[0].dtype,
        )


def check_image(image, codecs: Codecs) -> None:
    """An image's type, band count and tile size (of an array, or of what a header claims).

    Run on headers before any array is made from them, so a claimed shape is never
    allocated.

    Raises:
        ValueError: naming what differs from the manifest.
    """
    if image.dtype != np.dtype(codecs.dtype):
        raise ValueError(f"image is {image.dtype}, but the manifest's bands are {codecs.dtype}")
    if len(image.shape) != 3:
        raise ValueError(f"image {image.shape} is not HxWx{codecs.bands}")
    if image.shape[2] != codecs.bands:
        raise ValueError(f"image has {image.shape[2]} bands, but the manifest lists {codecs.bands}")
    tile = codecs.tile
    if tile is not None and image.shape[:2] != (tile, tile):
        raise ValueError(
            f"image {image.shape} is not {tile}x{tile}x{codecs.bands} (tile_size in the manifest)"
        )


def check_mask(mask, codecs: Codecs) -> None:
    """A mask's type and tile size (of an array, or of what a header claims).

    Raises:
        ValueError: naming what differs from the manifest.
    """
    if mask.dtype != np.uint8:
        raise ValueError(f"mask is {mask.dtype}; shards hold uint8 masks")
    tile = codecs.tile
    if len(mask.shape) != 2 or (tile is not None and mask.shape != (tile, tile)):
        raise ValueError(f"mask {mask.shape} is not {tile or 'H'}x{tile or 'W'} (tile_size)")


def check_layout(image, mask, codecs: Codecs) -> None:
    """Dtypes and shapes (of arrays, or of ``NpyHeader`` headers) against the manifest."""
    check_image(image, codecs)
    check_mask(mask, codecs)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape} and mask {mask.shape} do not form a sample")


def check_values(mask: np.ndarray, codecs: Codecs) -> None:
    """Mask values are classes or ignore (one ``max`` per mask when clean)."""
    if (count := codecs.num_classes) is None or mask.size == 0:
        return
    top = int(mask.max())
    if top >= count and top == codecs.ignore_index:  # ignore present: the largest other value
        if top == 255:
            top = int((mask + np.uint8(1)).max()) - 1  # 255 wraps to 0
        else:
            top = int(np.max(mask, where=mask != top, initial=0))
    if top >= count:
        values = np.unique(mask)
        bad = [int(v) for v in values if v >= count and v != codecs.ignore_index]
        raise ValueError(
            f"mask values {bad} are neither a class (0..{count - 1}) nor ignore "
            f"({codecs.ignore_index})"
        )


def check_members(image, mask, codecs: Codecs) -> None:
    """Types, shapes and mask values against the manifest."""
    check_layout(image, mask, codecs)
    check_values(mask, codecs)


def unique_members(members: Iterable[dict], shard: object) -> Iterator[dict]:
    """The webdataset file dicts of one shard, refusing a member name seen twice in a sample.

    Raises:
        ShardReadError: naming the shard, the sample and the member.
    """
    current: str | None = None
    seen: set[str] = set()
    for member in members:
        if member:  # {} marks the end of the shard
            key, suffix = base_plus_ext(member["fname"])
            if key != current:
                current, seen = key, set()
            if key is not None:
                suffix = suffix.lower()
                if suffix in seen:
                    raise duplicate_member(shard, key, member["fname"])
                seen.add(suffix)
        yield member


def duplicate_member(shard: object, key: str, name: str) -> ShardReadError:
    """The error for a member name that appears twice in one sample."""
    return ShardReadError(
        f"{shard}: sample {key}: member {name} appears twice (one member per name and sample)"
    )
