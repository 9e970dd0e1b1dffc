"""Pair image files with mask files by key, and assign each pair to a group.

A file's key is its path relative to the glob's fixed prefix, with folders named like
``images``/``masks`` dropped and the extension removed. So both the Dubai layout
(``Tile 1/images/x.jpg`` ↔ ``Tile 1/masks/x.png``, key ``Tile 1/x``) and two parallel trees
(``imgs/a/x.tif`` ↔ ``labels/a/x.png``, key ``a/x``) pair up.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import UserError

# Folder names that say "these are the images" or "these are the masks", not where.
ROLE_FOLDERS = frozenset(
    {"images", "image", "imgs", "img", "masks", "mask", "labels", "label", "gt", "annotations"}
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"})


class PairingError(UserError):
    """Images and masks do not pair up; the message lists the files."""


@dataclass(frozen=True)
class Pair:
    """One image with its mask, its key and its group."""

    key: str
    image: Path
    mask: Path
    group: str


def _glob_root(pattern: str) -> Path:
    """The fixed leading part of a glob pattern (the folders before the first wildcard)."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    root = Path(*parts) if parts else Path(".")
    return root if root.is_dir() else root.parent


def expand_glob(pattern: str, what: str) -> list[Path]:
    """Expand a glob (``**`` allowed) to image files, sorted.

    Raises:
        PairingError: when nothing matches.
    """
    matches = [
        Path(p)
        for p in glob.glob(pattern, recursive=True)
        if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES
    ]
    if not matches:
        raise PairingError(f"--{what} {pattern!r} matched no image files")
    return sorted(matches)


def file_key(path: Path, root: Path) -> str:
    """The pairing key of ``path`` under ``root`` (see module docstring)."""
    relative = PurePosixPath(path.relative_to(root).as_posix())
    folders = [p for p in relative.parent.parts if p.lower() not in ROLE_FOLDERS]
    return str(PurePosixPath(*folders, relative.stem)) if folders else relative.stem


def group_of(key: str, pattern: str | None) -> str:
    """Group a key: by ``pattern`` (first capture group, else the match), else its folder.

    Raises:
        PairingError: when ``pattern`` does not match the key.
    """
    if pattern:
        found = re.search(pattern, key)
        if not found:
            raise PairingError(f"--group {pattern!r} does not match key {key!r}")
        return found.group(1) if found.groups() else found.group(0)
    parent = str(PurePosixPath(key).parent)
    return key if parent == "." else parent


def _by_key(paths: list[Path], root: Path, what: str) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    for path in paths:
        key = file_key(path, root)
        if key in keyed:
            raise PairingError(f"two {what} share the key {key!r}: {keyed[key]} and {path}")
        keyed[key] = path
    return keyed


def pair_by_glob(images: str, masks: str, group_pattern: str | None = None) -> list[Pair]:
    """Pair the files matched by two globs.

    Raises:
        PairingError: listing every unpaired image and mask.
    """
    image_files = _by_key(expand_glob(images, "images"), _glob_root(images), "images")
    mask_files = _by_key(expand_glob(masks, "masks"), _glob_root(masks), "masks")
    lonely_images = sorted(set(image_files) - set(mask_files))
    lonely_masks = sorted(set(mask_files) - set(image_files))
    if lonely_images or lonely_masks:
        lines = [f"  image without mask: {image_files[k]}" for k in lonely_images]
        lines += [f"  mask without image: {mask_files[k]}" for k in lonely_masks]
        raise PairingError("unpaired files (keys must match):\n" + "\n".join(lines))
    return [
        Pair(key, image_files[key], mask_files[key], group_of(key, group_pattern))
        for key in sorted(image_files)
    ]


def pair_from_csv(path: str | Path, group_pattern: str | None = None) -> list[Pair]:
    """Read pairs from a CSV with columns ``image,mask`` (and optional ``group``).

    Relative paths are taken relative to the CSV's folder.

    Raises:
        PairingError: naming the CSV and the row for missing columns or files.
    """
    path = Path(path)
    base = path.parent
    pairs: list[Pair] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "mask"} <= set(reader.fieldnames):
            raise PairingError(f"{path}: needs a header with columns 'image' and 'mask'")
        for row_number, row in enumerate(reader, start=2):
            image, mask = base / row["image"], base / row["mask"]
            for file in (image, mask):
                if not file.is_file():
                    raise PairingError(f"{path}:{row_number}: file not found: {file}")
            key = PurePosixPath(row["image"]).with_suffix("").as_posix()
            group = row.get("group") or group_of(key, group_pattern)
            pairs.append(Pair(key, image, mask, group))
    if not pairs:
        raise PairingError(f"{path}: no rows")
    keys = [p.key for p in pairs]
    if len(set(keys)) != len(keys):
        raise PairingError(f"{path}: duplicate image rows")
    return sorted(pairs, key=lambda p: p.key)
