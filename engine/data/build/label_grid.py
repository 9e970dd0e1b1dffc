"""Labels on their image's grid: a georeferenced mask must lie exactly on its image's pixels.

A mask whose georeferencing differs from its image's (another CRS, shifted by some pixels,
another resolution) would otherwise build silently and train on labels that sit beside
their pixels. The rule, applied by :func:`engine.data.build.sources.read_pair` (every build,
in worker processes too):

* When image and mask are **both georeferenced** (a CRS and a non-identity transform), the
  mask must share the image's CRS, its transform to within :data:`GRID_TOLERANCE` of a
  pixel everywhere on the image, and its size; otherwise a :class:`LabelGridError` names
  both files and what differs (``CRS EPSG:4326 vs EPSG:32640``, ``offset (+3.0, -1.5)
  pixels``, ``resolution 20 m vs 10 m``, ``shape 256×256 vs 512×512``: mask vs image).
* With ``resample`` (``--resample-labels``) such a mask is instead resampled onto the
  image's grid with nearest neighbour (class indices, never blended); image pixels outside
  the mask's extent become ignore (255).
* Otherwise (a PNG mask, a TIFF without a CRS, an image that is not georeferenced) the mask
  is taken as drawn on the image's pixels: only its size must match.

Vector labels are rasterised on the image's grid (:mod:`engine.data.sources.vector_labels`), and
band-file images share one grid (:class:`engine.data.sources.rasters.BandFilesReader` checks it):
the first band file's grid is the image's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.data.build.output import BuildError
from engine.data.sources.classes import IGNORE_INDEX
from engine.data.sources.formats import reader_of
from engine.data.sources.pictures import exif_hint
from engine.data.sources.raster_base import gdal_env

#: Largest distance (in image pixels), anywhere on the image, between where the mask and
#: the image place a pixel for the two to count as one grid.
GRID_TOLERANCE = 0.01


class LabelGridError(BuildError):
    """A mask is not on its image's grid; the message names both files and what differs."""


class Grid(NamedTuple):
    """A georeferenced raster's grid."""

    crs: Any  # rasterio CRS
    transform: Any  # affine.Affine: pixel (col, row) → map (x, y)
    height: int
    width: int


def georeferenced(crs: Any, transform: Any, height: int, width: int) -> Grid | None:
    """The grid, when there is a CRS and a non-identity transform; else ``None``."""
    if crs is None or transform is None or transform.is_identity:
        return None
    return Grid(crs, transform, int(height), int(width))


def raster_grid(path: str | Path) -> Grid | None:
    """The grid of a mask file read by rasterio, or ``None`` when it is not georeferenced.

    PNG, JPEG and other picture files are never georeferenced here (as their reader).
    """
    from engine.data.sources.rasters import _open_dataset  # rasters imports imageio, as this does

    path = Path(path)
    if reader_of(path) == "pil":
        return None
    with _open_dataset(path) as source:
        return georeferenced(source.crs, source.transform, source.height, source.width)


def _crs_name(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _signed(value: float) -> str:
    return f"{value:+.1f}" if abs(value - round(value, 1)) < 1e-9 else f"{value:+.3f}"


def _resolution(grid: Grid) -> str:
    x, y = abs(grid.transform.a), abs(grid.transform.e)
    units = "°" if grid.crs.is_geographic else " m" if grid.crs.linear_units == "metre" else ""
    size = f"{x:.6g}" if math.isclose(x, y, rel_tol=1e-9) else f"{x:.6g}×{y:.6g}"
    return size + units


def grid_differences(mask: Grid, image: Grid) -> list[str]:
    """What differs between a mask's grid and its image's (mask first), or ``[]``."""
    differences = []
    if mask.crs != image.crs:
        differences.append(f"CRS {_crs_name(mask.crs)} vs {_crs_name(image.crs)}")
    else:
        differences += _transform_differences(mask, image)
    if (mask.height, mask.width) != (image.height, image.width):
        differences.append(f"shape {mask.width}×{mask.height} vs {image.width}×{image.height}")
    return differences


def _transform_differences(mask: Grid, image: Grid) -> list[str]:
    """Offset, resolution, orientation: each when it moves a pixel by more than the tolerance."""
    relative = ~image.transform @ mask.transform  # mask pixel → image pixel
    width, height = image.width, image.height
    corners = [(0, 0), (width, 0), (0, height), (width, height)]
    if max(math.dist(relative @ corner, corner) for corner in corners) <= GRID_TOLERANCE:
        return []
    differences = []
    if math.hypot(relative.c, relative.f) > GRID_TOLERANCE:
        differences.append(f"offset ({_signed(relative.c)}, {_signed(relative.f)}) pixels (x, y)")
    scales = abs(abs(relative.a) - 1) * width, abs(abs(relative.e) - 1) * height
    if max(scales) > GRID_TOLERANCE:
        differences.append(f"resolution {_resolution(mask)} vs {_resolution(image)}")
    turned = abs(relative.b) * height + abs(relative.d) * width > GRID_TOLERANCE
    if turned or relative.a < 0 or relative.e < 0 or not differences:
        differences.append(f"transform {tuple(mask.transform)[:6]} vs {tuple(image.transform)[:6]}")
    return differences


def check_label_grid(
    image_path: str | Path,
    mask_path: str | Path,
    mask_shape: tuple[int, int],
    image_grid: Grid | None,
    image_shape: tuple[int, int],
    resample: bool,
) -> Grid | None:
    """Check a mask lies on its image's grid (see the module notes).

    Args:
        image_path: The image file.
        mask_path: The mask file.
        mask_shape: ``(H, W)`` of the mask as read.
        image_grid: The image's grid (``None``: not georeferenced, or labels rasterised on
            it already: only the size is checked).
        image_shape: ``(H, W)`` of the image.
        resample: Resample a georeferenced mask off the image's grid instead of refusing it.

    Returns:
        The mask's grid when it must be resampled (:func:`resample_labels`), else ``None``.

    Raises:
        LabelGridError: naming both files and what differs (georeferenced, no ``resample``).
        BuildError: naming both files when a mask that is not georeferenced has another size.
    """
    mask_grid = raster_grid(mask_path) if image_grid is not None else None
    if mask_grid is not None and image_grid is not None:
        differences = grid_differences(mask_grid, image_grid)
        if differences and not resample:
            raise LabelGridError(
                f"{mask_path}: not on the grid of its image {image_path}: "
                f"{'; '.join(differences)} (mask vs image); pass --resample-labels to resample "
                "the mask onto the image's grid (nearest neighbour)"
            )
        return mask_grid if differences else None
    if tuple(mask_shape) != tuple(image_shape):
        raise BuildError(
            f"{mask_path}: mask is {mask_shape[1]}x{mask_shape[0]} (WxH) but its image "
            f"{image_path} is {image_shape[1]}x{image_shape[0]}" + exif_hint(image_path, mask_shape)
        )
    return None


def resample_labels(mask: np.ndarray, mask_grid: Grid, image_grid: Grid) -> np.ndarray:
    """Class indices (uint8 ``HxW`` on ``mask_grid``) resampled onto the image's grid.

    Nearest neighbour (``rasterio.warp.reproject``); ignore (255) stays ignore and image
    pixels outside the mask's extent become ignore.
    """
    from rasterio.warp import Resampling, reproject

    out = np.full((image_grid.height, image_grid.width), IGNORE_INDEX, np.uint8)
    with gdal_env():
        reproject(
            source=np.ascontiguousarray(mask),
            destination=out,
            src_transform=mask_grid.transform,
            src_crs=mask_grid.crs,
            src_nodata=IGNORE_INDEX,
            dst_transform=image_grid.transform,
            dst_crs=image_grid.crs,
            dst_nodata=IGNORE_INDEX,
            resampling=Resampling.nearest,
        )
    return out


def resampled_note(mask_path: str | Path, image_path: str | Path, mask: Grid, image: Grid) -> str:
    """The one line a build prints for a mask it resampled."""
    return (
        f"{mask_path}: resampled onto the grid of its image {image_path} with nearest "
        f"neighbour ({'; '.join(grid_differences(mask, image))}, mask vs image); image "
        "pixels outside the mask are ignore (255)"
    )
