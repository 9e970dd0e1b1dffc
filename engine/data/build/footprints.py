"""Ground footprints of georeferenced images: which overlap, and what ground splits share.

Every georeferenced image (a CRS and a non-identity transform) has a footprint: the polygon
of its pixel grid, transformed into one CRS, that of the first georeferenced image by key
(edges densified when the CRS differs, so a reprojected footprint stays close to its true
shape). Two footprints overlap when their intersection has a positive area; an
intersection under :data:`OVERLAP_TOLERANCE` of the smaller footprint is the rounding of a
shared, reprojected edge, not an overlap. :mod:`engine.data.build.splits` puts overlapping
images in one split; :func:`shared_areas` measures what the splits share in the end.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.errors import RasterioError
from rasterio.warp import transform as warp_transform

from engine.data.build.output import BuildError
from engine.data.sources.formats import reader_of
from engine.data.sources.pairing import Pair
from engine.data.sources.pictures import ImageReadError

OVERLAP_TOLERANCE = 1e-6  # share of the smaller footprint under which an overlap is rounding
EARTH_RADIUS_M = 6378137.0  # WGS84 equatorial radius
EDGE_POINTS = 32  # points along each edge of a footprint reprojected to another CRS


@dataclass(frozen=True)
class _Grid:
    crs: Any  # rasterio CRS
    transform: Any  # affine.Affine
    height: int
    width: int


@dataclass(frozen=True)
class Footprints:
    """The georeferenced images' grids and footprints, in the CRS of the first one.

    Attributes:
        crs: The CRS areas are measured in (a rasterio CRS).
        grids: ``pair key → grid`` of every georeferenced image.
        shapes: ``pair key → footprint polygon`` in ``crs``.
    """

    crs: Any
    grids: dict[str, _Grid]
    shapes: dict[str, shapely.Polygon]

    def crs_name(self) -> str:
        """``EPSG:<code>`` when the CRS has one, else its WKT/PROJ text."""
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else self.crs.to_string()

    def area_unit(self) -> str:
        """The unit of the areas: the CRS's linear unit squared (``metre²``, ``degree²``)."""
        if self.crs.is_geographic:
            return "degree²"
        return f"{self.crs.linear_units or 'unit'}²"

    def resolution_m(self) -> float | None:
        """The median ground size of a pixel, in metres, over the images (None if unknown).

        A pixel's size is the mean of its two sides. Geographic CRSs are converted at each
        image's centre latitude on a sphere of the WGS84 equatorial radius (good to about
        0.5 %, enough for the ground resolution a GIS tool asks for); projected CRSs by their
        linear unit's factor to metres.
        """
        sizes = []
        for grid in self.grids.values():
            a, b, _, d, e, _ = tuple(grid.transform)[:6]
            dx, dy = math.hypot(a, d), math.hypot(b, e)
            if grid.crs.is_geographic:
                centre = grid.transform * (grid.width / 2, grid.height / 2)
                metres = math.pi * EARTH_RADIUS_M / 180.0
                dx *= metres * math.cos(math.radians(centre[1]))
                dy *= metres
            else:
                factor = grid.crs.linear_units_factor[1] if grid.crs.is_projected else None
                if not factor:
                    continue
                dx, dy = dx * factor, dy * factor
            sizes.append((dx + dy) / 2.0)
        return float(np.median(sizes)) if sizes else None

    def window(self, key: str, rows: tuple[int, int], cols: tuple[int, int]) -> shapely.Polygon:
        """The footprint of the pixel window ``rows`` × ``cols`` (half-open) of image ``key``."""
        grid = self.grids[key]
        (top, bottom), (left, right) = rows, cols
        points = EDGE_POINTS if grid.crs != self.crs else 1
        steps = np.linspace(0.0, 1.0, points, endpoint=False)
        cols_px = np.concatenate(
            [
                left + steps * (right - left),
                np.full(points, right),
                right - steps * (right - left),
                np.full(points, left),
            ]
        )
        rows_px = np.concatenate(
            [
                np.full(points, top),
                top + steps * (bottom - top),
                np.full(points, bottom),
                bottom - steps * (bottom - top),
            ]
        )
        a, b, c, d, e, f = tuple(grid.transform)[:6]  # x = a·col + b·row + c, y = d·col + …
        xs, ys = a * cols_px + b * rows_px + c, d * cols_px + e * rows_px + f
        if grid.crs != self.crs:
            xs, ys = warp_transform(grid.crs, self.crs, list(xs), list(ys))
        return shapely.Polygon(np.column_stack([xs, ys]))


def _grid_of(path: Path) -> _Grid | None:
    """The grid of a georeferenced raster, or ``None`` (pictures, no CRS, identity)."""
    from engine.data.sources.rasters import _open_dataset  # the one rasterio opener

    if reader_of(path) != "rasterio":
        return None
    with _open_dataset(path) as source:
        if source.crs is None or source.transform.is_identity:
            return None
        return _Grid(source.crs, source.transform, source.height, source.width)


def read_footprints(pairs: list[Pair]) -> Footprints | None:
    """The footprints of the pairs' georeferenced images (``None`` when there are none).

    Raises:
        ImageReadError: naming an image whose header cannot be read.
        BuildError: naming an image whose footprint cannot be put in the first one's CRS.
    """
    grids: dict[str, _Grid] = {}
    for pair in sorted(pairs, key=lambda p: p.key):
        try:
            grid = _grid_of(Path(pair.image))
        except RasterioError as error:
            raise ImageReadError(f"{pair.image}: cannot read the image header: {error}") from error
        if grid is not None:
            grids[pair.key] = grid
    if not grids:
        return None
    footprints = Footprints(next(iter(grids.values())).crs, grids, {})
    for pair in pairs:
        if pair.key in grids:
            grid = grids[pair.key]
            try:
                shape = footprints.window(pair.key, (0, grid.height), (0, grid.width))
            except (RasterioError, ValueError) as error:
                raise BuildError(
                    f"{pair.image}: cannot transform its footprint to "
                    f"{footprints.crs_name()}: {error}"
                ) from error
            footprints.shapes[pair.key] = shape
    return footprints


def overlapping(footprints: Footprints) -> list[tuple[str, str]]:
    """The pairs of image keys whose footprints overlap (positive area), sorted."""
    keys = sorted(footprints.shapes)
    shapes = [footprints.shapes[k] for k in keys]
    left, right = shapely.STRtree(shapes).query(shapes, predicate="intersects")
    links = []
    for i, j in zip(left.tolist(), right.tolist()):
        if i < j:
            area = shapes[i].intersection(shapes[j]).area
            if area > OVERLAP_TOLERANCE * min(shapes[i].area, shapes[j].area):
                links.append((keys[i], keys[j]))
    return sorted(links)


def connected(keys: list[str], links: list[tuple[str, str]]) -> dict[str, str]:
    """``key → component``: the smallest key joined to it by ``links`` (union-find)."""
    parent = {k: k for k in keys}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for a, b in links:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {k: root(k) for k in keys}


def shared_areas(
    regions: dict[str, list[shapely.Polygon]], footprints: Footprints
) -> dict[str, float]:
    """The ground area each pair of splits shares: ``{"train/val": area, …}``.

    Args:
        regions: ``split → footprints of what it holds`` (whole images, or blocks).
        footprints: The images' footprints (their CRS and sizes set the tolerance).

    Returns:
        The area of the intersection of the two splits' unions, in the footprints' CRS
        (0.0 under :data:`OVERLAP_TOLERANCE` of the smallest image footprint), for each pair
        of splits that hold something.
    """
    smallest = min(shape.area for shape in footprints.shapes.values())
    unions = {s: shapely.union_all(shapes) for s, shapes in regions.items() if shapes}
    shared = {}
    for a, b in itertools.combinations(unions, 2):
        area = float(unions[a].intersection(unions[b]).area)
        shared[f"{a}/{b}"] = area if area > OVERLAP_TOLERANCE * smallest else 0.0
    return shared
