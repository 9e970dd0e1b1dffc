"""The ``.npy`` members of shards: their headers read with bounds, their arrays as views.

A shard may come from anywhere, so an ``npy`` header is data, not a plan: both read paths
(:func:`engine.data.shards.codecs.decode_image` and
:mod:`engine.data.shards.direct_read`) parse it
here and check what it claims (shape, type, order) against the manifest *before* any
array is made from it; nothing is ever allocated from a claimed shape. Rules:

* :func:`parse_header`: the header is at most :data:`MAX_HEADER_BYTES` (numpy's own
  limit) and is parsed by numpy's reader (a literal dictionary with exactly ``descr``,
  ``fortran_order`` and ``shape``; nothing in it is evaluated); dimensions are non-negative;
* then the caller checks the claimed shape and type against the manifest;
* :func:`check_stored`: C order, a plain (non-object) type, and the member holds the bytes
  the shape needs; :func:`npy_view` then makes a view of them, never a copy.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np

#: Most bytes of an ``npy`` header's dictionary (numpy's ``max_header_size`` default).
MAX_HEADER_BYTES = 10_000
#: Bytes that hold an ``npy`` member's magic, version and header length.
PREFIX_BYTES = 12
#: Most bytes from a member's start to the end of its header.
HEAD_BYTES = PREFIX_BYTES + MAX_HEADER_BYTES
_MAGIC = b"\x93NUMPY"


class NpyHeader(NamedTuple):
    """What an ``npy`` member's header says."""

    start: int  # offset of the array data from the member's first byte
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the array the header describes."""
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def header_end(prefix: bytes | bytearray | memoryview, name: str) -> int:
    """Bytes from the member's start to the end of its header, from its first bytes.

    Args:
        prefix: The member's first :data:`PREFIX_BYTES` bytes (fewer when it is shorter).
        name: The member's name, for messages.

    Raises:
        ValueError: ``"<name> is not an npy array"``, an unsupported version, or a header
            longer than :data:`MAX_HEADER_BYTES`.
    """
    prefix = bytes(prefix[:PREFIX_BYTES])
    if len(prefix) < 10 or not prefix.startswith(_MAGIC):
        raise ValueError(f"{name} is not an npy array")
    major = prefix[6]
    if major == 1:
        start, length = 10, int.from_bytes(prefix[8:10], "little")
    elif major in (2, 3) and len(prefix) >= PREFIX_BYTES:
        start, length = 12, int.from_bytes(prefix[8:12], "little")
    else:
        raise ValueError(f"{name}: unsupported npy version {major}")
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"{name}: npy header of {length:,} bytes (at most {MAX_HEADER_BYTES:,})")
    return start + length


def parse_header(head: bytes | bytearray | memoryview, size: int, name: str) -> NpyHeader:
    """Parse an ``npy`` member's header (what it claims; :func:`check_stored` checks it).

    Args:
        head: The member's bytes up to at least :func:`header_end` (more is fine).
        size: The member's size in bytes.
        name: The member's name, for messages.

    Raises:
        ValueError: naming the member and the problem: not npy, a header longer than the
            member or than :data:`MAX_HEADER_BYTES`, not a literal dictionary of the three
            keys, or a negative dimension.
    """
    end = header_end(head, name)
    if end > min(size, len(head)):
        raise ValueError(f"{name}: npy header of {end:,} bytes is longer than the member")
    stream = io.BytesIO(bytes(head[:end]))
    major = np.lib.format.read_magic(stream)[0]
    formats = np.lib.format
    read = formats.read_array_header_1_0 if major == 1 else formats.read_array_header_2_0
    try:
        with warnings.catch_warnings():  # numpy warns about Python 2 headers it repairs
            warnings.simplefilter("ignore")
            shape, fortran, dtype = read(stream, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as error:
        problem = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"{name}: malformed npy header ({problem})") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"{name}: npy header claims a negative dimension {shape}")
    return NpyHeader(end, tuple(shape), dtype, fortran)


def check_stored(header: NpyHeader, available: int, name: str) -> None:
    """Check a parsed header describes a plain C-order array that the member holds.

    Call it after the claimed shape and type were checked against the manifest;
    ``available`` is the member's bytes after its header.

    Raises:
        ValueError: naming the member: Fortran order, an object type, or fewer bytes
            than the shape needs (``"<name> is truncated"``).
    """
    if header.fortran:
        raise ValueError(f"{name} is stored in Fortran order; shards hold C order")
    if header.dtype.hasobject or header.dtype.itemsize == 0:
        raise ValueError(f"{name}: npy type {header.dtype} is not a pixel type (never read)")
    if available < header.nbytes:
        raise ValueError(f"{name} is truncated ({available} of {header.nbytes} bytes)")


def npy_view(data: bytes | bytearray, header: NpyHeader) -> np.ndarray:
    """The array of a member :func:`check_stored` accepted: a view of ``data``, no copy.

    Writable when ``data`` is a ``bytearray`` (as :mod:`engine.data.shards.loader` reads members).
    """
    count = int(np.prod(header.shape))
    return np.frombuffer(data, header.dtype, count=count, offset=header.start).reshape(header.shape)
