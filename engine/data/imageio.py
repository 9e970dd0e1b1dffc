"""Reading images and masks from disk, with errors that name the file and the problem.

Images come back as uint8 ``HxWx3`` RGB. Masks come back as an integer ``HxW`` array of
*values*: 24-bit colour codes (``r << 16 | g << 8 | b``) for colour masks, or the raw
integer for single-band masks. :mod:`engine.data.classes` maps values to class indices.

One decoder for building and predicting: :func:`read_pil_pixels` is used by
:func:`read_image` (the shard builder) and by :class:`engine.data.rasters.PILReader`
(prediction), so both see the same pixels:

* CMYK, YCbCr and other colour modes are converted to RGB as PIL's ``convert("RGB")`` does.
* **EXIF orientation** is applied to *images* (``ImageOps.exif_transpose``): a photo is
  used upright, as viewers and annotation tools show it. **Masks are never rotated**
  (their own EXIF tag, if any, is ignored): a mask must match the upright image. When an
  image's EXIF tag swaps its sides and its mask matches only the stored size, the size
  error says so (:func:`exif_hint`).
* **Transparent mask pixels** (alpha 0 in an RGBA/LA/palette colour mask) become the value
  :data:`TRANSPARENT`, which the builder maps to ignore (255); partly transparent pixels
  (alpha 1..254) are an error, since their colour is a blend.
* **Size limit**: the pixel count in the header is checked *before* decoding, against
  :data:`MAX_PIXELS` (1.5 G pixels; override with the ``TERRASEG_MAX_PIXELS`` environment
  variable or ``max_pixels=``). A file over it is an :class:`ImageReadError` naming it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.data.npy_member import HEAD_BYTES, NpyHeader, check_stored, npy_view, parse_header
from engine.errors import UserError

TIFF_SUFFIXES = {".tif", ".tiff"}
#: Default limit on the pixels (height x width) of one decoded image or mask.
MAX_PIXELS = 1_500_000_000
#: Mask value of fully transparent pixels of colour masks (mapped to ignore by the builder).
TRANSPARENT = -1
#: EXIF orientations that swap height and width (transpose, 90° and 270° rotations).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


class ImageReadError(UserError):
    """An image or mask file cannot be used; the message names the file and the problem."""


def max_pixels(override: int | None = None) -> int:
    """The pixel limit in force: ``override``, else ``$TERRASEG_MAX_PIXELS``, else the default.

    Raises:
        ImageReadError: when ``TERRASEG_MAX_PIXELS`` is not a positive integer.
    """
    if override is not None:
        return int(override)
    text = os.environ.get("TERRASEG_MAX_PIXELS")
    if not text:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ImageReadError(f"TERRASEG_MAX_PIXELS={text!r}: must be a positive integer")
    return value


def check_pixels(path: Path, height: int, width: int, limit: int | None = None) -> None:
    """Raise when a header's ``height x width`` exceeds the pixel limit (before decoding).

    Raises:
        ImageReadError: naming the file, its size and the limit.
    """
    allowed = max_pixels(limit)
    if height <= 0 or width <= 0:
        raise ImageReadError(f"{path}: header claims an empty {width}x{height} (WxH) image")
    if height * width > allowed:
        raise ImageReadError(
            f"{path}: header claims {width}x{height} (WxH) = {height * width:,} pixels, over "
            f"the limit of {allowed:,} (raise it with TERRASEG_MAX_PIXELS if the file is real)"
        )


def _open_pil(path: Path, limit: int | None = None) -> Image.Image:
    """Open with the size checked from the header before any pixel is decoded, then load."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # our own limit, which names the file, replaces PIL's
    try:
        image = Image.open(path)
        check_pixels(path, image.height, image.width, limit)
        image.load()
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (OSError, SyntaxError, ValueError, MemoryError) as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(
            f"{path}: cannot decode image (truncated or corrupt?): {error}"
        ) from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return image


def open_image(path: str | Path, limit: int | None = None) -> Image.Image:
    """Open and decode an image with PIL, its header's pixel count checked first.

    Raises:
        ImageReadError: naming the file when it is missing, over the limit or corrupt.
    """
    return _open_pil(Path(path), limit)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = upright, also when absent)."""
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block is treated as absent
        return 1


def read_pil_pixels(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, str]:
    """Decode a PNG/JPEG/WebP/BMP image the way build and predict both use it.

    Applies EXIF orientation, converts palette, CMYK, YCbCr and other colour modes to RGB
    (RGBA when there is transparency), and keeps uint16 single-band data as uint16.

    Args:
        path: The image file.
        limit: Pixel limit (default :func:`max_pixels`).

    Returns:
        ``(array, mode)``: ``HxWxC`` (C = 3 or 4) uint8, or ``HxW`` for single-band images
        (uint8 or uint16), and the file's PIL mode.

    Raises:
        ImageReadError: naming the file when it is missing, too large or cannot be decoded.
    """
    path = Path(path)
    image = _open_pil(path, limit)
    mode = image.mode
    try:
        if exif_orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("P", "PA"):
            transparent = "transparency" in image.info or image.mode == "PA"
            image = image.convert("RGBA" if transparent else "RGB")
        elif image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(image.convert("I")).astype(np.uint16), mode
        elif image.mode not in ("RGB", "RGBA", "L", "LA", "I", "F", "1"):
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBa
        return np.asarray(image), mode
    except (OSError, ValueError) as error:
        raise ImageReadError(f"{path}: cannot decode image: {error}") from error


def exif_hint(image_path: str | Path, mask_shape: tuple[int, ...]) -> str:
    """Why a mask may not match its image: the image's EXIF rotation, or ``""``.

    Returns a sentence to append to a size-mismatch error when the image carries an EXIF
    orientation that swaps its sides and ``mask_shape`` matches the image's *stored* size.
    """
    path = Path(image_path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return ""
    try:
        with Image.open(path) as image:
            orientation = exif_orientation(image)
            stored = (image.height, image.width)
    except Exception:
        return ""
    if orientation in _SWAPPING_ORIENTATIONS and tuple(mask_shape[:2]) == stored:
        return (
            f" The image has EXIF orientation {orientation} (shown rotated; terraseg uses it "
            "upright, as displayed) and the mask matches its stored, unrotated size: masks are "
            "never rotated, so save the mask in the upright orientation (or strip the EXIF tag "
            "from the image if the mask is right for the stored pixels)."
        )
    return ""


def _read_tiff(path: Path, limit: int | None = None) -> tuple[np.ndarray, int | None]:
    """Every band of a TIFF through rasterio: ``(HxWxC native, alpha position or None)``."""
    from engine.data.rasters import read_whole_raster  # rasters imports this module

    return read_whole_raster(path, limit)


def read_image(path: str | Path, *, limit: int | None = None) -> np.ndarray:
    """Read an 8-bit RGB image as uint8 ``HxWx3``, upright (EXIF orientation applied).

    Accepts JPEG (RGB, CMYK, YCbCr), PNG (RGB, RGBA with a constant alpha, palette), WebP and
    3-band uint8 TIFF (an alpha band, by its colour interpretation, is dropped). Non-TIFF
    files go through :func:`read_pil_pixels`, the decoder prediction uses too. Images of
    other band counts or pixel types are read at native precision, never rescaled, with
    :func:`engine.data.rasters.open_raster`.

    Args:
        path: The image file.
        limit: Pixel limit (default :func:`max_pixels`).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded, is over the pixel limit
            or is not 3-band 8-bit RGB.
    """
    path = Path(path)
    hint = "; read N-band or 16-bit images with engine.data.rasters.open_raster"
    if path.suffix.lower() in TIFF_SUFFIXES:
        array, alpha = _read_tiff(path, limit)
        if alpha is not None:
            array = np.delete(array, alpha, axis=2)
    else:
        array, _ = read_pil_pixels(path, limit)
        if array.ndim == 3 and array.shape[2] == 4:
            alpha_band = array[..., 3]
            if alpha_band.min() != alpha_band.max():
                raise ImageReadError(
                    f"{path}: 4-band image whose 4th band is not a constant alpha; "
                    "terraseg needs 3-band RGB"
                )
            array = array[..., :3]
    bands = 1 if array.ndim == 2 else array.shape[2]
    if bands != 3:
        raise ImageReadError(f"{path}: {bands}-band image; read_image gives 3-band RGB{hint}")
    if array.dtype != np.uint8:
        raise ImageReadError(
            f"{path}: pixel type {array.dtype}; read_image gives 8-bit RGB (no rescaling){hint}"
        )
    return np.ascontiguousarray(array)


def _mask_colours(array: np.ndarray, path: Path) -> np.ndarray:
    """24-bit codes of a uint8 RGB(A) mask; alpha 0 → :data:`TRANSPARENT`, 1..254 → error."""
    alpha = None
    if array.ndim == 3 and array.shape[2] == 4:
        alpha, array = array[..., 3], array[..., :3]
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageReadError(
            f"{path}: expected an 8-bit colour mask for encoding 'rgb', got shape "
            f"{array.shape} {array.dtype}"
        )
    rgb = array.astype(np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if alpha is not None and alpha.min() < 255:
        partial = int(np.count_nonzero((alpha > 0) & (alpha < 255)))
        if partial:
            raise ImageReadError(
                f"{path}: {partial:,} partly transparent mask pixels (alpha 1..254) have no "
                "single class; use alpha 0 (ignored) or 255 only"
            )
        codes[alpha == 0] = TRANSPARENT
    return codes


def read_mask_values(path: str | Path, encoding: str, *, limit: int | None = None) -> np.ndarray:
    """Read a mask as an ``HxW`` array of values for the given encoding.

    Masks are used as stored: EXIF orientation is *not* applied (see the module notes).

    Args:
        path: The mask file (PNG, palette PNG, TIFF; 8 or 16 bit).
        encoding: ``"rgb"``: 3-band colour masks (palette masks are converted to colours),
            values are 24-bit colour codes; fully transparent pixels of RGBA, LA and
            palette masks with transparency are :data:`TRANSPARENT` (the builder maps them
            to ignore). ``"index"``: single-band masks (palette masks keep their palette
            indices), values are the integers stored: 0..65535 for PNG; for TIFF (read
            through rasterio) any integer type, signed and 16-bit included (−1 stays −1).
        limit: Pixel limit (default :func:`max_pixels`).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded, is over the pixel limit
            or does not fit the encoding.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _tiff_mask_values(path, encoding, limit)
    image = _open_pil(path, limit)
    if encoding == "rgb":
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            image = image.convert("RGBA")
        elif image.mode in ("P", "L", "1", "CMYK", "YCbCr"):
            image = image.convert("RGB")
    elif encoding == "index" and image.mode.startswith("I;16"):
        image = image.convert("I")
    array = np.asarray(image)
    if encoding == "rgb":
        return _mask_colours(array, path)
    if array.ndim != 2:
        raise ImageReadError(
            f"{path}: expected a single-band mask for encoding 'index', got shape {array.shape}"
        )
    if array.dtype not in (np.uint8, np.uint16, np.int32) or array.min() < 0 or array.max() > 65535:
        raise ImageReadError(f"{path}: mask values must be integers in 0..65535 ({array.dtype})")
    return array.astype(np.int32)


def _tiff_mask_values(path: Path, encoding: str, limit: int | None) -> np.ndarray:
    """:func:`read_mask_values` of a TIFF: every integer type, as stored."""
    array, alpha = _read_tiff(path, limit)
    if encoding == "rgb":
        if alpha is not None and alpha != array.shape[2] - 1:  # alpha last, as PIL's RGBA
            order = [b for b in range(array.shape[2]) if b != alpha] + [alpha]
            array = array[..., order]
        return _mask_colours(array, path)
    if array.shape[2] != 1:
        raise ImageReadError(
            f"{path}: expected a single-band mask for encoding 'index', got {array.shape[2]} bands"
        )
    array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise ImageReadError(
            f"{path}: mask pixel type {array.dtype} is not an integer type (class values)"
        )
    if array.dtype in (np.uint32, np.int64, np.uint64) and array.size:
        low, high = int(array.min()), int(array.max())
        if low < -(2**31) or high >= 2**31:
            raise ImageReadError(f"{path}: mask values {low}..{high} outside the int32 range")
    return array.astype(np.int32)


def image_size(path: str | Path) -> tuple[int, int]:
    """Return the stored ``(height, width)`` of an image or mask without decoding its pixels.

    Raises:
        ImageReadError: naming the file when its header cannot be read.
    """
    path = Path(path)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            from engine.data.rasters import _open_dataset  # rasters imports this module

            with _open_dataset(path) as src:
                return src.height, src.width
        with Image.open(path) as image:
            return image.height, image.width
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except Exception as error:  # PIL and GDAL raise many types for corrupt headers
        raise ImageReadError(f"{path}: cannot read the image header: {error}") from error
    finally:
        Image.MAX_IMAGE_PIXELS = previous


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
    is a ``bytearray`` (as :mod:`engine.data.loader` reads them).

    Args:
        data: The member's bytes.
        codec: Its codec.
        check: Called with what the header claims (shape, type) before any pixel is
            decoded or any array made; raises ``ValueError`` when that is not what the
            manifest describes (:func:`engine.data.sample_checks.check_image`).
        name: The member's name in messages (``image``, ``mask``).

    Raises:
        ValueError: naming the member and the problem (see :mod:`engine.data.npy_member`).
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
