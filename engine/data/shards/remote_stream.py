"""One remote object read as a stream that resumes, ends in bounded time and never splices.

The user's view (URLs, ``pipe:``, the ``TERRASEG_SHARD_*`` settings) is documented in
:mod:`engine.data.shards.store`; this module is the machinery behind it:

* ``http(s)://`` is read with one ``GET`` on fsspec's aiohttp session; ``s3://`` with one
  ``GetObject`` through s3fs; re-opened after an error at the byte reached (``Range``),
  conditionally (HTTP ``If-Range``, S3 ``IfMatch``): the first response's ETag, or
  ``Last-Modified`` without one, and its size must hold, or the read fails as "changed".
* Every open and read of those runs on fsspec's event loop under a wall-clock deadline
  (``fsspec.asyn.sync(..., timeout=)``); ``pipe:`` reads wait with ``select``.
* ``pipe:CMD`` runs ``shlex.split(CMD)`` as an argument list, never through a shell.
"""

from __future__ import annotations

import io
import os
import select
import shlex
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from engine.data.shards.remote_errors import (
    CHUNK,
    ShardReadError,
    ShardStoreError,
    backoff_wait,
    gave_up,
    kind_of,
    named,
    setting,
)
from engine.errors import UserError


def protocol_of(url: str) -> str:
    """The scheme of ``url`` in lower case (``pipe`` for ``pipe:``)."""
    return "pipe" if url.startswith("pipe:") else url.split("://", 1)[0].lower()


def filesystem(url: str):
    """The fsspec file system for ``url``, with timeouts (and the S3 endpoint from the env)."""
    import fsspec

    protocol = protocol_of(url)
    timeout = setting("TERRASEG_SHARD_TIMEOUT", 30.0, positive=True)
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


def pipe_argv(url: str) -> list[str]:
    """The argument list of ``pipe:CMD`` (``shlex.split``; it is never given to a shell)."""
    try:
        argv = shlex.split(url[len("pipe:") :])
    except ValueError as error:
        raise ShardStoreError(f"{url}: cannot split the command: {error}") from error
    if not argv:
        raise ShardStoreError(f"{url}: no command after pipe:")
    return argv


def pipe_join(url: str, name: str) -> str:
    """``pipe:CMD`` reading file ``name``, as one argument whatever characters it holds.

    ``name`` goes into each argument holding ``{}``, else it is appended to the last one.
    """
    argv = pipe_argv(url)
    if any("{}" in token for token in argv):
        argv = [token.replace("{}", name) for token in argv]
    else:
        argv[-1] += name
    return "pipe:" + shlex.join(argv)


class Version(NamedTuple):
    """What identifies one version of an object: its size, ETag and Last-Modified."""

    size: int | None
    etag: str | None
    modified: str | None

    @property
    def validator(self) -> str | None:
        """The ETag, else Last-Modified (what ``If-Range`` sends)."""
        return self.etag or self.modified


def version_change(first: Version, seen: Version) -> str | None:
    """How ``seen`` differs from ``first`` (``ETag a → b``), or None when it may be the same."""
    for label, a, b in (
        ("ETag", first.etag, seen.etag),
        ("Last-Modified", first.modified, seen.modified),
        ("size", first.size, seen.size),
    ):
        if a is not None and b is not None and a != b:
            return f"{label} {a} → {b}"
    return None


def run_timed(fs, deadline: float, function, *args):
    """``await function(*args)`` on ``fs``'s event loop, cancelled at ``deadline`` (monotonic)."""
    from fsspec.asyn import sync

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    return sync(fs.loop, function, *args, timeout=remaining)


def object_info(url: str) -> dict:
    """The fsspec ``info`` of ``url`` (size, ETag, ``Last-Modified``), retried like reads."""
    fs, retries = filesystem(url), int(setting("TERRASEG_SHARD_RETRIES", 5))
    deadline = setting("TERRASEG_SHARD_DEADLINE", 120.0, positive=True)
    failures = 0
    while True:
        try:
            if getattr(fs, "async_impl", False):
                return run_timed(fs, time.monotonic() + deadline, fs._info, url)
            return fs.info(url)
        except Exception as error:  # noqa: BLE001 - sorted by kind_of, named
            kind = kind_of(error)
            if kind != "transient":
                raise named(url, error, kind) from error
            if failures >= retries:
                raise gave_up(url, error, failures + 1, 0, "request") from error
            backoff_wait(failures)
            failures += 1


async def _http_get(fs, url: str, headers: dict):
    session = await fs.set_session()
    response = await session.get(fs.encode_url(url), headers=headers)
    response.raise_for_status()  # releases the connection first
    return response


async def _s3_get(fs, url: str, offset: int, etag: str | None) -> dict:
    bucket, key, version_id = fs.split_path(url)
    request = {"Bucket": bucket, "Key": key}
    if version_id:
        request["VersionId"] = version_id
    if offset:
        request["Range"] = f"bytes={offset}-"
    if etag:
        request["IfMatch"] = etag
    return await fs._call_s3("get_object", **request)


async def _fill(read, count: int, pieces: list) -> None:
    """Await ``read`` until ``count`` bytes or the end, into ``pieces`` (kept if cancelled)."""
    while count > 0:
        piece = await read(count)
        if not piece:
            return
        pieces.append(piece)
        count -= len(piece)


async def _call(function) -> None:
    function()


def _total_size(content_range: str | None, length: str | int | None, offset: int):
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    return offset + int(length) if length is not None and str(length).isdigit() else None


class RetryingReader(io.RawIOBase):
    """A read-once binary stream of a URL that resumes at the byte it reached after an error.

    Each ``CHUNK`` of bytes (with ``whole``, the whole object) must arrive within
    ``TERRASEG_SHARD_DEADLINE`` seconds of its try. A transient error (dropped connection,
    missed deadline, 5xx/429, short body) re-opens the URL at the byte reached, at most
    ``TERRASEG_SHARD_RETRIES`` times per chunk (counted afresh only once a chunk has arrived),
    after ``TERRASEG_SHARD_BACKOFF`` x 2^n seconds; then a :class:`ShardStoreError`. A missing
    or forbidden object fails at once; one that changed, with :class:`ShardReadError`.
    ``hasher`` (``hashlib.sha256()``) sees every byte delivered, once.
    """

    def __init__(self, url: str, hasher=None, *, whole: bool = False) -> None:
        super().__init__()
        self.url, self.hasher = str(url), hasher
        self.protocol = protocol_of(self.url)
        self.position = 0  # bytes delivered
        self.version: Version | None = None  # as the first response described the object
        self.reopened = 0  # how many times the stream was re-opened after an error
        self.retries = int(setting("TERRASEG_SHARD_RETRIES", 5))
        self.deadline = setting("TERRASEG_SHARD_DEADLINE", 120.0, positive=True)
        self._chunk = None if whole else CHUNK
        self._chunk_end = self._chunk or 0
        self._failures = 0  # of this chunk
        self._ends: float | None = None  # when this try of the chunk must be done (monotonic)
        self._fs = None if self.protocol == "pipe" else filesystem(self.url)
        self._async = self.protocol in ("http", "https", "s3", "s3a")
        self._open = False
        # The open body's read(n) (a coroutine function for _async) and close.
        self._read: Callable[[int], Any] | None = None
        self._close: Callable[[], Any] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def readable(self) -> bool:
        """Always: the stream is for reading."""
        return True

    def readinto(self, buffer) -> int:
        """Fill ``buffer`` from the current byte on, re-opening there after transient errors."""
        while True:
            try:
                if not self._open:
                    if self._ends is None:
                        self._ends = time.monotonic() + self.deadline
                    self._open_at(self.position)
                data = self._read_some(len(buffer))
                if not data:
                    self._end_of_stream()
                return self._deliver(data, buffer)
            except Exception as error:  # noqa: BLE001 - sorted by kind_of
                self._retry_or_raise(error)

    def _deliver(self, data: bytes, buffer) -> int:
        count = len(data)
        buffer[:count] = data
        self.position += count
        if self.hasher is not None:
            self.hasher.update(data)
        if self._chunk is not None and self.position >= self._chunk_end:  # arrived in time
            self._chunk_end = self.position + self._chunk
            self._failures, self._ends = 0, time.monotonic() + self.deadline
        return count

    def _retry_or_raise(self, error: Exception) -> None:
        self._close_stream()
        if isinstance(error, UserError):
            raise error
        kind = kind_of(error)
        if kind == "changed" and self.version is not None:
            raise ShardReadError(
                f"{self.url}: the object changed while it was read "
                f"(ETag {self.version.etag} no longer matches)"
            ) from error
        if kind != "transient":
            raise named(self.url, error, kind) from error
        if self._failures >= self.retries:
            per = "file" if self._chunk is None else f"{self._chunk / 2**20:g} MiB chunk"
            raise gave_up(self.url, error, self._failures + 1, self.position, per) from error
        backoff_wait(self._failures)
        self._failures += 1
        self.reopened += 1
        self._ends = None

    def _fsspec(self) -> Any:
        """The fsspec file system (every protocol but ``pipe:`` has one)."""
        assert self._fs is not None
        return self._fs

    def _try_ends(self) -> float:
        """When this try must be done; ``readinto`` sets it before any open or read."""
        assert self._ends is not None
        return self._ends

    def _open_at(self, offset: int) -> None:
        if self.protocol in ("http", "https"):
            seen, ranged = self._open_http(offset)
        elif self.protocol in ("s3", "s3a"):
            seen, ranged = self._open_s3(offset)
        elif self.protocol == "pipe":
            seen, ranged = self._open_pipe(offset)
        else:
            seen, ranged = self._open_fs(offset)
        self._open = True
        if self.version is None or self.position == 0:  # nothing delivered yet
            self.version = seen
        elif change := version_change(self.version, seen):
            raise ShardReadError(f"{self.url}: the object changed while it was read ({change})")
        if offset and not ranged:  # the body starts at byte 0: drop what was delivered
            self._skip(offset)

    def _open_pipe(self, offset: int) -> tuple[Version, bool]:
        argv = pipe_argv(self.url)
        try:
            self._process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, bufsize=0
            )
        except OSError as error:
            raise ShardStoreError(f"{self.url}: cannot run {argv[0]!r}: {error}") from error
        return Version(None, None, None), False

    def _open_http(self, offset: int) -> tuple[Version, bool]:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.version is not None and self.version.validator:
                headers["If-Range"] = self.version.validator
        response = run_timed(self._fs, self._try_ends(), _http_get, self._fs, self.url, headers)
        self._read, self._close = response.content.read, response.close
        head, ranged = response.headers, response.status == 206
        length = head.get("Content-Length")
        if head.get("Content-Encoding", "identity") not in ("", "identity"):
            length = None
        size = _total_size(head.get("Content-Range") if ranged else None, length, offset * ranged)
        return Version(size, head.get("ETag"), head.get("Last-Modified")), ranged

    def _open_s3(self, offset: int) -> tuple[Version, bool]:
        etag = self.version.etag if offset and self.version is not None else None
        response = run_timed(self._fs, self._try_ends(), _s3_get, self._fs, self.url, offset, etag)
        body, modified = response["Body"], response.get("LastModified")
        self._read, self._close = body.read, body.close
        size = _total_size(response.get("ContentRange"), response.get("ContentLength"), offset)
        return Version(size, response.get("ETag"), str(modified) if modified else None), True

    def _open_fs(self, offset: int) -> tuple[Version, bool]:
        """Any other fsspec scheme (``gs://``…): its own buffered file, no deadline."""
        fs, version = self._fsspec(), self.version
        if version is None:
            info = fs.info(self.url)
            version = Version(info.get("size"), info.get("ETag"), None)
        stream = fs.open(self.url, "rb", block_size=CHUNK, cache_type="readahead")
        if offset:
            stream.seek(offset)
        self._read, self._close = stream.read, stream.close
        return version, True

    def _read_some(self, count: int) -> bytes:
        if self._async:  # what arrived before a failure is delivered; the failure recurs
            pieces: list[bytes] = []
            try:
                run_timed(self._fs, self._try_ends(), _fill, self._read, count, pieces)
            except Exception:
                if not pieces:
                    raise
            return b"".join(pieces)
        if self._process is not None:
            assert self._process.stdout is not None  # opened with stdout=PIPE
            pipe = self._process.stdout.fileno()
            remaining = self._try_ends() - time.monotonic()
            if remaining <= 0 or not select.select([pipe], [], [], remaining)[0]:
                raise TimeoutError("deadline passed")
            return os.read(pipe, count)
        assert self._read is not None  # _open_at set it
        return self._read(count)

    def _skip(self, count: int) -> None:
        done = 0
        while done < count:
            data = self._read_some(min(count - done, CHUNK))
            if not data:
                raise ConnectionError(f"ended before byte {count} on re-reading")
            done += len(data)
            self._ends = time.monotonic() + self.deadline  # each skipped chunk on time

    def _end_of_stream(self) -> None:
        """At EOF: a short body (or a failed pipe command) is an error to retry."""
        size = self.version.size if self.version is not None else None
        if size is not None and self.position < size:
            raise ConnectionError(f"body ended at byte {self.position} of {size}")
        if self._process is not None:
            try:
                code = self._process.wait(timeout=max(self._try_ends() - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired as error:
                raise TimeoutError("the command did not exit") from error
            if code != 0:
                raise ConnectionError(f"command exited with status {code}")

    def _close_stream(self) -> None:
        close, self._close, self._read, self._open = self._close, None, None, False
        if close is not None:
            try:
                if self._async:
                    from fsspec.asyn import sync

                    sync(self._fsspec().loop, _call, close, timeout=5)
                else:
                    close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close
                pass
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()

    def close(self) -> None:
        """Close the connection (or end the command)."""
        self._close_stream()
        super().close()
