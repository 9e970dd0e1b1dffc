"""Check every shard of a folder or URL against the digests its manifest recorded at build.

The builder records each shard's SHA-256 and size in ``dataset.json`` (``shard_sha256``,
``shard_bytes``: hashed while the tar was written). :func:`verify_shards` streams every
shard once through :func:`engine.data.shards.store.open_shard_stream` (a folder, http(s),
s3, ``pipe:``) and compares. ``launch/verify_shards.py`` is its command line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.data.shards.manifest import MANIFEST_NAME, Manifest, load_manifest
from engine.data.shards.store import ShardUrl, open_shard_stream
from engine.errors import UserError

BLOCK = 1 << 20  # bytes hashed per read


class VerifyError(UserError):
    """The shards cannot be verified (no digests recorded); the message names the manifest."""


@dataclass(frozen=True)
class ShardCheck:
    """One shard compared with its manifest entry.

    ``sha256``/``size`` are what was read (``None`` with ``problem`` set when the shard
    could not be read).
    """

    split: str
    shard: Path | ShardUrl
    expected_sha256: str
    expected_bytes: int | None
    sha256: str | None
    size: int | None
    problem: str = ""

    @property
    def ok(self) -> bool:
        """Whether the shard is exactly what the builder wrote."""
        return (
            not self.problem
            and self.sha256 == self.expected_sha256
            and self.expected_bytes in (None, self.size)
        )

    def line(self) -> str:
        """One line for people: ``ok NAME`` or ``MISMATCH NAME: …`` with both digests."""
        name = f"{self.shard.name} ({self.split})"
        if self.ok:
            return f"ok {name} sha256 {self.sha256} {self.size} bytes"
        if self.problem:
            return f"MISMATCH {name}: {self.problem}"
        expected = "?" if self.expected_bytes is None else self.expected_bytes
        return (
            f"MISMATCH {name}: sha256 {self.sha256} (manifest {self.expected_sha256}), "
            f"{self.size} bytes (manifest {expected})"
        )


def stream_digest(location: Path | ShardUrl) -> tuple[str, int]:
    """``(sha256 hex, size)`` of a local file or URL, read once as a stream.

    Raises:
        OSError: a local file cannot be read.
        UserError: a URL cannot be read after retries (naming it).
    """
    digest, size = hashlib.sha256(), 0
    with open_shard_stream(location) as stream:
        while block := stream.read(BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _expected(manifest: Manifest, name: str) -> list[tuple[Path | ShardUrl, str, int | None]]:
    split = manifest.split(name)
    where = f"{manifest.root / MANIFEST_NAME}"
    if not split.shard_sha256:
        raise VerifyError(
            f"{where}: split {name!r} records no shard digests (shard_sha256); rebuild the "
            "shards with this terraseg version to verify them"
        )
    unknown = [s.name for s, d in zip(split.shards, split.shard_sha256) if d is None]
    if unknown:
        raise VerifyError(f"{where}: split {name!r} records no digest for shards {unknown[:3]}")
    digests = [d for d in split.shard_sha256 if d is not None]  # all of them (checked above)
    sizes = split.shard_bytes or (None,) * len(split.shards)
    return list(zip(split.shards, digests, sizes))


def verify_shards(
    location: str | Path, report: Callable[[ShardCheck], None] | None = None
) -> list[ShardCheck]:
    """Stream every shard of ``location`` and compare it with the manifest's digests.

    Args:
        location: A shard folder or URL.
        report: Called with each :class:`ShardCheck` as soon as it is known.

    Returns:
        One check per shard, splits in manifest order.

    Raises:
        ManifestError: the manifest is missing or malformed (see :func:`load_manifest`).
        VerifyError: the manifest records no digests (built before they were recorded).
    """
    manifest = load_manifest(location, check_shards=False)
    plan = [
        (name, entry) for name in manifest.data["splits"] for entry in _expected(manifest, name)
    ]
    checks = []
    for split, (shard, sha256, size) in plan:
        try:
            actual, count = stream_digest(shard)
            check = ShardCheck(split, shard, sha256, size, actual, count)
        except (OSError, UserError) as error:
            problem = f"cannot read it: {error}"
            check = ShardCheck(split, shard, sha256, size, None, None, problem)
        checks.append(check)
        if report is not None:
            report(check)
    return checks
