"""Reading images and masks from disk, with errors that name the file and the problem.

Images come back as uint8 ``HxWx3`` RGB. Masks come back as an integer ``HxW`` array of
*values*: 24-bit colour codes (``r << 16 | g << 8 | b``) for colour masks, or the raw
integer for single-band masks. :mod:`engine.data.sources.classes` maps values to class indices.

One decoder for building and predicting: :func:`~engine.data.sources.pictures.read_pil_pixels`
is used by :func:`read_image` (the shard builder) and by
:class:`engine.data.sources.rasters.PILReader` (prediction), so both see the same pixels;
rasters GDAL reads (GeoTIFF, JPEG 2000, VRT …: :mod:`engine.data.sources.formats`) go
through :mod:`engine.data.sources.rasters`:

* CMYK, YCbCr and other colour modes are converted to RGB as PIL's ``convert("RGB")`` does.
* **EXIF orientation** is applied to *images* (``ImageOps.exif_transpose``): a photo is
  used upright, as viewers and annotation tools show it. **Masks are never rotated**
  (their own EXIF tag, if any, is ignored): a mask must match the upright image. When an
  image's EXIF tag swaps its sides and its mask matches only the stored size, the size
  error says so (:func:`~engine.data.sources.pictures.exif_hint`).
* **Transparent mask pixels** (alpha 0 in an RGBA/LA/palette colour mask) become the value
  :data:`TRANSPARENT`, which the builder maps to ignore (255); partly transparent pixels
  (alpha 1..254) are an error, since their colour is a blend.
* **Size limit**: the pixel count in the header is checked *before* decoding, against
  :data:`~engine.data.sources.pictures.MAX_PIXELS` (1.5 G pixels; override with the
  ``TERRASEG_MAX_PIXELS`` environment variable or ``max_pixels=``). A file over it is an
  :class:`~engine.data.sources.pictures.ImageReadError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.sources.formats import read_by_gdal
from engine.data.sources.pictures import (
    ImageReadError,
    open_image,
    read_pil_pixels,
)
from engine.data.sources.raster_base import alpha_is_mask
from engine.data.sources.rasters import _open_dataset, read_whole_raster

#: Mask value of fully transparent pixels of colour masks (mapped to ignore by the builder).
TRANSPARENT = -1


def _read_tiff(path: Path, limit: int | None = None) -> tuple[np.ndarray, int | None]:
    """Every band of a TIFF through rasterio: ``(HxWxC native, alpha position or None)``."""
    return read_whole_raster(path, limit)


def read_image(path: str | Path, *, limit: int | None = None) -> np.ndarray:
    """Read an 8-bit RGB image as uint8 ``HxWx3``, upright (EXIF orientation applied).

    Accepts JPEG (RGB, CMYK, YCbCr), PNG (RGB, RGBA with a constant alpha, palette), WebP and
    3-band uint8 TIFF (a band tagged alpha is dropped when it holds a 0/255 mask). Non-TIFF
    files go through :func:`read_pil_pixels`, the decoder prediction uses too. Images of
    other band counts or pixel types are read at native precision, never rescaled, with
    :func:`engine.data.sources.rasters.open_raster`.

    Args:
        path: The image file.
        limit: Pixel limit (default :func:`max_pixels`).

    Raises:
        ImageReadError: naming the file, when it cannot be decoded, is over the pixel limit
            or is not 3-band 8-bit RGB.
    """
    path = Path(path)
    hint = "; read N-band or 16-bit images with engine.data.sources.rasters.open_raster"
    if read_by_gdal(path):
        array, alpha = _read_tiff(path, limit)
        if alpha is not None and alpha_is_mask([array[..., alpha]], array.dtype):
            array = np.delete(array, alpha, axis=2)  # a band tagged alpha holding data stays
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
    if read_by_gdal(path):
        return _tiff_mask_values(path, encoding, limit)
    image = open_image(path, limit)
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
        if read_by_gdal(path):
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
