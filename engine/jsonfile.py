"""Metadata files someone else wrote (``dataset.json``, ``model.json``, state files), read safely.

A leaf module (it imports only :mod:`engine.errors`). Every JSON file terraseg reads back is
data from a possibly hostile writer: its size is bounded before it is read
(``TERRASEG_MAX_METADATA_BYTES``, default 16 MiB; a real manifest of 100,000 shards is
~10 MiB), and it must be strict JSON: no ``NaN``/``Infinity``, no nesting deeper than
Python can parse. Each problem is a :class:`MetadataError` naming the file. The callers
check the schema (types and ranges of the fields they use).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import UserError
from engine.settings import env_number

DEFAULT_LIMIT = 16 << 20


class MetadataError(UserError):
    """A metadata file is too large or not strict JSON; the message names the file."""


def metadata_limit() -> int:
    """The byte limit for one metadata file (``TERRASEG_MAX_METADATA_BYTES``)."""
    return int(
        env_number(
            "TERRASEG_MAX_METADATA_BYTES", DEFAULT_LIMIT, error=MetadataError, integer=True,
            positive=True,
        )
    )  # fmt: skip


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes | str, source: object, limit: int | None = None) -> object:
    """The value of one strict JSON document.

    Args:
        raw: the file's bytes (UTF-8) or text.
        source: what to name in errors (a path or URL).
        limit: the byte limit; :func:`metadata_limit` when None.

    Raises:
        MetadataError: naming ``source`` when ``raw`` is over the limit, not UTF-8, not
            strict JSON (``NaN``, ``Infinity``) or nested too deeply.
    """
    limit = metadata_limit() if limit is None else limit
    if len(raw) > limit:
        raise MetadataError(
            f"{source}: {len(raw)} bytes is over the {limit}-byte limit for metadata files "
            "(TERRASEG_MAX_METADATA_BYTES)"
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise MetadataError(f"{source}: not UTF-8 text ({error.reason})") from error
    except RecursionError as error:
        raise MetadataError(f"{source}: JSON nested too deeply") from error
    except ValueError as error:
        raise MetadataError(f"{source}: not valid JSON ({error})") from error


def read_json(path: str | Path, limit: int | None = None) -> object:
    """:func:`parse_json` of a local file, its size checked before a byte is read.

    Raises:
        MetadataError: as :func:`parse_json`, or when the file is not a regular file.
        OSError: when the file cannot be opened (callers name it as they need).
    """
    limit = metadata_limit() if limit is None else limit
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO or device would block or never end
        raise MetadataError(f"{path}: not a regular file")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise MetadataError(
                f"{path}: {size} bytes is over the {limit}-byte limit for metadata files "
                "(TERRASEG_MAX_METADATA_BYTES)"
            )
        return parse_json(handle.read(limit + 1), path, limit)
