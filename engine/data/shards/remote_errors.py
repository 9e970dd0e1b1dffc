"""How a remote read failed: the HTTP status behind fsspec's wrapping, and one-line errors.

fsspec reports a 5xx on a size lookup as ``FileNotFoundError`` and s3fs turns botocore's
errors into ``OSError`` subclasses; both keep the original as ``__cause__``, so the status
is read from there: 404 "not found" and 403 "forbidden" at once, 5xx and 429 retried.
"""

from __future__ import annotations

import time

from engine.errors import UserError
from engine.settings import env_number

CHUNK = 8 << 20  # bytes that must arrive within one deadline (and s3fs's block size)


class ShardReadError(UserError):
    """A shard sample cannot be decoded; the message names the shard, the sample and why."""


class ShardStoreError(UserError):
    """A URL cannot be read or written (after retries); the message names the URL."""


def setting(name: str, default: float, *, positive: bool = False) -> float:
    """A number from the environment variable ``name`` (``default`` when unset or empty)."""
    return env_number(name, default, error=ShardStoreError, positive=positive)


def _chain(error: BaseException | None):
    """``error`` and its causes (``__cause__``, else ``__context__``), at most 8 deep."""
    for _ in range(8):
        if error is None:
            return
        yield error
        error = error.__cause__ or error.__context__


def status_of(error: BaseException) -> int | None:
    """The HTTP status (>= 400) behind ``error``, aiohttp's or botocore's.

    Found wherever fsspec wrapped it (a 5xx on a size lookup arrives as ``FileNotFoundError``).
    """
    for link in _chain(error):
        status = getattr(link, "status", None)  # aiohttp.ClientResponseError
        response = getattr(link, "response", None)  # botocore ClientError
        if not isinstance(status, int) and isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int) and status >= 400:
            return status
    return None


def kind_of(error: BaseException) -> str:
    """``missing``, ``forbidden``, ``changed``, ``transient`` (retry may help) or ``fatal``."""
    status = status_of(error)
    if status is not None:
        return {404: "missing", 403: "forbidden", 401: "forbidden", 412: "changed"}.get(
            status, "transient" if status >= 500 or status == 429 else "fatal"
        )
    if isinstance(error, (UserError, IsADirectoryError)):
        return "fatal"
    causes = list(_chain(error))[1:]
    if any(isinstance(c, (TimeoutError, ConnectionError)) or _aiohttp_error(c) for c in causes):
        return "transient"  # e.g. fsspec's FileNotFoundError from a refused connection
    if isinstance(error, FileNotFoundError):
        return "missing"
    if isinstance(error, PermissionError):
        return "forbidden"
    return "fatal" if isinstance(error, ValueError) else "transient"


def _aiohttp_error(error: BaseException) -> bool:
    import aiohttp

    return isinstance(error, aiohttp.ClientError)


def named(url: str, error: BaseException, kind: str) -> UserError:
    """The one-line error for a failure that retrying cannot fix."""
    status = status_of(error)
    if kind == "missing":
        return ShardStoreError(f"{url}: not found")
    if kind == "forbidden":
        return ShardStoreError(f"{url}: forbidden" + (f" (HTTP {status})" if status else ""))
    if kind == "changed":
        return ShardReadError(f"{url}: the object changed while it was read (ETag mismatch)")
    if status is not None:
        return ShardStoreError(f"{url}: HTTP {status}")
    return ShardStoreError(f"{url}: {type(error).__name__}: {error}")


def gave_up(
    url: str, error: BaseException, tries: int, position: int, per: str = f"{CHUNK >> 20} MiB chunk"
) -> ShardStoreError:
    """The one-line error after ``tries`` transient failures (``per``: what one deadline is for)."""
    status = status_of(error)
    if status == 429:
        return ShardStoreError(f"{url}: too many requests (HTTP 429) after {tries} tries")
    if status is not None:
        return ShardStoreError(f"{url}: server error (HTTP {status}) after {tries} tries")
    if any(isinstance(link, TimeoutError) for link in _chain(error)):
        deadline = setting("TERRASEG_SHARD_DEADLINE", 120.0, positive=True)
        return ShardStoreError(
            f"{url}: timed out after {tries} tries (deadline {deadline:g}s per {per})"
        )
    return ShardStoreError(
        f"{url}: failed after {tries} tries at byte {position}: {type(error).__name__}: {error}"
    )


def backoff_wait(failures: int) -> None:
    """Sleep ``TERRASEG_SHARD_BACKOFF`` x 2^failures seconds (at most 30)."""
    time.sleep(min(setting("TERRASEG_SHARD_BACKOFF", 1.0) * 2**failures, 30.0))
