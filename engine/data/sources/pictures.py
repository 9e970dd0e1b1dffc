"""Decoding picture files (JPEG, PNG, WebP, BMP) through PIL, bounded and upright.

One decoder for building and predicting: :func:`read_pil_pixels` is used by
:func:`engine.data.sources.imageio.read_image` (the shard builder) and by
:class:`engine.data.sources.rasters.PILReader` (prediction), so both see the same pixels.
The pixel count in the header is checked *before* decoding, against
:data:`MAX_PIXELS` (1.5 G pixels; override with ``TERRASEG_MAX_PIXELS`` or ``limit=``).
EXIF orientation is applied to images (:func:`exif_orientation`, :func:`exif_hint`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from engine.data.sources.formats import read_by_gdal
from engine.errors import UserError

#: Default limit on the pixels (height x width) of one decoded image or mask.
MAX_PIXELS = 1_500_000_000
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
    if read_by_gdal(path):
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
