"""Reading images and masks from disk, with errors that name the file and the problem.

Images come back as uint8 ``HxWx3`` RGB. Masks come back as an integer ``HxW`` array of
*values*: 24-bit colour codes (``r << 16 | g << 8 | b``) for colour masks, or the raw
integer for single-band masks. :mod:`engine.data.classes` maps values to class indices.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from engine.errors import UserError

TIFF_SUFFIXES = {".tif", ".tiff"}


class ImageReadError(UserError):
    """An image or mask file cannot be used; the message names the file and the problem."""


def _open_pil(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(
            f"{path}: cannot decode image (truncated or corrupt?): {error}"
        ) from error
    return image


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array = page.asarray()
            planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except Exception as error:  # tifffile raises many types for corrupt files
        raise ImageReadError(
            f"{path}: cannot decode TIFF (truncated or corrupt?): {error}"
        ) from error
    if array.ndim == 3 and planar:
        array = np.moveaxis(array, 0, -1)
    return array


def _to_uint8(array: np.ndarray, path: Path, uint16_max: int | None) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        scale_max = uint16_max or 65535
        scaled = np.clip(array.astype(np.float32) * (255.0 / scale_max), 0, 255)
        return np.rint(scaled).astype(np.uint8)
    raise ImageReadError(f"{path}: pixel type {array.dtype} is not supported (uint8 or uint16)")


def read_image(path: str | Path, uint16_max: int | None = None) -> np.ndarray:
    """Read an image as uint8 RGB ``HxWx3``.

    Accepts JPEG, PNG (RGB, RGBA with a constant alpha, palette), WebP and TIFF (3-band,
    or 4-band with a constant alpha; uint8 or uint16).

    Args:
        path: The image file.
        uint16_max: For uint16 input, the value that maps to 255 (default 65535; 4095 for
            12-bit sensors, 10000 for reflectance products).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or is not 3-band RGB.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff(path)
    else:
        image = _open_pil(path)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        elif image.mode == "I;16":
            image = image.convert("I")
        array = np.asarray(image)
        if image.mode == "I":
            array = array.astype(np.uint16)
    bands = 1 if array.ndim == 2 else array.shape[2]
    if bands == 4:
        alpha = array[..., 3]
        if alpha.min() != alpha.max():
            raise ImageReadError(
                f"{path}: 4-band image whose 4th band is not a constant alpha; "
                "terraseg needs 3-band RGB"
            )
        array = array[..., :3]
    elif bands != 3:
        raise ImageReadError(f"{path}: {bands}-band image; terraseg needs 3-band RGB")
    return np.ascontiguousarray(_to_uint8(array, path, uint16_max))


def read_mask_values(path: str | Path, encoding: str) -> np.ndarray:
    """Read a mask as an ``HxW`` array of values for the given encoding.

    Args:
        path: The mask file (PNG, palette PNG, TIFF; 8 or 16 bit).
        encoding: ``"rgb"``: 3-band colour masks (palette masks are converted to colours),
            values are 24-bit colour codes. ``"index"``: single-band masks (palette masks
            keep their palette indices), values are the integers stored.

    Raises:
        ImageReadError: naming the file, when it cannot be decoded or does not fit the
            encoding.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff(path)
    else:
        image = _open_pil(path)
        if encoding == "rgb" and image.mode in ("P", "RGBA", "LA", "L"):
            image = image.convert("RGB")
        elif encoding == "index" and image.mode == "I;16":
            image = image.convert("I")
        array = np.asarray(image)
    if encoding == "rgb":
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ImageReadError(
                f"{path}: expected an 8-bit colour mask for encoding 'rgb', got shape "
                f"{array.shape} {array.dtype}"
            )
        rgb = array.astype(np.int32)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if array.ndim != 2:
        raise ImageReadError(
            f"{path}: expected a single-band mask for encoding 'index', got shape {array.shape}"
        )
    if array.dtype not in (np.uint8, np.uint16, np.int32) or array.min() < 0 or array.max() > 65535:
        raise ImageReadError(f"{path}: mask values must be integers in 0..65535 ({array.dtype})")
    return array.astype(np.int32)


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(height, width)`` of an image or mask without decoding its pixels."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return int(page.imagelength), int(page.imagewidth)
    with Image.open(path) as image:
        return image.height, image.width


# Codecs for images inside shards.
IMAGE_CODECS = ("png", "jpg", "webp", "npy")


def mask_codec_for(image_codec: str) -> str:
    """Codec of the masks in shards whose images use ``image_codec``.

    ``npy`` shards are the no-decode choice, so their masks are raw too (decoding a 1024²
    PNG mask costs ~5 ms of CPU, more than everything else in a ``npy`` sample); the
    compressed codecs keep PNG masks, which are lossless and small.
    """
    return "npy" if image_codec == "npy" else "png"


def encode_image(array: np.ndarray, codec: str, quality: int = 95) -> bytes:
    """Encode a uint8 ``HxWx3`` (image) or ``HxW`` (mask) array for a shard member."""
    buffer = io.BytesIO()
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


def _npy_view(data: bytes | bytearray) -> np.ndarray:
    """The array of an ``.npy`` payload as a view of ``data`` (no copy; writable if ``data`` is)."""
    header = io.BytesIO(data)
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(header)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(header)
    if fortran_order or dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    count = int(np.prod(shape))
    return np.frombuffer(data, dtype, count=count, offset=header.tell()).reshape(shape)


def decode_image(data: bytes | bytearray, codec: str) -> np.ndarray:
    """Decode a shard member written by :func:`encode_image` back to a uint8 array.

    ``npy`` members are not copied: the array is a view of ``data``, writable when ``data``
    is a ``bytearray`` (as :mod:`engine.data.loader` reads them).
    """
    if codec == "npy":
        return _npy_view(data)
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image)  # a writable copy: torch.from_numpy needs one
