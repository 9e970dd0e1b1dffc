"""Where shards live: a local folder or a URL, and the one seam that opens a shard.

``data.shards`` / ``--shards`` / ``--out`` take a folder or a URL (builds to a URL are
uploaded by :mod:`engine.data.build.upload`):

* ``http://`` / ``https://`` (read only), ``s3://`` (any S3-compatible store: the endpoint
  from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, credentials as boto reads them),
  ``gs://`` (needs ``gcsfs``) and any other scheme fsspec knows;
* ``pipe:CMD`` (webdataset's): ``CMD`` is split into arguments like a shell would
  (``shlex.split``) and run *without* a shell; its stdout is the file. The file name
  (``dataset.json``, ``train-000000.tar``) replaces ``{}`` inside an argument, else it is
  appended to the last argument (``pipe:cat /data/shards/`` reads
  ``/data/shards/dataset.json``), and stays one argument whatever it holds. Shell syntax
  (``|``, ``;``, ``$VAR``) is not interpreted; for a pipeline, run a shell yourself and
  hand it the name as an argument: ``pipe:sh -c 'curl -s "$1" | zstd -d' sh http://h/{}``.

All URLs go through fsspec (s3fs for ``s3://``): one client and one error model for every
scheme. Remote shards are read *sequentially* (``tarfile`` mode ``r|``) through
:class:`~engine.data.shards.remote_stream.RetryingReader`, which counts the bytes it has
delivered and, on a transient error (dropped connection, missed deadline, HTTP 5xx/429, a
short body), re-opens the URL at that byte (HTTP ``Range`` + ``If-Range``, S3 ranged GET +
``IfMatch``; when a server ignores ``Range`` the bytes already delivered are read again and
dropped), so no sample is duplicated or skipped. The first response's ETag (else
``Last-Modified``) and size must hold on every re-open: an object replaced mid-read fails
("changed while it was read"), two versions are never spliced. 404 fails at once as "not
found", 403 as "forbidden". When the manifest records a shard's SHA-256 and size, a remote
shard is hashed as it streams and checked at its end (local files are not hashed per read).

Environment (all optional):

* ``TERRASEG_SHARD_CACHE``: a folder; each remote shard is downloaded there once (to a
  temporary name, then renamed) and then read like a local one. With the manifest's digest
  it is stored by content (``CACHE/sha256/<hex>.tar``), checked once on download (a
  mismatch keeps nothing); without one, keyed by URL, size and ETag or ``Last-Modified``,
  so a rebuilt shard is fetched again. Never evicted: size it for the dataset.
* ``TERRASEG_SHARD_DEADLINE``: seconds (default 120) within which each 8 MiB of a remote
  shard, a whole metadata file (``dataset.json``) or a size lookup must arrive, however
  slowly bytes trickle; missing it is a transient error (re-opened at the byte reached).
  Applies to ``http(s)://``, ``s3://`` and ``pipe:``.
* ``TERRASEG_SHARD_TIMEOUT``: seconds to connect and to wait for the next byte (default 30).
* ``TERRASEG_SHARD_RETRIES``: tries after the first on transient errors (default 5), per
  8 MiB chunk (counted afresh only when a chunk has arrived within its deadline), with
  backoff ``TERRASEG_SHARD_BACKOFF`` x 2^n seconds (default 1, at most 30 a wait). Then the
  read fails naming the URL ("timed out after N tries (deadline Xs per 8 MiB chunk)",
  "server error (HTTP 503) after N tries", …).

Local files keep the random-access fast path (``tarfile`` mode ``r:``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from engine.data.shards.remote_errors import CHUNK, ShardReadError, ShardStoreError
from engine.data.shards.remote_stream import (
    RetryingReader,
    Version,
    filesystem,
    object_info,
    pipe_join,
    protocol_of,
    version_change,
)

__all__ = [
    "CHUNK",
    "RetryingReader",
    "ShardDigest",
    "ShardReadError",
    "ShardStoreError",
    "ShardUrl",
    "as_location",
    "cached_copy",
    "filesystem",
    "is_url",
    "open_shard_stream",
    "protocol_of",
    "read_bytes",
    "shard_digests",
    "tar_members",
]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ShardDigest(NamedTuple):
    """What a shard must hash to: its SHA-256 (hex) and size in bytes (from the manifest)."""

    sha256: str
    size: int


class ShardUrl(str):
    """A shard location that is a URL (a ``str``); ``/`` joins a file name like a ``Path``."""

    @property
    def name(self) -> str:
        """The last path component (the file name)."""
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> ShardUrl:
        if self.startswith("pipe:"):
            return ShardUrl(pipe_join(self, name))
        return ShardUrl(self.rstrip("/") + "/" + name)


def is_url(location: object) -> bool:
    """Whether ``location`` is a URL (``scheme://`` or ``pipe:``) rather than a local path."""
    text = str(location)
    return text.startswith("pipe:") or bool(_SCHEME.match(text)) and not text.startswith("file:")


def as_location(location: str | Path) -> Path | ShardUrl:
    """A local ``Path`` (``file://`` stripped) or a :class:`ShardUrl`."""
    text = str(location)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    return ShardUrl(text) if is_url(text) else Path(text)


def shard_digests(split) -> dict[str, ShardDigest]:
    """A manifest split's shard SHA-256s and sizes, by shard location (where recorded)."""
    pairs = zip(split.shards, split.shard_sha256, split.shard_bytes)
    return {str(s): ShardDigest(h, n) for s, h, n in pairs if h is not None and n is not None}


def open_shard_stream(location: str | Path, *, whole: bool = False) -> io.BufferedReader:
    """A sequential binary stream of a local file or URL (URLs retry and resume; see module).

    With ``whole``, the whole object must arrive within one deadline (a metadata file).
    """
    if not is_url(location):
        return open(as_location(location), "rb")  # noqa: SIM115 - the caller closes it
    return io.BufferedReader(RetryingReader(str(location), whole=whole), buffer_size=1 << 20)


def read_bytes(location: str | Path, limit: int | None = None) -> bytes:
    """The whole content of a local file or URL (e.g. ``dataset.json``), within one deadline.

    Raises:
        ShardStoreError: naming the location when it holds more than ``limit`` bytes.
    """
    with open_shard_stream(location, whole=True) as stream:
        data = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise ShardStoreError(f"{location}: larger than {limit} bytes")
    return data


def _cache_path(folder: Path, url: str, digest: ShardDigest | None) -> tuple[Path, Version | None]:
    """Where the cached copy of ``url`` lives, and (without a digest) the version it keys."""
    if digest is not None:  # by content: the same bytes under any URL, a rebuild elsewhere
        return folder / "sha256" / f"{digest.sha256}.tar", None
    info = object_info(url)
    # fsspec's HTTP client reports Last-Modified, s3fs LastModified
    modified = info.get("Last-Modified") or info.get("LastModified")
    version = Version(info.get("size"), info.get("ETag"), str(modified) if modified else None)
    key = f"{url}|{version.size}|{version.etag or version.modified or ''}"
    return folder / hashlib.sha256(key.encode()).hexdigest()[:24] / ShardUrl(url).name, version


def cached_copy(url: str, digest: ShardDigest | None = None) -> Path | None:
    """With ``TERRASEG_SHARD_CACHE`` set, a local copy of ``url`` (downloaded once); else None.

    Raises:
        ShardReadError: when the download does not match ``digest``, or the object changed
            since its size lookup (nothing is kept).
    """
    folder = os.environ.get("TERRASEG_SHARD_CACHE")
    if not folder or (url.startswith("pipe:") and digest is None):
        return None
    path, version = _cache_path(Path(folder), url, digest)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        hasher = hashlib.sha256() if digest is not None else None
        with RetryingReader(url, hasher) as reader, open(partial, "wb") as target:
            while block := reader.read(CHUNK):
                target.write(block)
                if digest is not None and reader.position > digest.size:
                    break
        if digest is not None:
            _check_digest(url, reader, digest)
        elif version is not None and reader.version is not None:
            if change := version_change(version, reader.version):
                raise ShardReadError(f"{url}: the object changed while it was read ({change})")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _check_digest(url: str, reader: RetryingReader, digest: ShardDigest) -> None:
    got = reader.hasher.hexdigest()
    if reader.position != digest.size or got != digest.sha256:
        raise ShardReadError(
            f"{url}: does not match the manifest (sha256 {digest.sha256}, {digest.size} bytes; "
            f"read sha256 {got}, {reader.position} bytes): changed or corrupt"
        )


def _drain_and_check(
    url: str, stream: io.BufferedIOBase, reader: RetryingReader, digest: ShardDigest
) -> None:
    """Read the rest of the shard and compare its size and SHA-256 with ``digest``.

    The rest is the tar's end padding; never read past the size the manifest gives.
    """
    while reader.position <= digest.size and stream.read(CHUNK):
        pass
    _check_digest(url, reader, digest)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytearray:
    # A bytearray, so that npy members decode to writable views (torch.from_numpy needs one).
    data = bytearray(member.size)
    file = tar.extractfile(member)  # a buffered reader (None for a member not a regular file)
    if not isinstance(file, io.BufferedIOBase) or file.readinto(data) != member.size:
        raise OSError(f"member {member.name} is truncated")
    return data


def tar_members(shard: object, digest: ShardDigest | None = None) -> Iterator[dict]:
    """The regular files of one tar shard (a path or URL), in order, as webdataset file dicts.

    A local file is read with random access (``tarfile`` mode ``r:``: one ``read`` per
    member; the streaming reader of ``webdataset.tarfile_samples`` copies in 10 KiB records,
    ~5 ms per 1024² ``npy`` sample on a 2-core CPU against ~1 ms). A URL is streamed (mode
    ``r|``) through :class:`RetryingReader`, or read from its cached copy; with ``digest``
    the stream is hashed as it is read and checked at the end of the shard.

    Raises:
        ShardReadError: naming the shard when it is missing, not a tar, truncated inside
            a member, or (a URL with ``digest``) its size or SHA-256 differ.
        ShardStoreError: naming the URL when it cannot be fetched after retries.
    """
    url = str(shard)
    if digest is not None and not (_SHA256.fullmatch(digest.sha256) and digest.size >= 0):
        raise ShardReadError(f"{url}: the manifest's digest {digest} is not a SHA-256 and size")
    try:
        local = cached_copy(url, digest) if is_url(url) else as_location(url)
        with contextlib.ExitStack() as stack:
            if local is not None:  # random access: each member with one read
                tar = stack.enter_context(tarfile.open(str(local), "r:"))
            else:  # remote: streamed in order
                reader = RetryingReader(url, hashlib.sha256() if digest else None)
                stream = stack.enter_context(io.BufferedReader(reader, buffer_size=1 << 20))
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            for member in tar:
                if member.isreg():
                    yield {"fname": member.name, "data": _read_member(tar, member), "__url__": url}
            if local is None and digest is not None:
                _drain_and_check(url, stream, reader, digest)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardReadError(
            f"{url}: cannot read the tar (truncated or corrupt?): {error}"
        ) from error
    yield {}  # end of shard: the last sample is complete (as webdataset marks it)
