"""The shard manifest ``dataset.json``: classes, palette, normalisation, splits."""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.data.shards.codecs import IMAGE_CODECS
from engine.data.shards.normalize import BAND_DTYPES, Normalization
from engine.data.shards.store import ShardUrl, as_location, open_shard_stream
from engine.errors import UserError
from engine.jsonfile import MetadataError, metadata_limit, parse_json, read_json

MANIFEST_NAME = "dataset.json"
SPLITS = ("train", "val", "test")


class ManifestError(UserError):
    """A shard folder or its manifest is missing or malformed."""


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split`` (``train-000000.tar``)."""
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class SplitInfo:
    """One split: its shard files (absolute paths, or URLs), samples per shard and groups.

    ``shard_sha256`` / ``shard_bytes``: each shard's SHA-256 (64 lower-case hex digits) and
    size as the builder wrote it, one entry per shard (``None`` where unknown); empty for a
    manifest written before digests were recorded.
    """

    name: str
    shards: tuple[Path | ShardUrl, ...]
    shard_samples: tuple[int, ...]
    groups: tuple[str, ...]
    shard_sha256: tuple[str | None, ...] = ()
    shard_bytes: tuple[int | None, ...] = ()

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return sum(self.shard_samples)


@dataclass(frozen=True)
class Manifest:
    """A loaded ``dataset.json`` with the shard folder (or URL) it describes.

    ``data`` keeps the full JSON mapping for fields not exposed as properties.
    """

    root: Path | ShardUrl
    data: dict

    @property
    def class_names(self) -> list[str]:
        """Class names in index order."""
        return [c["name"] for c in self.data["classes"]]

    @property
    def palette(self) -> list[str]:
        """Display colours (``#RRGGBB``) in class-index order."""
        return [c["color"] for c in self.data["classes"]]

    @property
    def num_classes(self) -> int:
        """Number of classes (ignore excluded)."""
        return len(self.data["classes"])

    @property
    def ignore_index(self) -> int:
        """Mask value of ignored pixels."""
        return int(self.data["ignore_index"])

    @property
    def tile_size(self) -> int:
        """Edge of every sample in pixels."""
        return int(self.data["tile_size"])

    @property
    def image_codec(self) -> str:
        """Codec of the ``image.*`` members."""
        return self.data["image_codec"]

    @property
    def mask_codec(self) -> str:
        """Codec of the ``mask.*`` members (``png`` in manifests that do not say)."""
        return self.data.get("mask_codec", "png")

    @property
    def normalization(self) -> Normalization:
        """Per-band statistics and the model's input transform (version 2 or 3)."""
        return Normalization.from_manifest(self.data)

    @property
    def in_channels(self) -> int:
        """Bands per image (the model's input channels)."""
        return self.normalization.in_channels

    @property
    def mean(self) -> list[float]:
        """Per-band mean on each band's unit scale (0–1 for uint8; see :mod:`.normalize`)."""
        return self.normalization.unit_mean_std()[0]

    @property
    def std(self) -> list[float]:
        """Per-band std on each band's unit scale."""
        return self.normalization.unit_mean_std()[1]

    @property
    def split_method(self) -> dict:
        """How the splits were made (``{"by": "group"}`` for manifests that do not say).

        Keys: ``by`` (``group`` or ``blocks``), ``block_tiles`` (blocks only), ``seed``,
        ``fractions`` and ``units`` (see shards/README.md).
        """
        return dict(self.data.get("split", {"by": "group"}))

    def has_split(self, name: str) -> bool:
        """Whether the manifest lists a non-empty split ``name``."""
        return name in self.data["splits"]

    def split(self, name: str) -> SplitInfo:
        """Shards and counts of one split.

        Raises:
            ManifestError: when the split is absent.
        """
        if name not in self.data["splits"]:
            raise ManifestError(
                f"{self.root / MANIFEST_NAME}: no split {name!r} "
                f"(have {sorted(self.data['splits'])})"
            )
        info = self.data["splits"][name]
        return SplitInfo(
            name,
            tuple(self.root / s for s in info["shards"]),
            tuple(int(n) for n in info["shard_samples"]),
            tuple(info.get("groups", ())),
            tuple(info.get("shard_sha256", ())),
            tuple(info.get("shard_bytes", ())),
        )


REQUIRED_KEYS = ("classes", "ignore_index", "tile_size", "image_codec", "splits")
FORMAT_VERSION = 3  # the newest shard format this code reads and writes (shards/README.md)
#: A shard name is a plain file name in the shard folder: no scheme, folder, ``..``, leading
#: ``.``/``-``, whitespace or shell character (a ``pipe:`` location puts it in a command).
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_NAME = 255  # characters in a shard file name (a file system's limit)
MAX_TILE = 65536
MAX_BANDS = 1024
MAX_CLASSES = 255  # class indices below ignore_index (255) in uint8 masks
MAX_COUNT = 1 << 62  # samples or pixels: far above any dataset, below float64 trouble
SHA256 = re.compile(r"[0-9a-f]{64}")
COLOR = re.compile(r"#?([0-9A-Fa-f]{6}|[0-9A-Fa-f]{3})")


def _is_int(value: object, low: int = 0, high: int = MAX_COUNT) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_name(value: object) -> bool:
    return (
        isinstance(value, str) and 0 < len(value) <= MAX_NAME and bool(SHARD_NAME.fullmatch(value))
    )


def _check_digests(info: dict, count: int, where: str) -> None:
    """The optional ``shard_sha256`` / ``shard_bytes``: one entry per shard (null: unknown)."""
    for key, valid, form in (
        ("shard_sha256", lambda v: isinstance(v, str) and SHA256.fullmatch(v), "64 lower-hex"),
        ("shard_bytes", _is_int, "a byte count >= 0"),
    ):
        if key not in info:
            continue
        values = info[key]
        if not isinstance(values, list) or len(values) != count:
            raise ManifestError(f"{where}.{key} must be a list of {count} entries, one per shard")
        bad = [v for v in values if v is not None and not valid(v)]
        if bad:
            raise ManifestError(f"{where}.{key} entry {str(bad[0])[:80]!r} is not {form} or null")


def _check_split(name: object, info: object, path: Path | ShardUrl) -> None:
    where = f"{path}: splits[{name!r}]"
    if not isinstance(info, dict):
        raise ManifestError(f"{where} must be a mapping, not {type(info).__name__}")
    shards, counts = info.get("shards"), info.get("shard_samples")
    if not isinstance(shards, list) or not all(isinstance(s, str) and s for s in shards):
        raise ManifestError(f"{where}.shards must be a list of file names")
    bad = [s for s in shards if not _is_name(s)]
    if bad:
        raise ManifestError(
            f"{where}.shards: {bad[0][:80]!r} is not a plain file name inside the shard folder "
            "(letters, digits, '.', '_', '-'; no folder, scheme, '..' or leading '.'/'-')"
        )
    if not isinstance(counts, list) or not all(_is_int(n) for n in counts):
        raise ManifestError(f"{where}.shard_samples must be a list of non-negative integers")
    if len(shards) != len(counts):
        raise ManifestError(f"{path}: split {name!r} lists shards and counts of unequal length")
    total = info.get("num_samples", sum(counts))
    if not _is_int(total) or total != sum(counts):
        raise ManifestError(
            f"{where}.num_samples {total!r} is not a non-negative integer equal to the sum of "
            f"shard_samples ({sum(counts)})"
        )
    groups = info.get("groups", [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ManifestError(f"{where}.groups must be a list of group names")
    _check_digests(info, len(shards), where)


def _check_bands(data: dict, path: Path | ShardUrl) -> None:
    bands = data.get("bands")
    if not isinstance(bands, list) or not 1 <= len(bands) <= MAX_BANDS:
        raise ManifestError(f"{path}: bands must be a list of 1..{MAX_BANDS} band records")
    for index, band in enumerate(bands):
        where = f"{path}: bands[{index}]"
        if not isinstance(band, dict) or not isinstance(band.get("name"), str):
            raise ManifestError(f"{where} must be a mapping with a name")
        if band.get("dtype") not in BAND_DTYPES:
            raise ManifestError(f"{where}.dtype {band.get('dtype')!r} is not one of {BAND_DTYPES}")
        if not _is_number(band.get("mean")) or not _is_number(band.get("std")) or band["std"] < 0:
            raise ManifestError(f"{where}: mean and std must be finite numbers, std >= 0")
        display = band.get("display")
        if not isinstance(display, list) or len(display) != 2 or not all(map(_is_number, display)):
            raise ManifestError(f"{where}.display must be [low, high] (finite numbers)")
        nodata = band.get("nodata")
        if nodata is not None and not _is_number(nodata) and nodata != "nan":
            raise ManifestError(f"{where}.nodata {nodata!r} must be a number, 'nan' or null")
    rgb = data.get("rgb_bands")
    if rgb is not None and (
        not isinstance(rgb, list)
        or len(rgb) != 3
        or not all(_is_int(i) and i < len(bands) for i in rgb)
    ):
        raise ManifestError(
            f"{path}: rgb_bands {rgb!r} must be null or 3 band indices below {len(bands)}"
        )


def _check_classes(data: dict, path: Path | ShardUrl) -> None:
    classes = data["classes"]
    if (
        not isinstance(classes, list)
        or not 1 <= len(classes) <= MAX_CLASSES
        or not all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("color"), str)
            for c in classes
        )
    ):
        raise ManifestError(
            f"{path}: classes must be a non-empty list of {{name, color}} mappings "
            f"(at most {MAX_CLASSES})"
        )
    colors = [c["color"] for c in classes if not COLOR.fullmatch(c["color"])]
    if colors:
        raise ManifestError(f"{path}: class colour {colors[0][:40]!r} is not #RRGGBB")
    if "num_classes" in data and data["num_classes"] != len(classes):
        raise ManifestError(
            f"{path}: num_classes {data['num_classes']!r} differs from the {len(classes)} classes"
        )
    ignore = data["ignore_index"]
    if not _is_int(ignore) or ignore > 255 or ignore < len(classes):
        raise ManifestError(
            f"{path}: ignore_index {ignore!r} must be an integer in {len(classes)}..255"
        )


def _check_counts(data: dict, path: Path | ShardUrl) -> None:
    """``class_pixels`` (split → pixels per class) and ``ignore_pixels`` (split → pixels)."""
    pixels, ignored = data.get("class_pixels", {}), data.get("ignore_pixels", {})
    size = len(data["classes"])
    if not isinstance(pixels, dict) or not all(
        isinstance(c, list) and len(c) == size and all(map(_is_int, c)) for c in pixels.values()
    ):
        raise ManifestError(
            f"{path}: class_pixels must map each split to {size} non-negative integers"
        )
    if not isinstance(ignored, dict) or not all(map(_is_int, ignored.values())):
        raise ManifestError(f"{path}: ignore_pixels must map each split to a non-negative integer")
    split = data.get("split", {"by": "group"})
    if not isinstance(split, dict) or split.get("by") not in ("group", "blocks"):
        raise ManifestError(f"{path}: split must be a mapping with by 'group' or 'blocks'")


def check_manifest_data(data: object, path: Path | ShardUrl) -> dict[str, Any]:
    """Check the types and ranges of a parsed ``dataset.json`` (one-line errors).

    Returns:
        ``data``, now known to be a manifest mapping.

    Raises:
        ManifestError: naming ``path``, the field and what it should be.
    """
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object, not {type(data).__name__}")
    version = data.get("version", 1)
    if not _is_int(version, 1):
        raise ManifestError(f"{path}: version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: shard format version {data['version']} is newer than this terraseg reads "
            f"({FORMAT_VERSION}); upgrade terraseg"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    _check_classes(data, path)
    if not _is_int(data["tile_size"], 1, MAX_TILE):
        raise ManifestError(
            f"{path}: tile_size {data['tile_size']!r} must be an integer in 1..{MAX_TILE}"
        )
    if data["image_codec"] not in IMAGE_CODECS:
        raise ManifestError(
            f"{path}: image_codec {data['image_codec']!r} is not one of {IMAGE_CODECS}"
        )
    if data.get("mask_codec", "png") not in ("png", "npy"):
        raise ManifestError(f"{path}: mask_codec {data['mask_codec']!r} is not 'png' or 'npy'")
    if version >= 3:
        _check_bands(data, path)
    else:
        for key in ("mean", "std"):
            value = data.get(key)
            if not isinstance(value, list) or len(value) != 3 or not all(map(_is_number, value)):
                raise ManifestError(f"{path}: {key} must be a list of 3 numbers, not {value!r}")
    _check_counts(data, path)
    if not isinstance(data["splits"], dict):
        raise ManifestError(f"{path}: splits must be a mapping of split name to shards")
    for name, info in data["splits"].items():
        _check_split(name, info, path)
    return data


def _read_remote(root: ShardUrl, path: ShardUrl) -> object:
    """``dataset.json`` at a URL: at most the metadata limit + 1 bytes are read."""
    try:
        with open_shard_stream(path) as stream:
            raw = stream.read(metadata_limit() + 1)
    except UserError as error:
        raise ManifestError(f"{error}; is {root} a terraseg shard location?") from error
    try:
        return parse_json(raw, path)
    except MetadataError as error:
        raise ManifestError(str(error)) from error


def _read_local(root: Path, path: Path) -> object:
    if not root.exists():
        raise ManifestError(f"{root}: shard folder not found")
    if not root.is_dir():
        raise ManifestError(f"{root}: is a file, not a shard folder")
    try:
        return read_json(path)
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: not found; is {root} a terraseg shard folder?") from error
    except MetadataError as error:
        raise ManifestError(str(error)) from error
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error}") from error


def _check_local_shards(manifest: Manifest, path: Path) -> None:
    """Every listed shard is a file here, of the size the manifest records (one stat each)."""
    for name in manifest.data["splits"]:
        split = manifest.split(name)
        sizes = split.shard_bytes or (None,) * len(split.shards)
        absent = []
        for shard, expected in zip(split.shards, sizes):
            try:
                info = os.stat(shard)
            except OSError:
                info = None
            if info is None or not stat.S_ISREG(info.st_mode):
                absent.append(shard.name)
            elif expected is not None and info.st_size != expected:
                raise ManifestError(
                    f"{path}: shard {shard.name} of split {name!r} is {info.st_size} bytes, the "
                    f"manifest records {expected} (a changed or truncated copy?)"
                )
        if absent:
            raise ManifestError(f"{path}: split {name!r} lists missing shards {absent}")


def load_manifest(folder: str | Path, *, check_shards: bool = True) -> Manifest:
    """Load and check the manifest of a shard folder or URL (see :mod:`engine.data.shards.store`).

    ``dataset.json`` is read with a size cap (``TERRASEG_MAX_METADATA_BYTES``) as strict JSON
    and its schema checked (:func:`check_manifest_data`). For a URL the manifest is read from
    the same place and shard locations stay URLs; that each listed shard exists is checked
    when it is read (one request per shard is not paid up front). In a folder each shard
    must exist with the size the manifest records (``shard_bytes``, where present), unless
    ``check_shards`` is False (:mod:`engine.data.shards.verify` reports each shard itself).

    Raises:
        ManifestError: naming the folder or file when the folder is missing, the manifest is
            missing, too large, not strict JSON, lacks keys, has fields of the wrong type, or
            lists shards that are not there, are not plain file names, or differ in size.
    """
    root = as_location(folder)
    if isinstance(root, ShardUrl):
        url = root / MANIFEST_NAME
        return Manifest(root, check_manifest_data(_read_remote(root, url), url))
    path = root / MANIFEST_NAME
    manifest = Manifest(root.resolve(), check_manifest_data(_read_local(root, path), path))
    if check_shards:
        _check_local_shards(manifest, path)
    return manifest
