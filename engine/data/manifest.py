"""The shard manifest ``dataset.json``: classes, palette, normalisation, splits."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from engine.data.imageio import IMAGE_CODECS
from engine.data.normalize import BAND_DTYPES, Normalization
from engine.data.shard_store import ShardUrl, as_location, read_bytes
from engine.errors import UserError

MANIFEST_NAME = "dataset.json"
SPLITS = ("train", "val", "test")


class ManifestError(UserError):
    """A shard folder or its manifest is missing or malformed."""


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split`` (``train-000000.tar``)."""
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class SplitInfo:
    """One split: its shard files (absolute paths, or URLs), samples per shard and groups."""

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
        )


REQUIRED_KEYS = ("classes", "ignore_index", "tile_size", "image_codec", "splits")
FORMAT_VERSION = 3  # the newest shard format this code reads and writes (shards/README.md)


def _is_int(value: object, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_split(name: object, info: object, path: Path) -> None:
    where = f"{path}: splits[{name!r}]"
    if not isinstance(info, dict):
        raise ManifestError(f"{where} must be a mapping, not {type(info).__name__}")
    shards, counts = info.get("shards"), info.get("shard_samples")
    if not isinstance(shards, list) or not all(isinstance(s, str) and s for s in shards):
        raise ManifestError(f"{where}.shards must be a list of file names")
    bad = [s for s in shards if Path(s).is_absolute() or ".." in Path(s).parts]
    if bad:
        raise ManifestError(f"{where}.shards must be names inside the shard folder, not {bad}")
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
    if not isinstance(groups, list):
        raise ManifestError(f"{where}.groups must be a list")


def _check_bands(data: dict, path: Path) -> None:
    bands = data.get("bands")
    if not isinstance(bands, list) or not bands:
        raise ManifestError(f"{path}: bands must be a non-empty list of band records")
    for index, band in enumerate(bands):
        where = f"{path}: bands[{index}]"
        if not isinstance(band, dict) or not isinstance(band.get("name"), str):
            raise ManifestError(f"{where} must be a mapping with a name")
        if band.get("dtype") not in BAND_DTYPES:
            raise ManifestError(f"{where}.dtype {band.get('dtype')!r} is not one of {BAND_DTYPES}")
        if not _is_number(band.get("mean")) or not _is_number(band.get("std")):
            raise ManifestError(f"{where}: mean and std must be numbers")
        if band["std"] < 0 or not math.isfinite(band["std"]) or not math.isfinite(band["mean"]):
            raise ManifestError(f"{where}: mean and std must be finite, std >= 0")
        display = band.get("display")
        if not isinstance(display, list) or len(display) != 2 or not all(map(_is_number, display)):
            raise ManifestError(f"{where}.display must be [low, high]")
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


def check_manifest_data(data: object, path: Path) -> None:
    """Check the types and ranges of a parsed ``dataset.json`` (one-line errors).

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
    classes = data["classes"]
    if (
        not isinstance(classes, list)
        or not classes
        or not all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("color"), str)
            for c in classes
        )
    ):
        raise ManifestError(f"{path}: classes must be a non-empty list of {{name, color}} mappings")
    if "num_classes" in data and data["num_classes"] != len(classes):
        raise ManifestError(
            f"{path}: num_classes {data['num_classes']!r} differs from the {len(classes)} classes"
        )
    ignore = data["ignore_index"]
    if not _is_int(ignore) or ignore > 255 or ignore < len(classes):
        raise ManifestError(
            f"{path}: ignore_index {ignore!r} must be an integer in {len(classes)}..255"
        )
    if not _is_int(data["tile_size"], 1):
        raise ManifestError(f"{path}: tile_size {data['tile_size']!r} must be a positive integer")
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
    if not isinstance(data["splits"], dict):
        raise ManifestError(f"{path}: splits must be a mapping of split name to shards")
    for name, info in data["splits"].items():
        _check_split(name, info, path)


def load_manifest(folder: str | Path) -> Manifest:
    """Load and check the manifest of a shard folder or URL (see :mod:`engine.data.shard_store`).

    For a URL the manifest is read from the same place and shard locations stay URLs; that
    each listed shard exists is checked when it is read (one request per shard is not paid
    up front).

    Raises:
        ManifestError: naming the folder or file when the folder is missing, the manifest is
            missing, not JSON, lacks keys, has fields of the wrong type, or lists shards that
            are not there.
    """
    root = as_location(folder)
    path = root / MANIFEST_NAME
    if isinstance(root, ShardUrl):
        try:
            data = json.loads(read_bytes(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ManifestError(f"{path}: not valid JSON: {error}") from error
        except UserError as error:
            raise ManifestError(f"{error}; is {root} a terraseg shard location?") from error
        check_manifest_data(data, path)
        return Manifest(root, data)
    if not root.exists():
        raise ManifestError(f"{root}: shard folder not found")
    if not root.is_dir():
        raise ManifestError(f"{root}: is a file, not a shard folder")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: not found; is {root} a terraseg shard folder?") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from error
    except OSError as error:
        raise ManifestError(f"{path}: cannot read: {error}") from error
    check_manifest_data(data, path)
    manifest = Manifest(root.resolve(), data)
    for name in data["splits"]:
        split = manifest.split(name)
        absent = [s.name for s in split.shards if not s.is_file()]
        if absent:
            raise ManifestError(f"{path}: split {name!r} lists missing shards {absent}")
    return manifest
