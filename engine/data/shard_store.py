"""Where shards live: a local folder or a URL, and the one seam that opens a shard.

``data.shards`` / ``--shards`` / ``--out`` take a folder or a URL (builds to a URL are
uploaded by :mod:`engine.data.shard_upload`):

* ``http://`` / ``https://`` (read only), ``s3://`` (any S3-compatible store: the endpoint
  from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, credentials as boto reads them),
  ``gs://`` (needs ``gcsfs``) and any other scheme fsspec knows;
* ``pipe:CMD`` (webdataset's): ``CMD`` is run by the shell and its stdout is the file;
  ``{}`` in ``CMD`` is replaced by the file name (``dataset.json``, ``train-000000.tar``),
  else the name is appended (``pipe:cat /data/shards/`` reads ``/data/shards/dataset.json``).

All URLs go through fsspec (s3fs for ``s3://``): one client and one error model for every
scheme, kept up by the projects that maintain them. Remote shards are read *sequentially*
(``tarfile`` mode ``r|``) through :class:`RetryingReader`, which counts the bytes it has
delivered and, on a transient error (dropped connection, timeout, 5xx, short body), re-opens
the URL at that byte (HTTP ``Range`` / S3 ranged GET; when a server ignores ``Range`` the
bytes already delivered are read again and dropped), so no sample is duplicated or skipped.

Environment (all optional):

* ``TERRASEG_SHARD_CACHE``: a folder; each remote shard is downloaded there once (to a
  temporary name, then renamed) and then read like a local one. Keyed by URL, size and
  ETag/mtime, so a rebuilt shard is fetched again. Never evicted: size it for the dataset.
* ``TERRASEG_SHARD_TIMEOUT``: seconds to connect and between bytes (default 30).
* ``TERRASEG_SHARD_RETRIES``: tries after the first on transient errors (default 5), with
  backoff ``TERRASEG_SHARD_BACKOFF`` x 2^n seconds (default 1, at most 30 a wait).

Local files keep the random-access fast path (``tarfile`` mode ``r:``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

from engine.errors import UserError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CHUNK = 8 << 20  # bytes per ranged request to object stores


class ShardReadError(UserError):
    """A shard sample cannot be decoded; the message names the shard, the sample and why."""


class ShardStoreError(UserError):
    """A URL cannot be read or written (after retries); the message names the URL."""


class ShardUrl(str):
    """A shard location that is a URL (a ``str``); ``/`` joins a file name like a ``Path``."""

    @property
    def name(self) -> str:
        """The last path component (the file name)."""
        return self.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> ShardUrl:
        if self.startswith("pipe:"):
            text = self.replace("{}", name) if "{}" in self else self + name
            return ShardUrl(text)
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


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError as error:
        raise ShardStoreError(f"{name}={value!r} is not a number") from error


def protocol_of(url: str) -> str:
    """The scheme of ``url`` in lower case (``pipe`` for ``pipe:``)."""
    return "pipe" if url.startswith("pipe:") else url.split("://", 1)[0].lower()


def filesystem(url: str):
    """The fsspec file system for ``url``, with timeouts (and the S3 endpoint from the env)."""
    import fsspec

    protocol = protocol_of(url)
    timeout = _setting("TERRASEG_SHARD_TIMEOUT", 30.0)
    if protocol in ("http", "https"):
        import aiohttp

        limits = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        return fsspec.filesystem(protocol, client_kwargs={"timeout": limits})
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = {
            "connect_timeout": timeout,
            "read_timeout": timeout,
            "retries": {"max_attempts": 2, "mode": "standard"},  # ours resume mid-shard
        }
        try:
            return fsspec.filesystem("s3", endpoint_url=endpoint or None, config_kwargs=config)
        except ImportError as error:
            raise ShardStoreError(f"{url}: s3:// needs the s3fs package ({error})") from error
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as error:
        raise ShardStoreError(f"{url}: cannot open {protocol}:// URLs ({error})") from error


def _transient(error: BaseException) -> bool:
    """Whether retrying may help: dropped connections, timeouts, 5xx/429, short bodies."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = getattr(error, "status", None)  # aiohttp.ClientResponseError
    if isinstance(status, int):
        return status >= 500 or status == 429
    response = getattr(error, "response", None)  # botocore.exceptions.ClientError
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "404", "403"):
        return False
    return isinstance(error, Exception) and not isinstance(error, (UserError, ValueError))


class RetryingReader(io.RawIOBase):
    """A read-once binary stream of a URL that resumes at the byte it reached after an error.

    Up to ``TERRASEG_SHARD_RETRIES`` tries after a transient error (counted afresh once bytes
    flow again), waiting ``TERRASEG_SHARD_BACKOFF`` x 2^n seconds between them; then a
    :class:`ShardStoreError` naming the URL. A missing object fails at once.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = str(url)
        self.position = 0
        self.size: int | None = None
        self.retries = int(_setting("TERRASEG_SHARD_RETRIES", 5))
        self.backoff = _setting("TERRASEG_SHARD_BACKOFF", 1.0)
        self._stream = None
        self._process: subprocess.Popen | None = None
        self._fs = None if self.url.startswith("pipe:") else filesystem(self.url)
        self.reopened = 0  # how many times the stream was re-opened after an error

    def readable(self) -> bool:
        """Always: the stream is for reading."""
        return True

    def _open_at(self, offset: int):
        if self._fs is None:  # pipe: the command again, dropping what was delivered
            command = self.url[len("pipe:") :]
            self._process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)
            stream = self._process.stdout
            _skip(stream, offset, self.url)
            return stream
        if self.size is None:
            info = self._fs.info(self.url)
            self.size = int(info.get("size") or 0) or None
        if protocol_of(self.url) in ("http", "https"):
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            stream = self._fs.open(
                self.url, "rb", block_size=0, size=self.size or 1, headers=headers
            )
            status = getattr(getattr(stream, "r", None), "status", 200)
            if offset and status != 206:  # Range ignored: the body starts at byte 0
                _skip(stream, offset, self.url)
            return stream
        stream = self._fs.open(self.url, "rb", block_size=CHUNK, cache_type="readahead")
        if offset:
            stream.seek(offset)
        return stream

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def _end_of_stream(self) -> None:
        """At EOF: a short body (or a failed pipe command) is an error to retry."""
        if self.size is not None and self.position < self.size:
            raise ConnectionError(f"body ended at byte {self.position} of {self.size}")
        if self._process is not None and self._process.wait() != 0:
            raise ConnectionError(f"command exited with status {self._process.returncode}")

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the current byte on, re-opening there after transient errors."""
        failures = 0
        while True:
            try:
                if self._stream is None:
                    self._stream = self._open_at(self.position)
                data = self._stream.read(len(buffer))
                if not data:
                    self._end_of_stream()
                count = len(data)
                buffer[:count] = data
                self.position += count
                return count
            except Exception as error:  # noqa: BLE001 - sorted by _transient
                self._close_stream()
                if not _transient(error):
                    raise _named(self.url, error) from error
                if failures >= self.retries:
                    raise ShardStoreError(
                        f"{self.url}: failed after {failures + 1} tries at byte "
                        f"{self.position}: {type(error).__name__}: {error}"
                    ) from error
                time.sleep(min(self.backoff * 2**failures, 30.0))
                failures += 1
                self.reopened += 1

    def close(self) -> None:
        """Close the connection (or end the command)."""
        self._close_stream()
        super().close()


def _skip(stream, count: int, url: str) -> None:
    while count > 0:
        data = stream.read(min(count, CHUNK))
        if not data:
            raise ConnectionError(f"{url}: ended before byte {count} on re-reading")
        count -= len(data)


def _named(url: str, error: BaseException) -> UserError:
    if isinstance(error, UserError):
        return error
    if isinstance(error, FileNotFoundError):
        return ShardStoreError(f"{url}: not found")
    if isinstance(error, PermissionError):
        return ShardStoreError(f"{url}: access denied ({error})")
    return ShardStoreError(f"{url}: {type(error).__name__}: {error}")


def open_shard_stream(location: str | Path) -> io.BufferedReader:
    """A sequential binary stream of a local file or URL (URLs retry and resume; see module)."""
    if not is_url(location):
        return open(as_location(location), "rb")  # noqa: SIM115 - the caller closes it
    return io.BufferedReader(RetryingReader(str(location)), buffer_size=1 << 20)


def read_bytes(location: str | Path) -> bytes:
    """The whole content of a local file or URL (e.g. ``dataset.json``)."""
    with open_shard_stream(location) as stream:
        return stream.read()


def cached_copy(url: str) -> Path | None:
    """With ``TERRASEG_SHARD_CACHE`` set, a local copy of ``url`` (downloaded once); else None."""
    folder = os.environ.get("TERRASEG_SHARD_CACHE")
    if not folder or url.startswith("pipe:"):
        return None
    fs, tries = filesystem(url), int(_setting("TERRASEG_SHARD_RETRIES", 5))
    for attempt in range(tries + 1):
        try:
            info = fs.info(url)
            break
        except Exception as error:  # noqa: BLE001 - sorted by _transient, named
            if not _transient(error) or attempt == tries:
                raise _named(url, error) from error
            time.sleep(min(_setting("TERRASEG_SHARD_BACKOFF", 1.0) * 2**attempt, 30.0))
    version = f"{url}|{info.get('size')}|{info.get('ETag') or info.get('LastModified') or ''}"
    key = hashlib.sha256(version.encode()).hexdigest()[:24]
    path = Path(folder) / key / ShardUrl(url).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open_shard_stream(url) as source, open(partial, "wb") as target:
            while block := source.read(CHUNK):
                target.write(block)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytearray:
    # A bytearray, so that npy members decode to writable views (torch.from_numpy needs one).
    data = bytearray(member.size)
    if tar.extractfile(member).readinto(data) != member.size:  # type: ignore[union-attr]
        raise OSError(f"{tar.name}: member {member.name} is truncated")
    return data


def tar_members(shard: object) -> Iterator[dict]:
    """The regular files of one tar shard (a path or URL), in order, as webdataset file dicts.

    A local file is read with random access (``tarfile`` mode ``r:``: one ``read`` per
    member; the streaming reader of ``webdataset.tarfile_samples`` copies in 10 KiB records,
    ~5 ms per 1024² ``npy`` sample on a 2-core CPU against ~1 ms). A URL is streamed (mode
    ``r|``) through :func:`open_shard_stream`, or read from its cached copy.

    Raises:
        ShardReadError: naming the shard when it is missing, not a tar, or truncated inside
            a member.
        ShardStoreError: naming the URL when it cannot be fetched after retries.
    """
    url = str(shard)
    try:
        local = cached_copy(url) if is_url(url) else as_location(url)
        with contextlib.ExitStack() as stack:
            if local is not None:  # random access: each member with one read
                tar = stack.enter_context(tarfile.open(str(local), "r:"))
            else:  # remote: streamed in order
                stream = stack.enter_context(open_shard_stream(url))
                tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            for member in tar:
                if member.isreg():
                    yield {"fname": member.name, "data": _read_member(tar, member), "__url__": url}
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ShardReadError(
            f"{url}: cannot read the tar (truncated or corrupt?): {error}"
        ) from error
    yield {}  # end of shard: the last sample is complete (as webdataset marks it)
