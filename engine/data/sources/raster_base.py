"""The window-reader interface for rasters of any size, and what its backends share.

A reader delivers ``C`` bands at their native precision, never rescaled:

- ``.shape == (H, W, C)``, ``.dtype`` (uint8, uint16, int16 or float32), ``.band_names``;
- ``.read(row0, row1, col0, col1)`` → native ``(rows, cols, C)``, C-contiguous;
- ``.read_valid(row0, row1, col0, col1)`` → bool ``(rows, cols)``: False where any selected
  band equals the nodata value (NaN-aware), where the GDAL mask is 0, or where the alpha is 0;
- ``.nodata`` (the value in force, or ``None``), ``.georef`` (``{"crs", "transform"}`` or
  ``None``), ``.profile`` (a dict describing the source); a context manager.

The backends live in :mod:`engine.data.sources.rasters` (PIL, rasterio, band files and
:func:`~engine.data.sources.rasters.open_raster`); :class:`ArrayReader` serves in-memory arrays.

Rules shared by every backend (errors name the file): pixel types uint8, uint16, int16 and
float32 are used as they are; int8, int32, uint32, float64 (and anything else) are rejected.
``bands`` selects and orders bands by 1-based index or by name (:attr:`band_names`),
whatever their colour interpretation. Default band names: the file's band descriptions,
else ``red/green/blue`` for the bands of a 3-band uint8 RGB, else ``bandN`` (N the band's
number in the file).

**Bands tagged alpha.** A band the file tags as alpha is a validity mask (alpha 0 marks
pixels invalid; the band is not delivered by default) only when its values say so: every
value is 0 or one opaque value (:data:`ALPHA_OPAQUE`: 255 or 65535 for uint16, 255 or
32767 for int16, 1 or 255 for float32). Anything else (a NIR band that a 4-band B,G,R,NIR
product tags as alpha, a feathered alpha) is a data band: delivered by default, with a
one-line :attr:`RasterReader.notes` entry naming it. The check reads the whole band when
the raster has at most :data:`ALPHA_CHECK_PIXELS` pixels, else an evenly spaced grid of
the band's blocks worth that many pixels (native values: never an overview, which may have
been resampled), so it is cheap, bounded and deterministic. A band chosen with ``bands`` is
a data band whatever its tag (and then no mask).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.sources.band_select import band_positions
from engine.data.sources.formats import read_by_gdal
from engine.errors import UserError

#: Pixel types a reader delivers as they are.
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")
#: The opaque values a band tagged alpha may hold (besides 0) to be a validity mask.
ALPHA_OPAQUE = {
    "uint8": (255,),
    "uint16": (65535, 255),
    "int16": (32767, 255),
    "float32": (1.0, 255.0),
}
#: Pixels of a band tagged alpha whose values decide whether it is a mask (module notes).
ALPHA_CHECK_PIXELS = 1 << 24
#: GDAL block-cache cap (bytes) while rasterio reads or writes: GDAL's default (5 % of RAM)
#: would otherwise keep up to that much of a streamed raster resident.
GDAL_CACHE_BYTES = 32 * 2**20


class RasterError(UserError):
    """A raster cannot be used; the message names the file and the problem."""


def check_dtype(name: Any, dtype: Any) -> np.dtype:
    """Return ``dtype`` as a numpy dtype when terraseg reads it as it is.

    Raises:
        RasterError: naming ``name`` and the type (float64: convert to float32).
    """
    dtype = np.dtype(dtype)
    if dtype.name in SUPPORTED_DTYPES:
        return dtype
    hint = (
        "convert to float32" if dtype == np.float64 else "convert to " + "/".join(SUPPORTED_DTYPES)
    )
    raise RasterError(
        f"{name}: pixel type {dtype.name} is not supported ({', '.join(SUPPORTED_DTYPES)}); {hint}"
    )


def default_band_names(count: int, dtype: Any, rgb: bool) -> list[str]:
    """``red/green/blue`` for 3-band uint8 RGB (``rgb``), else ``band1..bandN``."""
    if rgb and count == 3 and np.dtype(dtype) == np.uint8:
        return ["red", "green", "blue"]
    return [f"band{n}" for n in range(1, count + 1)]


def nodata_equal(data: np.ndarray, nodata: float) -> np.ndarray:
    """Bool ``(h, w)``: True where any band of ``data (h, w, C)`` equals ``nodata`` (NaN too)."""
    if isinstance(nodata, float) and math.isnan(nodata):
        if not np.issubdtype(data.dtype, np.floating):
            return np.zeros(data.shape[:2], bool)
        return np.isnan(data).any(axis=-1)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            return np.zeros(data.shape[:2], bool)  # a value the type cannot hold
        nodata = int(nodata)
    return (data == data.dtype.type(nodata)).any(axis=-1)


def alpha_is_mask(blocks: Iterable[np.ndarray], dtype: Any) -> bool:
    """Whether the pixels of a band tagged alpha are a validity mask (see the module notes).

    Args:
        blocks: The band's pixels to judge, in any number of arrays (read lazily: the first
            block with two different non-zero values ends the check).
        dtype: The band's pixel type.

    Returns:
        True when every value is 0 or one value of :data:`ALPHA_OPAQUE` for ``dtype``
        (all 0, or all opaque, count as a mask).
    """
    opaque = None
    for block in blocks:
        values = np.asarray(block).ravel()
        values = values[values != 0]  # NaN stays, and then fails the test below
        if not values.size:
            continue
        first = values[0]
        if not (values == first).all() or (opaque is not None and first != opaque):
            return False
        opaque = first
    return opaque is None or float(opaque) in ALPHA_OPAQUE.get(np.dtype(dtype).name, ())


def alpha_windows(
    height: int, width: int, block: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The windows ``(row0, row1, col0, col1)`` whose pixels judge a band tagged alpha.

    The whole raster when it has at most :data:`ALPHA_CHECK_PIXELS` pixels, else an evenly
    spaced grid (both corners included) of its ``block`` (rows, cols) blocks worth at most
    that many pixels: whole blocks, so each read decodes what it uses.
    """
    if height * width <= ALPHA_CHECK_PIXELS:
        return [(0, height, 0, width)]
    block_h, block_w = block
    rows, cols = math.ceil(height / block_h), math.ceil(width / block_w)
    budget = max(1, ALPHA_CHECK_PIXELS // (block_h * block_w))
    pick_rows = min(rows, max(1, round(math.sqrt(budget * rows / cols))))
    pick_cols = min(cols, max(1, budget // pick_rows))
    return [
        (row * block_h, min((row + 1) * block_h, height), col * block_w,
         min((col + 1) * block_w, width))
        for row in np.linspace(0, rows - 1, pick_rows).round().astype(int).tolist()
        for col in np.linspace(0, cols - 1, pick_cols).round().astype(int).tolist()
    ]  # fmt: skip


@dataclass(frozen=True)
class RasterContents:
    """What a raster holds, as its reader found it: size, pixel type and data bands.

    Attributes:
        height: Rows.
        width: Columns.
        dtype: The native pixel type (checked against the supported ones).
        names: Every band's name, in file order (bands tagged alpha included).
        numbers: The bands' 1-based numbers in the file (default ``1..len(names)``).
        alphas: The numbers of the bands tagged alpha.
        is_mask: Whether the band of a number tagged alpha holds a validity mask (called
            only for bands tagged alpha that the selection leaves out).
    """

    height: int
    width: int
    dtype: Any
    names: list[str]
    numbers: list[int] | None = None
    alphas: tuple[int, ...] = ()
    is_mask: Callable[[int], bool] | None = None


class RasterReader:
    """Base class of the window readers (see the module notes).

    Subclasses call :meth:`_setup` and implement :meth:`_read_raw` (the data bands at given
    positions) and, when they can mark pixels invalid by other means than a nodata value,
    :meth:`_invalid_raw`.

    Attributes:
        path: The source file (``None`` for in-memory arrays).
        profile: Description of the source: ``backend``, ``driver``, ``height``, ``width``,
            ``count``, ``dtype``, ``band_names``, ``nodata``, ``crs``, ``transform``.
        notes: One line each for the user: bands tagged alpha kept as data bands.
    """

    path: Path | None = None
    notes: list[str]

    def _setup(
        self,
        path: Path | None,
        contents: RasterContents,
        profile: dict[str, Any],
        *,
        bands: list[int | str] | None = None,
        nodata: float | None = None,
    ) -> None:
        """Check the type, resolve the band selection and fill :attr:`profile`."""
        self.path = path
        label = path or "<array>"
        names = contents.names
        self._height, self._width = int(contents.height), int(contents.width)
        self._dtype = check_dtype(label, contents.dtype)
        self._select, self._alpha_masks, self.notes = self._resolve_bands(
            str(label), contents, bands
        )
        self._band_names = [names[i] for i in self._select]
        if nodata is not None:
            nodata = float(nodata)
            if math.isnan(nodata) and not np.issubdtype(self._dtype, np.floating):
                raise RasterError(f"{label}: nodata NaN for {self._dtype.name} pixels")
        self._nodata = nodata
        self._last_invalid: tuple[tuple[int, int, int, int], np.ndarray] | None = None
        self.profile = {
            "path": str(path) if path else None,
            "height": self._height,
            "width": self._width,
            "count": len(self._select),
            "dtype": self._dtype.name,
            "band_names": list(self._band_names),
            "nodata": nodata,
            "crs": None,
            "transform": None,
            **profile,
        }

    @staticmethod
    def _resolve_bands(
        label: str, contents: RasterContents, bands: list[int | str] | None
    ) -> tuple[list[int], list[int], list[str]]:
        """``(positions delivered, numbers of the alpha masks, notes)`` (module notes)."""
        names = contents.names
        numbers = contents.numbers or list(range(1, len(names) + 1))
        chosen = None
        if bands is not None:
            asked = [bands] if isinstance(bands, (str, int)) else list(bands)
            chosen = band_positions(asked, names, label, numbers=numbers, error=RasterError)
        picked = {numbers[p] for p in chosen or ()}
        is_mask = contents.is_mask or (lambda number: True)
        masks = [n for n in contents.alphas if n not in picked and is_mask(n)]
        if chosen is not None:
            return chosen, masks, []
        select = [p for p, n in enumerate(numbers) if n not in masks]
        if not select:
            raise RasterError(f"{label}: no data band (only an alpha mask)")
        notes = [
            f"{label}: band {n} ({names[numbers.index(n)]!r}) is tagged alpha but holds data "
            "(not only 0 and one opaque value): kept as a data band"
            for n in contents.alphas
            if n not in masks
        ]
        return select, masks, notes

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of what :meth:`read` delivers."""
        return self._height, self._width, len(self._select)

    @property
    def dtype(self) -> np.dtype:
        """The native pixel type (uint8, uint16, int16 or float32)."""
        return self._dtype

    @property
    def band_names(self) -> list[str]:
        """The names of the delivered bands, in delivery order."""
        return list(self._band_names)

    @property
    def nodata(self) -> float | None:
        """The nodata value in force (``nodata=`` or the file's), or ``None``."""
        return self._nodata

    @property
    def georef(self) -> dict[str, Any] | None:
        """What writers need to keep the georeferencing, or ``None`` for plain images."""
        return None

    @property
    def is_gdal(self) -> bool:
        """Whether GDAL reads the source (GeoTIFF, JPEG 2000, VRT, …: GeoTIFF predictions)."""
        return self.path is not None and read_by_gdal(self.path)

    def _check_window(self, row0: int, row1: int, col0: int, col1: int) -> None:
        if not (0 <= row0 <= row1 <= self._height and 0 <= col0 <= col1 <= self._width):
            raise ValueError(
                f"window rows {row0}:{row1} cols {col0}:{col1} outside "
                f"{self._height}x{self._width} raster {self.path or '<array>'}"
            )

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read the window ``[row0, row1) x [col0, col1)`` of the selected bands, native.

        Returns:
            ``(row1 - row0, col1 - col0, C)`` in :attr:`dtype`, C-contiguous.

        Raises:
            ValueError: when the window is outside the raster.
            RasterError: naming the file, when decoding fails.
        """
        self._check_window(row0, row1, col0, col1)
        if row0 == row1 or col0 == col1:
            return np.zeros((row1 - row0, col1 - col0, len(self._select)), self._dtype)
        data = np.ascontiguousarray(self._read_raw(row0, row1, col0, col1, self._select))
        if self._nodata is not None:  # cheap next to the read; read_valid reuses it
            self._last_invalid = ((row0, row1, col0, col1), nodata_equal(data, self._nodata))
        return data

    def read_valid(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Bool ``(rows, cols)``: False where a pixel is nodata, masked or transparent.

        A pixel is invalid when any selected band equals :attr:`nodata` (NaN-aware), when
        the file's GDAL mask is 0 there, or when its alpha is 0.
        """
        self._check_window(row0, row1, col0, col1)
        valid = np.ones((row1 - row0, col1 - col0), bool)
        if valid.size == 0:
            return valid
        window = (row0, row1, col0, col1)
        if self._nodata is not None:
            last = self._last_invalid
            if last is None or last[0] != window:
                self.read(row0, row1, col0, col1)
                last = self._last_invalid
                assert last is not None, "read() records the nodata mask of a non-empty window"
            valid &= ~last[1]
        other = self._invalid_raw(row0, row1, col0, col1)
        if other is not None:
            valid &= ~other
        return valid

    def _read_raw(
        self, row0: int, row1: int, col0: int, col1: int, positions: list[int]
    ) -> np.ndarray:
        """The data bands at ``positions`` (0-based, in order) of a non-empty window."""
        raise NotImplementedError

    def _invalid_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray | None:
        """Bool ``(h, w)`` invalid by mask or alpha, or ``None`` when the source has neither."""
        return None

    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self.profile.get("backend")
        return (
            f"{type(self).__name__}({self.path or '<array>'}, shape={self.shape}, "
            f"{self._dtype.name}, {backend})"
        )


class ArrayReader(RasterReader):
    """A reader over an in-memory ``HxWxC`` (or ``HxW``) array of a supported pixel type.

    Args:
        array: The image, native values.
        nodata: The nodata value (pixels where any band equals it are invalid).
        band_names: One name per band (default ``red/green/blue`` for 3-band uint8, else
            ``band1..bandN``).
        path: Only for messages and output names.
    """

    def __init__(
        self,
        array: np.ndarray,
        nodata: float | None = None,
        band_names: list[str] | None = None,
        *,
        path: str | Path | None = None,
    ) -> None:
        array = np.asarray(array)
        label = path or "<array>"
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise RasterError(f"{label}: expected an HxWxC image, got shape {array.shape}")
        names = list(band_names) if band_names is not None else None
        if names is None:
            names = default_band_names(array.shape[2], array.dtype, rgb=True)
        if len(names) != array.shape[2]:
            raise RasterError(f"{label}: {len(names)} band names for {array.shape[2]} bands")
        self._array = array
        self._setup(
            Path(path) if path else None,
            RasterContents(array.shape[0], array.shape[1], array.dtype, names),
            {"backend": "array", "driver": None},
            nodata=nodata,
        )

    def _read_raw(
        self, row0: int, row1: int, col0: int, col1: int, positions: list[int]
    ) -> np.ndarray:
        if positions == list(range(self._array.shape[2])):
            return self._array[row0:row1, col0:col1]
        return self._array[row0:row1, col0:col1][..., positions]


def gdal_env():
    """A rasterio environment capping GDAL's block cache (see :data:`GDAL_CACHE_BYTES`)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)
