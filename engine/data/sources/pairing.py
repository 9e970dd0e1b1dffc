r"""Pair image files with mask files by key, and assign each pair to a group.

A file's key is its path relative to the glob's fixed prefix, with folders named like
``images``/``masks`` dropped and the extension removed. So both the Dubai layout
(``Tile 1/images/x.jpg`` ↔ ``Tile 1/masks/x.png``, key ``Tile 1/x``) and two parallel trees
(``imgs/a/x.tif`` ↔ ``labels/a/x.png``, key ``a/x``) pair up.

Names that differ in more than folders pair with a key regex per side (``image_key`` /
``mask_key``: the capture groups, joined, become the key; ``scene_img_3`` and
``scene_lbl_3`` with ``(.*)_img(_\d+)`` and ``(.*)_lbl(_\d+)`` both give ``scene_3``) or a
template that turns an image key into its mask's key (``mask_from='{key}_mask'``; fields
``key``, ``stem`` and ``folder``). A CSV key is the image path relative to the CSV's folder
(or to the images' common folder when some lie outside it), by the same rule, so ``--group``
matches the same thing either way.

A file reached twice (a symlink loop under ``**``) counts once, and keys that become the same
tar member name (``a b`` / ``a_b``) are an error naming both files.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.data.sources.formats import is_raster
from engine.errors import UserError

# Folder names that say "these are the images" or "these are the masks", not where.
ROLE_FOLDERS = frozenset(
    {"images", "image", "imgs", "img", "masks", "mask", "labels", "label", "gt", "annotations"}
)


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
        Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file() and is_raster(p)
    ]
    if not matches:
        raise PairingError(f"--{what} {pattern!r} matched no image files")
    return unique_files(matches)


def unique_files(paths: list[Path]) -> list[Path]:
    """Drop paths that reach a file already listed (symlinks, loops under ``**``), sorted.

    Of the paths to one real file the shortest (then the first in sort order) is kept.
    """
    kept: dict[str, Path] = {}
    for path in sorted(paths, key=lambda p: (len(p.parts), str(p))):
        kept.setdefault(os.path.realpath(path), path)
    return sorted(kept.values())


def file_key(path: Path, root: Path, pattern: str | None = None, what: str = "file") -> str:
    """The pairing key of ``path`` under ``root`` (see module docstring).

    Args:
        path: The file.
        root: The folder keys are relative to.
        pattern: Optional key regex, searched in the default key: its capture groups,
            joined, become the key (no groups: the whole match).
        what: ``images`` or ``masks``, for the error message.

    Raises:
        PairingError: when ``pattern`` does not match.
    """
    relative = PurePosixPath(path.relative_to(root).as_posix())
    folders = [p for p in relative.parent.parts if p.lower() not in ROLE_FOLDERS]
    key = str(PurePosixPath(*folders, relative.stem)) if folders else relative.stem
    if not pattern:
        return key
    found = re.search(pattern, key)
    if not found:
        option = "--image-key" if what == "images" else "--mask-key"
        raise PairingError(f"{path}: {option} {pattern!r} does not match its key {key!r}")
    return "".join(g or "" for g in found.groups()) if found.groups() else found.group(0)


def safe_key(key: str) -> str:
    """The key as it appears in tar member names.

    Characters other than letters, digits, ``/``, ``_`` and ``-`` become ``_``.
    """
    return "".join(c if c.isalnum() or c in "/_-" else "_" for c in key)


def check_member_keys(pairs: list[Pair]) -> None:
    """Refuse pairs whose keys become the same tar member name.

    Raises:
        PairingError: naming both images and the shared name.
    """
    seen: dict[str, Pair] = {}
    for pair in pairs:
        other = seen.setdefault(safe_key(pair.key), pair)
        if other is not pair:
            raise PairingError(
                f"{other.image} and {pair.image}: keys {other.key!r} and {pair.key!r} both "
                f"become the shard member name {safe_key(pair.key)!r}; rename one of them"
            )


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


def _by_key(paths: list[Path], root: Path, what: str, pattern: str | None) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    for path in paths:
        key = file_key(path, root, pattern, what)
        if key in keyed:
            raise PairingError(f"two {what} share the key {key!r}: {keyed[key]} and {path}")
        keyed[key] = path
    return keyed


def mask_key_for(image_key: str, template: str) -> str:
    """The mask key an image key points to under ``template``.

    Fields: ``{key}`` (the image key), ``{stem}`` (its last part), ``{folder}`` (the rest);
    e.g. ``'{key}_mask'``.

    Raises:
        PairingError: for an unknown field or a malformed template.
    """
    key = PurePosixPath(image_key)
    folder = "" if str(key.parent) == "." else str(key.parent)
    try:
        return template.format(key=image_key, stem=key.name, folder=folder)
    except (KeyError, IndexError, ValueError) as error:
        raise PairingError(
            f"--mask-from {template!r}: {error!r}; use the fields {{key}}, {{stem}}, {{folder}}"
        ) from error


PAIRING_OPTIONS = (
    "pair other names with --image-key/--mask-key REGEX (capture groups form the key), "
    "--mask-from TEMPLATE (e.g. '{key}_mask'), or --pairs-csv FILE (columns image,mask)"
)
SHOWN = 8  # unpaired files and keys listed in the error


def _unpaired_error(
    lonely_images: dict[str, Path], lonely_masks: dict[str, Path], all_images: int
) -> PairingError:
    """One error that shows the computed keys side by side, the files, and the options."""
    image_keys, mask_keys = sorted(lonely_images), sorted(lonely_masks)
    width = max((len(repr(k)) for k in image_keys[:SHOWN]), default=0)
    width = max(width, len("image keys"))
    lines = [
        f"unpaired files ({len(image_keys)} of {all_images} images without a mask, "
        f"{len(mask_keys)} masks without an image); the keys must match:",
        f"  {'image keys':<{width}} | mask keys",
    ]
    for row in range(min(SHOWN, max(len(image_keys), len(mask_keys)))):
        left = repr(image_keys[row]) if row < len(image_keys) else ""
        right = repr(mask_keys[row]) if row < len(mask_keys) else ""
        lines.append(f"  {left:<{width}} | {right}")
    lines += [f"  image without mask: {lonely_images[k]}" for k in image_keys[:SHOWN]]
    lines += [f"  mask without image: {lonely_masks[k]}" for k in mask_keys[:SHOWN]]
    hidden = max(len(image_keys) - SHOWN, 0) + max(len(mask_keys) - SHOWN, 0)
    if hidden:
        lines.append(f"  … and {hidden} more")
    lines.append(PAIRING_OPTIONS)
    return PairingError("\n".join(lines))


def pair_by_glob(
    images: str,
    masks: str,
    group_pattern: str | None = None,
    image_key: str | None = None,
    mask_key: str | None = None,
    mask_from: str | None = None,
) -> list[Pair]:
    """Pair the files matched by two globs (see the module docstring for keys).

    Args:
        images: Glob of the image files (``**`` allowed).
        masks: Glob of the mask files.
        group_pattern: ``--group`` regex on the pair key (the image's key).
        image_key: Key regex for images (capture groups joined = key).
        mask_key: Key regex for masks.
        mask_from: Template turning an image key into its mask's key.

    Raises:
        PairingError: showing unpaired keys side by side, the files, and the options.
    """
    image_files = _by_key(expand_glob(images, "images"), _glob_root(images), "images", image_key)
    mask_files = _by_key(expand_glob(masks, "masks"), _glob_root(masks), "masks", mask_key)
    wanted = {k: mask_key_for(k, mask_from) if mask_from else k for k in image_files}
    lonely_images = {wanted[k]: image_files[k] for k in image_files if wanted[k] not in mask_files}
    lonely_masks = {k: p for k, p in mask_files.items() if k not in set(wanted.values())}
    if lonely_images or lonely_masks:
        raise _unpaired_error(lonely_images, lonely_masks, len(image_files))
    pairs = [
        Pair(key, image_files[key], mask_files[wanted[key]], group_of(key, group_pattern))
        for key in sorted(image_files)
    ]
    check_member_keys(pairs)
    return pairs


def _csv_root(images: list[Path], base: Path) -> Path:
    """The folder CSV keys are relative to: the CSV's folder, else the images' common folder."""
    resolved = [Path(os.path.abspath(p)) for p in images]
    base = Path(os.path.abspath(base))
    if all(p.is_relative_to(base) for p in resolved):
        return base
    return Path(os.path.commonpath([p.parent for p in resolved]))


def pair_from_csv(path: str | Path, group_pattern: str | None = None) -> list[Pair]:
    """Read pairs from a CSV with columns ``image,mask`` (and optional ``group``).

    Relative paths are taken relative to the CSV's folder. The key is the image path
    relative to the CSV's folder (or to the images' common folder when some lie outside
    it), role folders dropped, without extension: as with globs, never an absolute path.

    Raises:
        PairingError: naming the CSV and the row for missing columns or files, and
            duplicate images (by real path).
    """
    path = Path(path)
    base = path.parent
    rows: list[tuple[int, Path, Path, str]] = []
    try:
        handle = path.open(newline="")
    except OSError as error:
        raise PairingError(f"{path}: cannot read the pairs CSV: {error.strerror}") from error
    with handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"image", "mask"} <= set(reader.fieldnames):
            raise PairingError(f"{path}: needs a header with columns 'image' and 'mask'")
        for row_number, row in enumerate(reader, start=2):
            image, mask = base / (row["image"] or ""), base / (row["mask"] or "")
            for file in (image, mask):
                if not file.is_file():
                    raise PairingError(f"{path}:{row_number}: file not found: {file}")
            rows.append((row_number, image, mask, row.get("group") or ""))
    if not rows:
        raise PairingError(f"{path}: no rows")
    root = _csv_root([r[1] for r in rows], base)
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for row_number, image, mask, group in rows:
        first = seen.setdefault(os.path.realpath(image), row_number)
        if first != row_number:
            raise PairingError(f"{path}:{row_number}: image {image} is also on row {first}")
        key = file_key(Path(os.path.abspath(image)), root)
        pairs.append(Pair(key, image, mask, group or group_of(key, group_pattern)))
    keys: dict[str, Pair] = {}
    for pair in pairs:
        other = keys.setdefault(pair.key, pair)
        if other is not pair:
            raise PairingError(
                f"{path}: images {other.image} and {pair.image} have the same key {pair.key!r}"
            )
    check_member_keys(pairs)
    return sorted(pairs, key=lambda p: p.key)


def pairs_from_vector(
    images: str,
    vector: str | Path,
    group_pattern: str | None = None,
    image_key: str | None = None,
) -> list[Pair]:
    """Pair every image matched by a glob with one vector label file.

    Each pair's ``mask`` is the vector file; the builder rasterises it onto the image's grid
    (:class:`engine.data.sources.vector_labels.VectorLabels`). Keys and groups come from the images
    exactly as in :func:`pair_by_glob`.

    Args:
        images: Glob of the image files (``**`` allowed).
        vector: The vector label file (GeoPackage, GeoJSON, Shapefile, ...).
        group_pattern: ``--group`` regex on the pair key.
        image_key: Key regex for images (capture groups joined = key).

    Raises:
        PairingError: when the vector file is missing, no image matches, or two images
            share a key or a tar member name.
    """
    vector = Path(vector)
    if not vector.is_file():
        raise PairingError(f"--vector {str(vector)!r}: vector label file not found")
    image_files = _by_key(expand_glob(images, "images"), _glob_root(images), "images", image_key)
    pairs = [
        Pair(key, image_files[key], vector, group_of(key, group_pattern))
        for key in sorted(image_files)
    ]
    check_member_keys(pairs)
    return pairs
