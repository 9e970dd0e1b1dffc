"""Opening rasters for windowed reading: PIL and rasterio backends, band files, index masks.

:func:`open_raster` picks the backend:

- **PIL** (PNG, JPEG, WebP, BMP): decodes the whole image once at open; ``read`` slices it,
  through :func:`engine.data.sources.pictures.read_pil_pixels` (the shard builder's decoder: CMYK
  to RGB, EXIF orientation applied, palette expanded). 8-bit RGB(A), grey(+alpha) and
  16-bit single-band PNG (a 1-band uint16 image). PIL's decompression-bomb limit is
  replaced by terraseg's pixel limit (1.5 G pixels, ``TERRASEG_MAX_PIXELS``), checked from
  the header before decoding, since aerial mosaics are legitimately large.
- **rasterio** (every TIFF, COG and any other GDAL format): windowed reads of only the
  requested window (memory stays bounded by the window, whatever the raster's size), the
  file's nodata value and GDAL mask, band descriptions, CRS and transform (outputs are
  GeoTIFFs with the input's georeferencing). GDAL's block cache is capped while reading
  (:data:`engine.data.sources.raster_base.GDAL_CACHE_BYTES`).
- **band files** (``band_files=[...]``): one single-band file per band, stacked.

The reader interface and the band/type/nodata rules are in :mod:`engine.data.sources.raster_base`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.sources.formats import read_by_gdal, reader_of
from engine.data.sources.pictures import ImageReadError, check_pixels, open_image, read_pil_pixels
from engine.data.sources.raster_base import (
    RasterContents,
    RasterError,
    RasterReader,
    alpha_is_mask,
    alpha_windows,
    default_band_names,
    gdal_env,
)

BandSpec = list[int | str] | None


class PILReader(RasterReader):
    """PNG/JPEG/WebP/BMP: decoded once at open (see the module notes).

    Decoding goes through :func:`engine.data.sources.pictures.read_pil_pixels`, the function the
    shard builder uses, so prediction sees the pixels training saw. An alpha channel (RGBA,
    LA, palette with transparency) is a band tagged alpha: a validity mask (alpha 0 marks
    pixels invalid) when its values are 0/255 only, else a data band
    (:mod:`engine.data.sources.raster_base`).
    """

    def __init__(self, path: Path, *, bands: BandSpec = None, nodata: float | None = None) -> None:
        try:
            array, mode = read_pil_pixels(path)
        except ImageReadError as error:
            raise RasterError(str(error)) from error
        if array.dtype == bool:  # 1-bit images: 0/255 as PIL's convert("L")
            array = array.astype(np.uint8) * np.uint8(255)
        if array.ndim == 2:
            array = array[..., None]
        channels = array.shape[2]
        alphas = (channels,) if channels in (2, 4) else ()  # LA, RGBA: alpha is the last
        names = default_band_names(channels - len(alphas), array.dtype, rgb=True)
        self._array = array
        contents = RasterContents(
            array.shape[0],
            array.shape[1],
            array.dtype,
            names + [f"band{n}" for n in alphas],
            alphas=alphas,
            is_mask=lambda number: alpha_is_mask([array[..., number - 1]], array.dtype),
        )
        self._setup(path, contents, {"backend": "pil", "driver": mode}, bands=bands, nodata=nodata)

    def _read_raw(
        self, row0: int, row1: int, col0: int, col1: int, positions: list[int]
    ) -> np.ndarray:
        return self._array[row0:row1, col0:col1][..., positions]

    def _invalid_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray | None:
        if not self._alpha_masks:
            return None
        masks = [number - 1 for number in self._alpha_masks]
        return (self._array[row0:row1, col0:col1][..., masks] == 0).any(axis=-1)


def _open_dataset(path: Path):
    """``rasterio.open``, errors naming the file; no warning for ungeoreferenced TIFFs."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as error:
        raise RasterError(f"{path}: cannot read raster (truncated or corrupt?): {error}") from error


class RasterioReader(RasterReader):
    """Any GDAL raster through rasterio's windowed reads; keeps CRS, transform and nodata."""

    def __init__(self, path: Path, *, bands: BandSpec = None, nodata: float | None = None) -> None:
        from rasterio.enums import ColorInterp, MaskFlags

        self._src = src = _open_dataset(path)
        try:
            dtypes = sorted(set(src.dtypes))
            if len(dtypes) != 1:
                raise RasterError(f"{path}: bands of different pixel types {dtypes}")
            interp = list(src.colorinterp)
            if ColorInterp.palette in interp:
                raise RasterError(
                    f"{path}: palette (colour-map) raster; expand it to RGB first "
                    "(gdal_translate -expand rgb)"
                )
            alphas = tuple(n + 1 for n, c in enumerate(interp) if c == ColorInterp.alpha)
            numbers = list(range(1, src.count + 1))
            others = [n for n in numbers if n not in alphas]
            rgb = [interp[n - 1] for n in others] == [
                ColorInterp.red,
                ColorInterp.green,
                ColorInterp.blue,
            ]
            if rgb and src.dtypes[0] == "uint8":  # the default names of an RGB(+alpha) file
                defaults = dict(zip(others, default_band_names(3, "uint8", rgb=True)))
            else:
                defaults = {}
            names = [src.descriptions[n - 1] or defaults.get(n, f"band{n}") for n in numbers]
            flags = src.mask_flag_enums
            self._numbers = numbers
            self._mask_bands = [
                n
                for n in numbers
                if not {MaskFlags.all_valid, MaskFlags.nodata, MaskFlags.alpha} & set(flags[n - 1])
            ]
            profile = {
                "backend": "rasterio",
                "driver": src.driver,
                "crs": src.crs,
                "transform": src.transform,
                "compression": (src.compression.name.lower() if src.compression else "none"),
                "file_count": src.count,
            }
            contents = RasterContents(
                src.height, src.width, src.dtypes[0], names, numbers, alphas, self._alpha_is_mask
            )
            self._setup(
                path,
                contents,
                profile,
                bands=bands,
                nodata=nodata if nodata is not None else src.nodata,
            )
            selected = {numbers[p] for p in self._select}
            self._mask_bands = [n for n in self._mask_bands if n in selected]
            if any(MaskFlags.per_dataset in flags[n - 1] for n in self._mask_bands):
                self._mask_bands = self._mask_bands[:1]  # one mask serves every band
        except Exception:
            src.close()
            raise

    def _alpha_is_mask(self, number: int) -> bool:
        """Whether band ``number`` (tagged alpha) holds a validity mask, from its samples."""
        return alpha_is_mask(self._alpha_samples(number), self._src.dtypes[number - 1])

    def _alpha_samples(self, number: int) -> Iterator[np.ndarray]:
        """Band ``number``'s pixels to judge (:func:`alpha_windows`), read lazily."""
        src = self._src
        for window in alpha_windows(src.height, src.width, src.block_shapes[number - 1]):
            yield self._window_read("read", [number], *window)

    @property
    def georef(self) -> dict[str, Any] | None:
        """``{"crs", "transform"}`` when the source has a CRS or a non-identity transform."""
        from affine import Affine

        src = self._src
        if src.crs is None and src.transform == Affine.identity():
            return None
        return {"crs": src.crs, "transform": src.transform}

    def _window_read(
        self, method: str, indexes: list[int], row0: int, row1: int, col0: int, col1: int
    ) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            with gdal_env():
                return getattr(self._src, method)(indexes=indexes, window=window)
        except Exception as error:
            raise RasterError(
                f"{self.path}: cannot read rows {row0}:{row1} (truncated or corrupt?): {error}"
            ) from error

    def _read_raw(
        self, row0: int, row1: int, col0: int, col1: int, positions: list[int]
    ) -> np.ndarray:
        indexes = [self._numbers[p] for p in positions]
        return np.moveaxis(self._window_read("read", indexes, row0, row1, col0, col1), 0, -1)

    def _invalid_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray | None:
        invalid = None
        if self._alpha_masks:
            alpha = self._window_read("read", self._alpha_masks, row0, row1, col0, col1)
            invalid = (alpha == 0).any(axis=0)
        if self._mask_bands:
            masks = self._window_read("read_masks", self._mask_bands, row0, row1, col0, col1)
            masked = (masks == 0).any(axis=0)
            invalid = masked if invalid is None else invalid | masked
        return invalid

    def close(self) -> None:
        """Close the dataset (idempotent)."""
        self._src.close()


class BandFilesReader(RasterReader):
    """One single-band file per band, stacked in the order of ``names``.

    ``path`` is the first band's file; band ``k``'s file is ``path`` with the first
    occurrence of ``names[0]`` in its file name replaced by ``names[k]``
    (``red_patch_7.TIF`` with ``["red", "green"]`` → ``green_patch_7.TIF``). Every file
    must hold one band of the same size, pixel type, CRS and transform; the band names are
    ``names``.
    """

    def __init__(
        self,
        path: Path,
        names: list[str],
        *,
        bands: BandSpec = None,
        nodata: float | None = None,
        backend: str = "auto",
    ) -> None:
        names = [str(n) for n in names]
        if not names or len(set(names)) != len(names):
            raise RasterError(f"{path}: band files need distinct band names, got {names}")
        if names[0] not in path.name:
            raise RasterError(
                f"{path}: the first band name {names[0]!r} is not in the file name, so the "
                "other bands' files cannot be found"
            )
        self._readers: list[RasterReader] = []
        try:
            for name in names:
                file = path.with_name(path.name.replace(names[0], name, 1))
                if not file.is_file():
                    raise RasterError(f"{file}: band file for band {name!r} not found")
                reader = open_raster(file, nodata=nodata, backend=backend)
                self._readers.append(reader)
                self._check_like_first(reader)
            first = self._readers[0]
            self._setup(
                path,
                RasterContents(first.shape[0], first.shape[1], first.dtype, names),
                {
                    **first.profile,
                    "backend": f"band files ({first.profile.get('backend')})",
                    "band_files": [str(r.path) for r in self._readers],
                },
                bands=bands,
                nodata=first.nodata,
            )
            self.notes = [note for reader in self._readers for note in reader.notes]
        except Exception:
            self.close()
            raise

    def _check_like_first(self, reader: RasterReader) -> None:
        first = self._readers[0]
        if reader.shape[2] != 1:
            raise RasterError(f"{reader.path}: {reader.shape[2]} bands; a band file holds one")
        checks = (
            ("size (HxW)", reader.shape[:2], first.shape[:2]),
            ("pixel type", reader.dtype.name, first.dtype.name),
            ("georeferencing", reader.georef, first.georef),
            ("nodata", reader.nodata, first.nodata),
        )
        for what, got, want in checks:
            same = got == want or (what == "nodata" and got != got and want != want)  # NaN
            if not same:
                raise RasterError(f"{reader.path}: {what} {got} differs from {first.path}'s {want}")

    @property
    def georef(self) -> dict[str, Any] | None:
        """The first band file's georeferencing (every file has the same)."""
        return self._readers[0].georef

    def _read_raw(
        self, row0: int, row1: int, col0: int, col1: int, positions: list[int]
    ) -> np.ndarray:
        parts = [self._readers[p]._read_raw(row0, row1, col0, col1, [0]) for p in positions]
        return np.concatenate(parts, axis=-1)

    def _invalid_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray | None:
        invalid = None
        for position in self._select:
            other = self._readers[position]._invalid_raw(row0, row1, col0, col1)
            if other is not None:
                invalid = other if invalid is None else invalid | other
        return invalid

    def close(self) -> None:
        """Close every band file (idempotent)."""
        for reader in getattr(self, "_readers", []):
            reader.close()


def open_raster(
    path: str | Path,
    *,
    bands: BandSpec = None,
    nodata: float | None = None,
    band_files: list[str] | None = None,
    backend: str = "auto",
) -> RasterReader:
    """Open an image for windowed reading of its bands at native precision.

    Args:
        path: The image: PNG/JPEG/WebP/BMP (PIL), TIFF or any GDAL format (rasterio); with
            ``band_files``, the first band's file.
        bands: Bands to deliver, in this order: 1-based band numbers or band names (the
            file's band descriptions; default names ``red/green/blue`` or ``bandN``).
        nodata: Nodata value overriding the file's (NaN allowed for float bands).
        band_files: Per-band names: stack one single-band file per band (see
            :class:`BandFilesReader`); the band names are these.
        backend: ``"auto"`` (by suffix), ``"pil"`` or ``"rasterio"``.

    Returns:
        A :class:`~engine.data.sources.raster_base.RasterReader` (a context manager).

    Raises:
        FileNotFoundError: naming the file when it does not exist.
        RasterError: naming the file when it cannot be decoded, has an unsupported pixel
            type, lacks a selected band, or its band files do not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input image not found")
    if backend not in ("auto", "pil", "rasterio"):
        raise ValueError(f"unknown backend {backend!r}; choose auto, pil or rasterio")
    if band_files:
        return BandFilesReader(path, list(band_files), bands=bands, nodata=nodata, backend=backend)
    if backend == "auto":
        backend = "pil" if reader_of(path) == "pil" else "rasterio"
    if backend == "pil":
        return PILReader(path, bands=bands, nodata=nodata)
    return RasterioReader(path, bands=bands, nodata=nodata)


def read_whole_raster(path: str | Path, limit: int | None = None) -> tuple[np.ndarray, int | None]:
    """Every band of a (TIFF) raster through rasterio, as stored, its size checked first.

    Args:
        path: The raster.
        limit: Pixel limit (default :func:`engine.data.sources.pictures.max_pixels`).

    Returns:
        ``(array, alpha)``: ``HxWxC`` in the file's integer or float type (alpha band
        included) and the alpha band's 0-based position or ``None``.

    Raises:
        ImageReadError: naming the file when it is missing, over the limit or unreadable.
    """
    from rasterio.enums import ColorInterp

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        src = _open_dataset(path)
    except RasterError as error:
        raise ImageReadError(str(error)) from error
    with src:
        check_pixels(path, src.height, src.width, limit)
        if len(set(src.dtypes)) != 1:
            raise ImageReadError(f"{path}: bands of different pixel types {sorted(src.dtypes)}")
        interp = list(src.colorinterp)
        alpha = interp.index(ColorInterp.alpha) if ColorInterp.alpha in interp else None
        try:
            with gdal_env():
                data = src.read()
        except Exception as error:
            raise ImageReadError(
                f"{path}: cannot decode (truncated or corrupt?): {error}"
            ) from error
    return np.ascontiguousarray(np.moveaxis(data, 0, -1)), alpha


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a single-band class-index mask (PNG, palette PNG, TIFF) as uint8 ``HxW``.

    TIFF masks are read through rasterio (any integer type holding values 0..255).

    Raises:
        RasterError: naming the file when it is not a single-band mask of values 0..255.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found")
    try:
        if read_by_gdal(path):
            array, _ = read_whole_raster(path)
            if array.shape[2] == 1:
                array = array[..., 0]
        else:
            with open_image(path) as image:  # the header's size checked before decoding
                if image.mode not in ("L", "P", "I", "I;16"):
                    raise RasterError(
                        f"{path}: mode {image.mode} is not a single-band class-index mask"
                    )
                array = np.array(image)
    except RasterError:
        raise
    except ImageReadError as error:
        raise RasterError(str(error)) from error
    except Exception as error:
        raise RasterError(f"{path}: cannot read mask: {error}") from error
    if array.ndim != 2:
        raise RasterError(f"{path}: expected a single-band mask, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise RasterError(f"{path}: mask pixel type {array.dtype} is not an integer type")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise RasterError(f"{path}: mask values outside 0..255")
        array = array.astype(np.uint8)
    return array
