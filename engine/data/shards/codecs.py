"""The codecs of shard members: how an image or mask array becomes bytes and back.

``npy`` stores any array as it is (no decoding when read: a view of the member's bytes,
its header parsed with bounds by :mod:`engine.data.shards.npy_member`); ``png``, ``jpg``
and ``webp`` hold 3-band uint8 images and uint8 masks. The builder encodes
(:func:`encode_image`), the loader decodes (:func:`decode_image`).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from engine.data.shards.npy_member import (
    HEAD_BYTES,
    NpyHeader,
    check_stored,
    npy_view,
    parse_header,
)

#: Codecs of images inside shards.
IMAGE_CODECS = ("png", "jpg", "webp", "npy")


def mask_codec_for(image_codec: str) -> str:
    """Codec of the masks in shards whose images use ``image_codec``.

    ``npy`` shards are the no-decode choice, so their masks are raw too (decoding a 1024²
    PNG mask costs ~5 ms of CPU, more than everything else in a ``npy`` sample); the
    compressed codecs keep PNG masks, which are lossless and small.
    """
    return "npy" if image_codec == "npy" else "png"


def encode_image(array: np.ndarray, codec: str, quality: int = 95) -> bytes:
    """Encode an image (``HxWxC``) or mask (``HxW``) array for a shard member.

    ``npy`` stores any array as it is (C order, its own type: uint8, uint16, int16,
    float32 bands); ``png``, ``jpg`` and ``webp`` take uint8 ``HxWx3`` images or ``HxW``
    masks only.

    Raises:
        ValueError: for an unknown codec, or an array the codec cannot hold.
    """
    buffer = io.BytesIO()
    pictured = array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    if codec != "npy" and (array.dtype != np.uint8 or not pictured):
        raise ValueError(
            f"the {codec} codec holds uint8 HxWx3 images only, not {array.shape} {array.dtype}; "
            "use npy"
        )
    if codec == "npy":
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    elif codec == "png":
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    elif codec == "jpg":
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality, subsampling=0)
    elif codec == "webp":
        Image.fromarray(array).save(buffer, format="WEBP", lossless=True)
    else:
        raise ValueError(f"unknown image codec {codec!r}; choose from {IMAGE_CODECS}")
    return buffer.getvalue()


def _picture_header(image: Image.Image) -> NpyHeader:
    """What a picture member's header claims, as an :class:`NpyHeader` (before decoding)."""
    bands = len(image.getbands())
    dtype = np.dtype(_MODE_DTYPES.get(image.mode, np.uint8))
    shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
    return NpyHeader(0, shape, dtype, False)


_MODE_DTYPES = {"1": bool, "I": np.int32, "F": np.float32, "I;16": np.uint16}


def decode_image(
    data: bytes | bytearray,
    codec: str,
    check: Callable[[NpyHeader], None] | None = None,
    name: str = "member",
) -> np.ndarray:
    """Decode a shard member written by :func:`encode_image` back to its array.

    ``png``/``jpg``/``webp`` give uint8; ``npy`` gives the stored type (the bands' type).
    ``npy`` members are not copied: the array is a view of ``data``, writable when ``data``
    is a ``bytearray`` (as :mod:`engine.data.shards.loader` reads them).

    Args:
        data: The member's bytes.
        codec: Its codec.
        check: Called with what the header claims (shape, type) before any pixel is
            decoded or any array made; raises ``ValueError`` when that is not what the
            manifest describes (:func:`engine.data.shards.checks.check_image`).
        name: The member's name in messages (``image``, ``mask``).

    Raises:
        ValueError: naming the member and the problem (see :mod:`engine.data.shards.npy_member`).
    """
    name = f"{name}.{codec}"
    if codec == "npy":
        header = parse_header(memoryview(data)[:HEAD_BYTES], len(data), name)
        if check is not None:
            check(header)
        check_stored(header, len(data) - header.start, name)
        return npy_view(data, header)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: {error}") from None
    with image:
        if check is not None:
            check(_picture_header(image))
        return np.array(image)  # a writable copy: torch.from_numpy needs one
