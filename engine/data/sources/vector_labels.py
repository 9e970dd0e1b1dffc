"""Labels from a vector file: polygons with a class attribute (or all one class), rasterised.

A GeoPackage, GeoJSON or Shapefile (any OGR vector format) labels every image: for one image,
the features whose bounding box meets the image (read with the file's spatial filter, the
image's bounds transformed to the vector's CRS) are reprojected to the image's CRS
(:func:`rasterio.warp.transform_geom`) and burnt onto its grid
(:func:`rasterio.features.rasterize`; ``all_touched`` burns every pixel a polygon touches,
otherwise the pixels whose centre it covers). The result is an ``HxW`` int32 array of *values*
that plays the role of a mask file's values: the classes file maps them to classes, so
the builder calls :meth:`VectorLabels.values_for` where it would read a mask.

Values: with ``burn`` (``--burn CLASS``) every feature burns that one value, a class name or
value of the classes file (the usual building-footprint file, no attribute needed). Else an
integer attribute gives its integers (``encoding: index`` classes files; text
that spells an integer, as Shapefiles and CSV-made files often hold, counts as that integer);
a text attribute needs an ``encoding: text`` classes file, and the values are the codes it
gives each text (:meth:`engine.data.sources.classes.ClassesFile.text_code`).
Pixels no feature covers
get the ``background``: an attribute value (or a class name) of the classes file, or
ignore (``None``/``"ignore"``), which is
:data:`engine.data.sources.imageio.TRANSPARENT`, the value the
builder maps to ignore (255).

Rules:

- **Overlaps**: where features overlap, the one with the higher feature id wins (they are
  burnt in feature-id order, later over earlier). For GeoPackage and Shapefile that is the
  order the features were written; GeoJSON uses a feature's integer ``id`` when it has one.
- **Geometry types**: polygons and multipolygons only. Points and lines cover no area: what
  they label would depend on the pixel size (one pixel per point, a one-pixel-wide trace per
  line, with or without ``all_touched``), so they are refused with the file named; buffer them
  into polygons first (e.g. QGIS Buffer, or ``ogr2ogr -dialect sqlite -sql "SELECT
  ST_Buffer(geom, 2) AS geom, * FROM layer"``). A file whose layer declares a point or line
  type is refused when opened; a mixed layer, for each image where such a feature lies.
- Features without geometry (or with an empty one) label nothing; a feature whose attribute
  is null is an error (give it a value, or delete it).
- Features that meet no image label nothing; :func:`features_off_images` finds them (their
  geometry, in the vector's CRS, meets none of the images' footprints, each transformed to
  that CRS with densified edges), so the builder can report them in one line.
- pyogrio (with shapely for the geometries) reads the file: it is the reader geopandas uses,
  ships GDAL in its wheel, reads whole columns at once, and applies the spatial filter in
  GDAL; fiona would read feature by feature in Python.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
import rasterio.errors
import rasterio.features
import rasterio.transform
import rasterio.warp
import shapely
import shapely.geometry
from affine import Affine
from rasterio.crs import CRS

from engine.data.sources.classes import ClassesFile
from engine.data.sources.imageio import TRANSPARENT
from engine.data.sources.pictures import check_pixels
from engine.errors import UserError

IGNORE_VALUE = TRANSPARENT  # background "ignore": the builder maps it to 255
POLYGON_TYPES = frozenset({"Polygon", "MultiPolygon"})
POLYGON_TYPE_IDS = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)
NOT_POLYGON_TYPES = frozenset({"Point", "MultiPoint", "LineString", "MultiLineString"})
INT32 = np.iinfo(np.int32)
SHOWN = 5  # ids and values listed in an error


class VectorLabelError(UserError):
    """A vector label file cannot label an image; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageGrid:
    """The pixel grid of an image: its CRS, affine transform and size."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS, half a pixel wider on each side.

        The margin keeps features whose edge lies on the image's edge (after rounding in
        the reprojection) in the spatial filter; a feature wholly in it burns no pixel.
        """
        left, bottom, right, top = rasterio.transform.array_bounds(
            self.height + 1, self.width + 1, self.transform @ Affine.translation(-0.5, -0.5)
        )
        return left, bottom, right, top


def image_grid(path: str | Path) -> ImageGrid:
    """Read an image's grid (CRS, transform, size) with rasterio.

    Raises:
        VectorLabelError: naming the image when it cannot be opened or has no CRS.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as source:
                crs, transform = source.crs, source.transform
                height, width = source.height, source.width
    except rasterio.errors.RasterioIOError as error:
        raise VectorLabelError(f"{path}: cannot open the image: {error}") from error
    if crs is None:
        raise VectorLabelError(
            f"{path}: the image has no CRS, so vector labels cannot be placed on it; "
            "use a georeferenced image (GeoTIFF) or mask files"
        )
    return ImageGrid(crs, transform, height, width)


def _short(items: list, shown: int = SHOWN) -> str:
    text = ", ".join(str(item) for item in items[:shown])
    return text + (f", … ({len(items)} in all)" if len(items) > shown else "")


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class VectorLabels:
    """A vector file whose features label images by an attribute, or all with one class.

    Args:
        path: GeoPackage, GeoJSON, Shapefile or another OGR vector file with a CRS.
        attribute: The field naming each feature's class (None with ``burn``).
        background: Value for pixels no feature covers: an attribute value (or, with
            ``classes``, a class name), or ``None``/``"ignore"`` for ignore.
        all_touched: Burn every pixel a polygon touches (else those whose centre it covers).
        burn: Every feature is this class: a value or (with ``classes``) a class name;
            exactly one of ``attribute`` and ``burn`` is given.
        classes: The classes file; required for text attributes (its ``encoding: text``
            gives each text its code) and used to resolve ``background``.
        layer: Layer name or index (default: the first layer).
        unknown: For text values the classes file does not list: ``"error"`` (default)
            or ``"ignore"`` (their pixels become ignore). Unlisted integers are left to the
            builder's ``--unknown``, as for mask files.

    Raises:
        VectorLabelError: naming the file for a missing/unreadable file, a missing attribute
            (the available fields listed), no CRS, no features, a point or line layer, or a
            background or burn value no class has.
    """

    def __init__(
        self,
        path: str | Path,
        attribute: str | None = None,
        background: int | str | None = None,
        all_touched: bool = False,
        *,
        burn: int | str | None = None,
        classes: ClassesFile | None = None,
        layer: str | int | None = None,
        unknown: str = "error",
    ) -> None:
        self.path = Path(path)
        self.attribute = attribute
        self.all_touched = bool(all_touched)
        self.classes = classes
        self.layer = layer
        if unknown not in ("error", "ignore"):
            raise ValueError(f"unknown must be 'error' or 'ignore', not {unknown!r}")
        self.unknown = unknown
        if (attribute is None) == (burn is None):
            raise ValueError("give exactly one of attribute and burn")
        if not self.path.is_file():
            raise VectorLabelError(f"{self.path}: vector label file not found")
        try:
            info = pyogrio.read_info(self.path, layer=layer)
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as error:
            raise VectorLabelError(f"{self.path}: cannot read as a vector file: {error}") from error
        fields = [str(f) for f in info["fields"]]
        if attribute is not None and attribute not in fields:
            raise VectorLabelError(
                f"{self.path}: no attribute {attribute!r}; its fields are "
                + (", ".join(repr(f) for f in fields) or "none")
            )
        if not info["crs"]:
            raise VectorLabelError(
                f"{self.path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs "
                "EPSG:XXXX) so its features can be placed on the images"
            )
        self.crs = CRS.from_user_input(info["crs"])
        if not info["features"]:
            raise VectorLabelError(f"{self.path}: the vector file has no features")
        declared = str(info["geometry_type"] or "").removesuffix(" Z").removesuffix(" M")
        if declared in NOT_POLYGON_TYPES:
            raise VectorLabelError(f"{self.path}: {self._not_polygons([declared])}")
        self.background_value = self._background(background)
        self.burn_value = None if burn is None else self._class_value(burn, "burn")

    def _not_polygons(self, kinds: list[str], ids: list[int] | None = None) -> str:
        where = f" (feature ids {_short(ids)})" if ids else ""
        return (
            f"features of type {', '.join(sorted(set(kinds)))}{where} cannot label pixels: "
            "only polygons can; buffer points and lines into polygons first"
        )

    def _background(self, background: int | str | None) -> int:
        """The value burnt where no feature lies (see the class docstring)."""
        if background is None or background == "ignore":
            return IGNORE_VALUE
        return self._class_value(background, "background", "; or use 'ignore'")

    def _class_value(self, given: int | str, option: str, alternative: str = "") -> int:
        """The value that ``given`` (a value, or with a classes file a class name) burns as.

        Raises:
            VectorLabelError: naming ``option`` when no class has that value or name.
        """
        classes = self.classes
        if classes is not None:
            value = self._code_or_none(given)
            if value is not None and value in classes.lookup:
                return value
            if str(given) in classes.names:
                return classes.classes[classes.names.index(str(given))].values[0]
            raise VectorLabelError(
                f"{self.path}: {option} {given!r} is neither a value nor a class name "
                f"of {classes.path} (classes: {', '.join(classes.names)}){alternative}"
            )
        value = self._code_or_none(given)
        if value is None:
            raise VectorLabelError(
                f"{self.path}: {option} {given!r} must be an integer value{alternative} "
                "(text values need a classes file with encoding: text)"
            )
        return value

    def _code_or_none(self, value: object) -> int | None:
        """The integer a value burns as; None when it has none (unlisted text, not an int)."""
        if self.classes is not None and self.classes.encoding == "text":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return self.classes.text_code(str(value))
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (int, np.integer)):
            number = int(value)
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value.strip())
        else:
            return None
        if not INT32.min <= number <= INT32.max:
            raise VectorLabelError(f"{self.path}: {self.attribute} value {number} is not int32")
        return number

    def attribute_values(self) -> list:
        """The distinct values of the attribute over the whole file, sorted (nulls left out).

        With ``burn``: the one burn value.
        """
        if self.attribute is None:
            return [self.burn_value]
        _, _, _, columns = pyogrio.raw.read(
            self.path, layer=self.layer, columns=[self.attribute], read_geometry=False
        )
        values = {v.item() if isinstance(v, np.generic) else v for v in columns[0]}
        return sorted((v for v in values if not _is_null(v)), key=lambda v: (str(type(v)), v))

    def _codes(self, values: np.ndarray, fids: np.ndarray) -> np.ndarray:
        """The burn value of each feature's attribute value (errors name the file)."""
        if self.burn_value is not None:
            return np.full(len(values), self.burn_value, np.int32)
        nulls = [int(f) for f, v in zip(fids, values) if _is_null(v)]
        if nulls:
            raise VectorLabelError(
                f"{self.path}: {len(nulls)} feature(s) have no {self.attribute!r} value "
                f"(feature ids {_short(nulls)}); give them a value or delete them"
            )
        codes = np.empty(len(values), np.int32)
        unlisted: dict[str, int] = {}
        for number, value in enumerate(values):
            value = value.item() if isinstance(value, np.generic) else value
            code = self._code_or_none(value)
            if code is None and self.classes is not None and self.classes.encoding == "text":
                unlisted[str(value)] = unlisted.get(str(value), 0) + 1
                code = IGNORE_VALUE
            elif code is None:
                raise VectorLabelError(
                    f"{self.path}: attribute {self.attribute!r} holds {value!r}, not an integer; "
                    "text values need a classes file with 'encoding: text'"
                )
            codes[number] = code
        if unlisted and self.unknown != "ignore":
            listed = _short([f"{text!r} ({n} features)" for text, n in sorted(unlisted.items())])
            where = self.classes.path if self.classes is not None else "the classes file"
            raise VectorLabelError(
                f"{self.path}: {self.attribute} value(s) not in {where}: {listed}. "
                "Add them to the classes file (ignore: true for no-data) or pass --unknown ignore."
            )
        return codes

    def features_on(self, grid: ImageGrid) -> tuple[list[dict], np.ndarray]:
        """The polygons meeting ``grid`` in its CRS (GeoJSON mappings) and their burn values.

        In feature-id order (later features are burnt over earlier ones).

        Raises:
            VectorLabelError: for points or lines, null or unusable attribute values.
        """
        bounds = grid.bounds
        if grid.crs != self.crs:
            bounds = rasterio.warp.transform_bounds(grid.crs, self.crs, *bounds, densify_pts=21)
        _, fids, wkb, columns = pyogrio.raw.read(
            self.path,
            layer=self.layer,
            columns=[] if self.attribute is None else [self.attribute],
            bbox=tuple(bounds),
            force_2d=True,
            return_fids=True,
        )
        order = np.argsort(fids, kind="stable")
        fids, geometries = fids[order], shapely.from_wkb(wkb[order])
        values = columns[0][order] if columns else np.full(len(fids), self.burn_value, object)
        keep = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
        fids, geometries, values = fids[keep], geometries[keep], values[keep]
        bad = np.flatnonzero(~np.isin(shapely.get_type_id(geometries), POLYGON_TYPE_IDS))
        if bad.size:
            kinds = [geometries[b].geom_type for b in bad]
            message = self._not_polygons(kinds, [int(fids[b]) for b in bad])
            raise VectorLabelError(f"{self.path}: {message}")
        codes = self._codes(values, fids)
        mappings = [shapely.geometry.mapping(g) for g in geometries]
        if mappings and grid.crs != self.crs:
            mappings = rasterio.warp.transform_geom(self.crs, grid.crs, mappings)
        return list(mappings), codes

    def values_on(self, grid: ImageGrid) -> np.ndarray:
        """The ``HxW`` int32 values of ``grid``'s pixels (``background`` where no feature lies)."""
        shapes, codes = self.features_on(grid)
        values = np.full((grid.height, grid.width), self.background_value, np.int32)
        if shapes:
            rasterio.features.rasterize(
                zip(shapes, codes.tolist()),
                out=values,
                transform=grid.transform,
                all_touched=self.all_touched,
            )
        return values

    def values_for(self, image_path: str | Path) -> np.ndarray:
        """The label values on the grid of ``image_path`` (read with rasterio), ``HxW`` int32.

        Raises:
            VectorLabelError: naming the image when it has no CRS, or the vector file for
                the problems :meth:`features_on` finds.
        """
        grid = image_grid(image_path)
        check_pixels(Path(image_path), grid.height, grid.width)
        return self.values_on(grid)


def _footprint(grid: ImageGrid, crs: CRS) -> shapely.Geometry:
    """The outline of ``grid``'s pixels in ``crs`` (edges densified before reprojecting)."""
    width, height = grid.width, grid.height
    corners = [grid.transform @ xy for xy in ((0, 0), (width, 0), (width, height), (0, height))]
    outline = shapely.Polygon(corners)
    if grid.crs == crs:
        return outline
    edge = max(math.dist(corners[0], corners[1]), math.dist(corners[1], corners[2]))
    dense = shapely.segmentize(outline, edge / 32)
    moved = rasterio.warp.transform_geom(grid.crs, crs, shapely.geometry.mapping(dense))
    return shapely.geometry.shape(moved)


def features_off_images(labels: VectorLabels, grids: list[ImageGrid]) -> tuple[list[int], int]:
    """The ids of the features that meet no image, and the number of features with a geometry.

    A feature meets an image when its geometry (in the vector's CRS) intersects the image's
    footprint (its pixels' outline, transformed to that CRS); one that meets an image may
    still burn no pixel (a sliver between pixel centres). Features without geometry are
    not counted. Reads every geometry of the layer once.
    """
    _, fids, wkb, _ = pyogrio.raw.read(
        labels.path, layer=labels.layer, columns=[], force_2d=True, return_fids=True
    )
    geometries = shapely.from_wkb(wkb)
    present = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    fids, geometries = fids[present], geometries[present]
    if not len(geometries):
        return [], 0
    tree = shapely.STRtree([_footprint(grid, labels.crs) for grid in grids])
    touching = np.zeros(len(geometries), bool)
    touching[tree.query(geometries, predicate="intersects")[0]] = True
    return sorted(int(fid) for fid in fids[~touching]), len(geometries)


def off_images_note(labels: VectorLabels, images: list[Path]) -> str | None:
    """One line naming the features that touch none of ``images`` (None when all do).

    Raises:
        VectorLabelError: naming an image that cannot be opened or has no CRS.
    """
    off, total = features_off_images(labels, [image_grid(image) for image in images])
    if not off:
        return None
    return (
        f"{labels.path}: {len(off)} of {total} features touch no image and label nothing "
        f"(feature ids {_short(off)})"
    )
