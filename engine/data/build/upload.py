"""Builds straight to an object store: each shard uploaded once complete, the manifest last.

``build_shards.py --out s3://…|gs://…`` builds in a local temporary folder as usual, but
:class:`ShardUploader` uploads every shard as soon as its tar is closed (one background
thread, in order, while the build goes on) and removes the local copy, so the local disk
holds only the shards waiting for their upload. ``dataset.json`` goes up last, after every
shard arrived: a reader sees either no dataset or the whole new one, never a manifest
naming shards that are not there yet.

A failed build (bad input, full disk, Ctrl-C, a refused upload) uploads no manifest; a
previous terraseg ``dataset.json`` at the URL is removed before the first shard goes up.
The shards uploaded before the failure stay (the location then holds terraseg shards and
no manifest: readers refuse it, and the next build with ``--overwrite`` replaces them).

The uploaded ``dataset.json`` is the local build's, byte for byte, so it records the
``shard_sha256`` / ``shard_bytes`` hashed while each tar was written: ``verify_shards.py``
checks the uploaded objects against them.
"""

from __future__ import annotations

import re
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from engine.data.shards.store import ShardStoreError, ShardUrl, filesystem, protocol_of
from engine.jsonfile import MetadataError, metadata_limit, parse_json

MANIFEST = "dataset.json"
READ_ONLY = ("http", "https", "pipe")  # schemes --out refuses
_SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")  # manifest.shard_name
SHARD_FORMAT = "terraseg-shards"


def check_writable(url: str) -> None:
    """Refuse a read-only scheme for ``--out`` before any work.

    Raises:
        ShardStoreError: naming the URL and the scheme.
    """
    if protocol_of(url) in READ_ONLY:
        raise ShardStoreError(
            f"--out {url}: {protocol_of(url)} locations are read-only; build to a folder or an "
            "object store (s3://, gs://)"
        )


def _is_terraseg_manifest(fs, url: str) -> bool:
    try:
        with fs.open(url, "rb") as handle:  # bounded: a huge object is not terraseg's
            data = parse_json(handle.read(metadata_limit() + 1), url)
    except (OSError, ValueError, MetadataError):
        return False
    return isinstance(data, dict) and data.get("format") == SHARD_FORMAT


def check_remote_out(url: str, overwrite: bool) -> None:
    """Refuse an unusable ``--out URL`` before any work (the rules of a local ``--out``).

    Raises:
        ShardStoreError: a read-only scheme, a non-empty location without ``overwrite``, or
            (with it) one that is not a terraseg shard location, so is left alone.
    """
    check_writable(url)
    fs = filesystem(url)
    try:
        present = fs.ls(url, detail=False)
    except FileNotFoundError:
        present = []
    except Exception as error:  # noqa: BLE001 - named
        raise ShardStoreError(f"--out {url}: cannot list it: {error}") from error
    if not present:
        return
    if not overwrite:
        raise ShardStoreError(f"--out {url}: not empty (pass --overwrite to replace it)")
    names = {ShardUrl(p).name for p in present}
    manifest = MANIFEST in names and _is_terraseg_manifest(fs, ShardUrl(url) / MANIFEST)
    others = [n for n in names if n != MANIFEST and not _SHARD_NAME.match(n)]
    if others or (MANIFEST in names and not manifest):
        what = sorted(others)[:3] or "a dataset.json not written by terraseg"
        raise ShardStoreError(
            f"--out {url}: --overwrite replaces only terraseg shards (a terraseg dataset.json "
            f"and split-NNNNNN.tar) and this location also holds {what}, so it is left alone"
        )


class ShardUploader:
    """Uploads one build's files to ``url``, the manifest last.

    Shards as they complete (:meth:`put`), the manifest after all of them (:meth:`finish`);
    :meth:`abort` after a failure.

    Args:
        url: The ``--out`` location (checked by :func:`check_remote_out`).
        depth: Shards queued or uploading at once; :meth:`put` waits for the oldest beyond
            that (so a slow store slows the build instead of filling the local disk).

    Raises:
        ShardStoreError: (from the constructor) the old manifest cannot be removed.
    """

    def __init__(self, url: str, depth: int = 2) -> None:
        self.url = ShardUrl(str(url))
        self.fs = filesystem(self.url)
        self.uploaded: list[str] = []  # URLs of the shards this build has uploaded
        self._depth = max(1, depth)
        self._pending: deque[Future] = deque()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="terraseg-upload")
        target = self.url / MANIFEST
        try:
            if self.fs.exists(target):  # no reader may take the old manifest for the new shards
                self.fs.rm_file(target)
        except Exception as error:  # noqa: BLE001 - named
            self._pool.shutdown()
            raise ShardStoreError(f"{target}: cannot replace the old manifest: {error}") from error

    def _upload(self, path: Path, remove: bool) -> None:
        target = self.url / path.name
        try:
            self.fs.put_file(str(path), target)
        except Exception as error:  # noqa: BLE001 - named
            raise ShardStoreError(f"{target}: upload failed: {error}") from error
        if remove:
            self.uploaded.append(target)
            path.unlink()

    def put(self, path: Path) -> None:
        """Queue a complete local shard for upload (removed locally once uploaded).

        Raises:
            ShardStoreError: an earlier shard's upload failed (naming its URL).
        """
        while len(self._pending) >= self._depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._upload, Path(path), True))

    def finish(self, manifest: Path) -> None:
        """Wait for every shard, then upload ``manifest`` (kept locally) as ``dataset.json``.

        Raises:
            ShardStoreError: naming the URL of the object that could not be written.
        """
        while self._pending:
            self._pending.popleft().result()
        self._pool.shutdown()
        if Path(manifest).name != MANIFEST:
            raise ValueError(f"{manifest}: the manifest must be named {MANIFEST}")
        self._upload(Path(manifest), remove=False)

    def abort(self) -> None:
        """After a failure: let the uploads already queued end (errors ignored); no manifest."""
        for future in self._pending:
            future.exception()  # waits; the build's own error is the one reported
        self._pending.clear()
        self._pool.shutdown(wait=True)


def build_to_url(url: str, overwrite: bool, build: Callable[[Path, ShardUploader], dict]) -> dict:
    """Run ``build(folder, uploader)`` into a local temporary folder, publishing to ``url``.

    ``build`` hands each complete shard to ``uploader.put`` and the manifest to
    ``uploader.finish``; on any failure the uploads in flight end and no manifest goes up.

    Raises:
        ShardStoreError: ``--out`` unusable (see :func:`check_remote_out`) or an upload
            refused, naming the URL; and whatever ``build`` raises.
    """
    check_remote_out(url, overwrite)
    uploader = ShardUploader(url)
    try:
        with tempfile.TemporaryDirectory(prefix="terraseg-upload-") as staging:
            return build(Path(staging) / "shards", uploader)
    except BaseException:
        uploader.abort()
        raise
