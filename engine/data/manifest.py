"""The shard manifest ``dataset.json``: classes, palette, normalisation, splits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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
    """One split: its shard files (absolute), samples per shard and groups."""

    name: str
    shards: tuple[Path, ...]
    shard_samples: tuple[int, ...]
    groups: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        """Samples in the split."""
        return sum(self.shard_samples)


@dataclass(frozen=True)
class Manifest:
    """A loaded ``dataset.json`` with the shard folder it describes.

    ``data`` keeps the full JSON mapping for fields not exposed as properties.
    """

    root: Path
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
    def mean(self) -> list[float]:
        """Per-channel mean on the 0–1 scale (train split)."""
        return list(self.data["mean"])

    @property
    def std(self) -> list[float]:
        """Per-channel std on the 0–1 scale (train split)."""
        return list(self.data["std"])

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


REQUIRED_KEYS = ("classes", "ignore_index", "tile_size", "image_codec", "mean", "std", "splits")
FORMAT_VERSION = 2  # the newest shard format this code reads (shards/README.md)


def load_manifest(folder: str | Path) -> Manifest:
    """Load and check the manifest of a shard folder.

    Raises:
        ManifestError: naming the file when it is missing, not JSON, lacks keys, or lists
            shards that are not there.
    """
    root = Path(folder)
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ManifestError(f"{path}: not found; is {root} a terraseg shard folder?") from error
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON: {error}") from error
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    if int(data.get("version", 1)) > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: shard format version {data['version']} is newer than this terraseg reads "
            f"({FORMAT_VERSION}); upgrade terraseg"
        )
    manifest = Manifest(root.resolve(), data)
    for name in data["splits"]:
        split = manifest.split(name)
        if len(split.shards) != len(split.shard_samples):
            raise ManifestError(f"{path}: split {name!r} lists shards and counts of unequal length")
        absent = [s.name for s in split.shards if not s.is_file()]
        if absent:
            raise ManifestError(f"{path}: split {name!r} lists missing shards {absent}")
    return manifest
