"""The file-system side of a shard build: the output folder, its lock, staging and faults.

Rules (issue #12): terraseg never deletes what it did not create.

* ``--overwrite`` replaces only a folder that is empty or is a terraseg shard folder (its
  ``dataset.json`` says ``"format": "terraseg-shards"``); anything else is a
  :class:`BuildError`.
* One build at a time per output: an exclusive ``fcntl.flock`` on ``.<out>.lock`` beside
  the output, removed when the build ends (a killed build leaves it; the next one reuses
  it). A second build into the same ``--out`` fails at once with an error naming the lock.
* The build writes into a staging folder ``.<out>.building-XXXX`` (marked by a
  ``.terraseg-staging`` file) and renames it into place when done. Staging folders of a
  killed build are removed by the next build into the same ``--out`` (under the lock, so
  never one that is still being written); the previous output moved aside during the final
  rename (``.<out>.old-PID``) is put back if the build died in between.
* Worker processes die with the build (see :mod:`engine.data.processes`); SIGTERM cleans
  up like Ctrl-C.
* A full disk (``ENOSPC``/``EDQUOT``) removes the staging folder and is reported as
  "no space left on device" with the path.
* Each shard tar is written through :class:`ShardTar`, which hashes its bytes (SHA-256)
  and counts them as they go to the file, for the manifest's ``shard_sha256`` and
  ``shard_bytes`` (no second read of the tar).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import tarfile
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from engine.errors import UserError
from engine.jsonfile import MetadataError, read_json

STAGING_MARK = ".terraseg-staging"
SHARD_FORMAT = "terraseg-shards"


class BuildError(UserError):
    """Input that cannot become shards; the message names the file and the problem."""


def is_shard_folder(path: Path) -> bool:
    """Whether ``path`` holds a ``dataset.json`` written by terraseg (read with a size cap)."""
    try:
        data = read_json(path / "dataset.json")
    except (OSError, MetadataError):
        return False
    return isinstance(data, dict) and data.get("format") == SHARD_FORMAT


class _DigestFile:
    """The binary file a tar is written to, hashed (SHA-256) and counted as bytes go in."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    # Write-only; tarfile's file protocol names these, and mode "w" never calls them.
    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("a shard tar is written, not read")

    def seek(self, pos: int) -> int:
        raise io.UnsupportedOperation("a shard tar is written in one pass")

    def close(self) -> None:
        self._file.close()

    @property
    def sha256(self) -> str:
        """The hex SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()


class ShardTar:
    """One shard tar written reproducibly (``mtime`` 0, mode 0644, uid/gid 0, GNU format).

    Args:
        path: The new tar file.
        file: Where its bytes go (default: ``path`` created for writing; tests pass a file
            that fails like a full disk).
    """

    def __init__(self, path: Path, file: BinaryIO | None = None) -> None:
        self.path = Path(path)
        self._file = _DigestFile(file if file is not None else open(path, "wb"))  # noqa: SIM115
        try:
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
        except BaseException:
            self._file.close()
            raise

    def add(self, name: str, data: bytes) -> None:
        """Append the member ``name`` holding ``data``."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> tuple[str, int]:
        """End the tar and close its file.

        Returns:
            ``(sha256, size)`` of the whole file: lower-case hex digest and bytes.
        """
        try:
            self._tar.close()
        finally:
            self._file.close()
        return self._file.sha256, self._file.size


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def _no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _remove_tree(path: Path) -> None:
    """Remove a staging folder, file by file if need be (a full disk must not stop it)."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        for child in path.iterdir():
            try:
                child.unlink()
            except OSError:
                pass
        try:
            path.rmdir()
        except OSError:
            pass


class BuildOutput:
    """Context manager owning ``out`` for one build; yields the staging folder.

    Call :meth:`commit` when everything is written. On any exception the staging folder is
    removed, and a full disk becomes a :class:`BuildError` saying so.
    """

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = Path(out)
        self.overwrite = overwrite
        self.staging: Path | None = None
        self._lock_fd: int | None = None
        self._previous_sigterm: Callable | int | None = None

    def check(self) -> None:
        """Refuse an unusable ``--out`` before any work (checked again under the lock).

        Raises:
            BuildError: ``--out`` is a file, not writable, or a non-empty folder that may
                not be replaced.
        """
        if self.out.exists() and not self.out.is_dir():
            raise BuildError(f"{self.out}: --out is a file, not a folder")
        ancestor = self.out.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise BuildError(f"{self.out}: cannot create the output's parent: {ancestor} is a file")
        self._check()

    def __enter__(self) -> Path:
        out = self.out
        if out.exists() and not out.is_dir():
            raise BuildError(f"{out}: --out is a file, not a folder")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BuildError(f"{out}: cannot create the output's parent folder: {error}") from error
        self._lock()
        try:
            self._recover()
            self._check()
            self.staging = self._make_staging()
        except BaseException:
            self._unlock()
            raise
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
        return self.staging

    def _lock(self) -> None:
        """Hold an exclusive flock on the lock file that is at its path (retry if replaced)."""
        import fcntl

        path = _lock_path(self.out)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise BuildError(f"{self.out}: cannot write beside the output ({error})") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                raise BuildError(
                    f"{self.out}: another build is writing this output (lock {path} is held); "
                    "wait for it to finish or choose another --out"
                ) from error
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed it between our open and flock: try again
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        """Remove the lock file while holding it, then release (see :meth:`_lock`)."""
        if self._lock_fd is not None:
            try:
                _lock_path(self.out).unlink()
            except OSError:
                pass
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _recover(self) -> None:
        """Clean up after a killed build (we hold the lock: nobody else is writing)."""
        out, parent = self.out, self.out.parent
        for old in sorted(parent.glob(f".{out.name}.old-*")):
            if not is_shard_folder(old):
                continue
            if not out.exists():
                old.rename(out)  # the build died between moving the old output and committing
            else:
                _remove_tree(old)
        for staging in parent.glob(f".{out.name}.building-*"):
            if (staging / STAGING_MARK).is_file():
                _remove_tree(staging)

    def _check(self) -> None:
        out = self.out
        if not out.exists():
            return
        if not os.access(out, os.W_OK | os.X_OK):
            raise BuildError(f"{out}: output folder is not writable")
        if not any(out.iterdir()):
            return
        if not self.overwrite:
            raise BuildError(f"{out}: output folder is not empty (pass --overwrite to replace it)")
        if not is_shard_folder(out):
            raise BuildError(
                f"{out}: --overwrite replaces only an empty folder or a terraseg shard folder "
                "(with a terraseg dataset.json); this one is neither, so it is left alone"
            )

    def _make_staging(self) -> Path:
        try:
            prefix = f".{self.out.name}.building-"
            staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.out.parent))
            staging.chmod(0o755)
            (staging / STAGING_MARK).write_bytes(b"")
        except OSError as error:
            raise self._translate(error) from error
        return staging

    def commit(self) -> None:
        """Move the finished staging folder into place; the old output is removed only after."""
        assert self.staging is not None
        (self.staging / STAGING_MARK).unlink()
        out, old = self.out, None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        self.staging.rename(out)
        self.staging = None
        if old is not None:
            shutil.rmtree(old)

    def _translate(self, error: BaseException) -> BaseException:
        if _no_space(error):
            where = getattr(error, "filename", None) or self.staging or self.out
            return BuildError(
                f"{where}: no space left on device while building {self.out}; "
                "the partial build was removed"
            )
        if isinstance(error, PermissionError):
            return BuildError(f"{error.filename or self.out}: permission denied ({error})")
        return error

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if self.staging is not None:
                _remove_tree(self.staging)
                self.staging = None
        finally:
            self._unlock()
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
        if error is not None:
            translated = self._translate(error)
            if translated is not error:
                raise translated from error


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
