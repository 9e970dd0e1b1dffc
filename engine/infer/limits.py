"""What a prediction checks before it writes anything: the pixel limit and the free disk.

**Pixels.** Every input's ``rows x cols`` is read from its header (nothing decoded) and
checked against the builder's limit, :func:`engine.data.sources.pictures.check_pixels`:
``TERRASEG_MAX_PIXELS`` (default 1.5 G pixels), or ``max_pixels`` (``predict.py
--max-pixels``). Prediction keeps the builder's default although it streams GeoTIFF inputs
in strips (memory does not grow with the raster): the limit stops an absurd header (a
2,000,000² VRT) before hours of work, and a real mosaic over it needs one explicit
``--max-pixels``, its disk space being checked anyway. PNG/JPEG/WebP/BMP inputs are decoded
whole, in memory, and stay under ``TERRASEG_MAX_PIXELS`` whatever ``--max-pixels`` says.

**Disk.** :func:`disk_need` estimates the most bytes an input's outputs occupy at once, from
:func:`engine.infer.writer.output_pixels`: every output uncompressed (an upper bound: GeoTIFF
outputs are deflate-compressed), plus for rasters predicted in column bands the staging
files (``*.bands``, uncompressed, beside the outputs until the outputs are complete), plus
for COG outputs the COG copy (with overviews, 4/3 of the output) beside the plain GeoTIFF,
and GDAL's temporary overview file, which goes to ``CPL_TMPDIR`` when that is set (else
beside the output). :func:`check_free_space` compares that with ``shutil.disk_usage`` of
the output folder (and of ``CPL_TMPDIR`` when it is on another file system) just before the
input is written, so the outputs of earlier inputs are counted at their real size.
Polygon files (``--polygons``) are not counted (their size depends on the shapes).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.data.sources.formats import reader_of
from engine.data.sources.pictures import check_pixels
from engine.errors import UserError
from engine.infer.writer import output_pixels


class DiskSpaceError(UserError):
    """Not enough free disk space for an input's outputs; checked before writing."""


def header_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from a raster's header, without decoding a pixel.

    Raises:
        UserError: naming the file when its header cannot be read.
    """
    path = Path(path)
    if reader_of(path) == "pil":
        from PIL import Image

        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # the pixel limit below names the file
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, SyntaxError, ValueError) as error:
            raise UserError(f"{path}: cannot read the image header: {error}") from error
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        return height, width
    from engine.data.sources.rasters import open_raster

    with open_raster(path) as reader:  # rasterio reads the header only
        height, width = reader.shape[:2]
    return height, width


def check_pixel_limits(
    paths: list[Path], max_pixels: int | None = None
) -> dict[Path, tuple[int, int]]:
    """Check every input's size against the pixel limit (see the module notes).

    Args:
        paths: The input rasters.
        max_pixels: The limit (default: ``TERRASEG_MAX_PIXELS`` or 1.5 G pixels).

    Returns:
        Input → ``(height, width)``.

    Raises:
        UserError: naming the first raster over the limit, its size and the limit.
    """
    sizes = {}
    for path in paths:
        height, width = header_size(path)
        check_pixels(path, height, width, max_pixels)
        sizes[path] = (height, width)
    return sizes


@dataclass(frozen=True)
class DiskNeed:
    """Peak bytes an input's prediction occupies: beside the outputs, and in ``CPL_TMPDIR``."""

    out_bytes: int
    tmp_bytes: int = 0


def disk_need(
    height: int,
    width: int,
    fmt: str,
    kinds: list[str],
    *,
    num_classes: int,
    mask_values: np.ndarray | None = None,
    banded: bool = False,
) -> DiskNeed:
    """Estimate the peak disk use of one input's outputs (see the module notes).

    Args:
        height: Raster rows.
        width: Raster columns.
        fmt: ``"png"``, ``"tif"`` or ``"cog"``.
        kinds: The outputs written (:data:`engine.infer.outputs.OUTPUT_KINDS`).
        num_classes: Classes of the model.
        mask_values: The mask's value table (``--values original``), if any.
        banded: Whether the raster is predicted in column bands (staged on disk).
    """
    pixels = height * width
    sizes, masked = [], False
    for kind in kinds:
        spec = output_pixels(kind, num_classes, mask_values)
        sizes.append(pixels * spec.channels * np.dtype(spec.dtype).itemsize)
        masked |= spec.masked
    total = sum(sizes)
    staging = total + (pixels if masked else 0) if banded else 0
    if fmt != "cog" or not sizes:
        return DiskNeed(total + staging)
    overviews = max(sizes) // 3
    peak = staging + total + total * 4 // 3
    if os.environ.get("CPL_TMPDIR"):
        return DiskNeed(peak, overviews)
    return DiskNeed(peak + overviews)


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def check_free_space(out: Path, raster: Path, need: DiskNeed) -> None:
    """Refuse to start ``raster`` when the file systems it writes to lack ``need``.

    Raises:
        DiskSpaceError: ``"OUT: needs ~X GB for RASTER, Y GB free"``.
    """
    places = [(out, need.out_bytes)]
    tmp = os.environ.get("CPL_TMPDIR")
    if need.tmp_bytes and tmp and Path(tmp).is_dir():
        if os.stat(tmp).st_dev == os.stat(out).st_dev:
            places = [(out, need.out_bytes + need.tmp_bytes)]
        else:
            places.append((Path(tmp), need.tmp_bytes))
    for folder, needed in places:
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise DiskSpaceError(
                f"{folder}: needs ~{_gigabytes(needed)} for {raster}, {_gigabytes(free)} free"
            )
