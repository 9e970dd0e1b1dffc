"""Window readers and row-strip writers for rasters of any size.

Readers (:func:`open_raster`) expose ``.shape == (H, W, 3)`` and
``.read(row0, row1, col0, col1) -> uint8 (row1 - row0, col1 - col0, 3)`` plus ``.profile``
(a dict describing the source) and ``.georef`` (``None`` or what the writers need to keep
the georeferencing). Backends:

- **PIL** (PNG, JPEG, WebP, BMP): decodes the whole image once at open; ``read`` slices it.
  Fine for the image sizes these formats are used for (PIL's decompression-bomb limit is
  lifted while opening, since aerial mosaics are legitimately large).
- **tifffile** (TIFF without rasterio): never decodes more than the requested rows.
  Uncompressed contiguous images are read with positional file reads of exactly the
  requested rows (no persistent memory map, so pages read do not accumulate in the
  process's resident memory); striped or tiled images decode only the strips/tiles that
  intersect the window. Limits: first page only (the full-resolution level of a COG);
  compressions need tifffile's codecs (deflate and LZMA work out of the box; LZW, JPEG,
  PackBits, ZSTD need ``imagecodecs`` — the error says so); planar-separate works;
  palette (colormap) and 1-bit images are rejected. GeoTIFF tags are carried to the
  outputs so georeferencing survives without rasterio.
- **rasterio** (TIFF when the ``geo`` extra is installed; preferred): windowed reads, and
  the outputs are GeoTIFFs with the input's CRS and transform.

Band and type rules (errors name the file): 3 bands are RGB; 4 bands are RGB + alpha and
the alpha must be constant (checked on every window read; a varying alpha means masked
pixels, which is not supported); other band counts are rejected. uint8 is used as is;
uint16 is scaled with ``value * 255 / uint16_max`` (default ``uint16_max = 65535``; pass
4095 for 12-bit sensors, 10000 for reflectance products), rounded and clipped — the same
rule as :func:`engine.imageio.read_image`. Other pixel types are rejected.

Writers: :class:`PredictionWriter` turns streamed probability rows into a class-index mask
(``<stem>_mask``), a colour rendering (``<stem>_color``), and optionally a confidence map
(``<stem>_confidence``, max probability x 255 as uint8) and an overlay (``<stem>_overlay``).
PNG outputs are assembled in memory and written on close; TIFF outputs are streamed
(256x256 tiles, deflate) so a 20000x20000 prediction never holds its mask in memory;
rasters predicted in column bands are staged on disk first (see :class:`PredictionWriter`).
The format defaults to TIFF for TIFF inputs and for images over :data:`PNG_MAX_PIXELS`, PNG
otherwise. Every output is written to ``<name>.partial`` and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.render import colorize, overlay

TIFF_SUFFIXES = {".tif", ".tiff"}
PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
#: Above this many pixels predictions are written as TIFF even for PNG/JPEG inputs.
PNG_MAX_PIXELS = 64_000_000
#: Tags copied from a GeoTIFF input to its outputs by the tifffile backend.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
BLOCK = 256
#: GDAL block-cache cap (bytes) while rasterio reads or writes: GDAL's default (5 % of RAM)
#: would otherwise keep up to that much of a streamed raster resident.
GDAL_CACHE_BYTES = 32 * 2**20


class RasterError(ValueError):
    """A raster cannot be used; the message names the file and the problem."""


def rasterio_available() -> bool:
    """Whether the optional rasterio backend (``pip install terraseg[geo]``) is importable."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- readers


class RasterReader:
    """Base class of the window readers; subclasses implement :meth:`_read_raw`.

    Attributes:
        path: The source file (``None`` for in-memory arrays).
        profile: Description of the source: ``backend``, ``driver``, ``height``,
            ``width``, ``count``, ``dtype``, ``crs``, ``transform`` (``None`` when unknown).
    """

    def __init__(
        self,
        path: Path | None,
        height: int,
        width: int,
        bands: int,
        dtype: Any,
        profile: dict[str, Any],
        uint16_max: int | None = None,
        alpha_band: int | None = None,
    ) -> None:
        self.path = path
        self._height, self._width = int(height), int(width)
        self._bands = int(bands)
        self._dtype = np.dtype(dtype)
        self._uint16_max = uint16_max or 65535
        self._alpha_band = alpha_band
        self._alpha_value: int | None = None
        self.profile = {
            "path": str(path) if path else None,
            "height": self._height,
            "width": self._width,
            "count": self._bands,
            "dtype": str(self._dtype),
            "crs": None,
            "transform": None,
            **profile,
        }
        name = self.path or "<array>"
        if self._bands == 4:
            if self._alpha_band is None:
                self._alpha_band = 3
        elif self._bands != 3:
            raise RasterError(
                f"{name}: {self._bands}-band raster; terraseg needs 3-band RGB "
                "(or 4-band RGB with a constant alpha)"
            )
        if self._dtype not in (np.uint8, np.uint16):
            raise RasterError(
                f"{name}: pixel type {self._dtype} is not supported (uint8 or uint16)"
            )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the RGB image delivered by :meth:`read`."""
        return self._height, self._width, 3

    @property
    def georef(self) -> dict[str, Any] | None:
        """What writers need to keep the georeferencing, or ``None`` for plain images."""
        return None

    @property
    def is_tiff(self) -> bool:
        """Whether the source is a TIFF (its predictions default to TIFF outputs)."""
        return self.path is not None and self.path.suffix.lower() in TIFF_SUFFIXES

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read the window ``[row0, row1) x [col0, col1)`` as uint8 RGB.

        Returns:
            uint8 ``(row1 - row0, col1 - col0, 3)``, C-contiguous.

        Raises:
            ValueError: when the window is outside the raster.
            RasterError: naming the file, when decoding fails or the alpha is not constant.
        """
        if not (0 <= row0 <= row1 <= self._height and 0 <= col0 <= col1 <= self._width):
            raise ValueError(
                f"window rows {row0}:{row1} cols {col0}:{col1} outside "
                f"{self._height}x{self._width} raster {self.path or '<array>'}"
            )
        if row0 == row1 or col0 == col1:
            return np.zeros((row1 - row0, col1 - col0, 3), np.uint8)
        raw = self._read_raw(row0, row1, col0, col1)
        return self._to_rgb(raw)

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        raise NotImplementedError

    def _to_rgb(self, raw: np.ndarray) -> np.ndarray:
        if self._bands == 4:
            alpha_band = self._alpha_band if self._alpha_band is not None else 3
            alpha = raw[..., alpha_band]
            low, high = int(alpha.min()), int(alpha.max())
            if self._alpha_value is None:
                self._alpha_value = low
            if low != high or low != self._alpha_value:
                raise RasterError(
                    f"{self.path or '<array>'}: 4-band raster whose band {alpha_band + 1} is "
                    "not a constant alpha (values "
                    f"{min(low, self._alpha_value)}..{max(high, self._alpha_value)}); "
                    "masked/no-data alpha or a 4th spectral band (e.g. NIR) is not supported, "
                    "give 3-band RGB"
                )
            keep = [b for b in range(4) if b != alpha_band]
            raw = raw[..., keep]
        if raw.dtype == np.uint16:
            scaled = raw.astype(np.float32) * np.float32(255.0 / self._uint16_max)
            raw = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        elif raw.dtype != np.uint8:
            raise RasterError(f"{self.path or '<array>'}: pixel type {raw.dtype} not supported")
        return np.ascontiguousarray(raw)

    def close(self) -> None:
        """Release the file handle (idempotent)."""

    def __enter__(self) -> RasterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self.profile.get("backend")
        return f"{type(self).__name__}({self.path or '<array>'}, shape={self.shape}, {backend})"


class ArrayReader(RasterReader):
    """A reader over an in-memory ``HxWx3`` (or constant-alpha ``HxWx4``) uint8/uint16 array."""

    def __init__(
        self, array: np.ndarray, path: str | Path | None = None, uint16_max: int | None = None
    ) -> None:
        array = np.asarray(array)
        if array.ndim != 3:
            raise RasterError(
                f"{path or '<array>'}: expected an HxWxC image, got shape {array.shape}"
            )
        self._array = array
        super().__init__(
            Path(path) if path else None,
            array.shape[0],
            array.shape[1],
            array.shape[2],
            array.dtype,
            {"backend": "array", "driver": None},
            uint16_max,
        )

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self._array[row0:row1, col0:col1]


class PILReader(RasterReader):
    """PNG/JPEG/WebP/BMP: decoded once at open (see the module notes)."""

    def __init__(self, path: Path, uint16_max: int | None = None) -> None:
        from PIL import Image

        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as image:
                image.load()
                mode = image.mode
                if mode in ("P", "PA"):
                    image = image.convert(
                        "RGBA" if "transparency" in image.info or mode == "PA" else "RGB"
                    )
                elif mode in ("YCbCr", "CMYK"):
                    image = image.convert("RGB")
                elif mode in ("I;16", "I;16B", "I;16L"):
                    raise RasterError(
                        f"{path}: single-band 16-bit image; terraseg needs 3-band RGB"
                    )
                elif mode not in ("RGB", "RGBA"):
                    bands = len(image.getbands())
                    raise RasterError(
                        f"{path}: {bands}-band image (PIL mode {mode}); terraseg needs 3-band RGB"
                    )
                array = np.asarray(image)
        except RasterError:
            raise
        except (OSError, SyntaxError, ValueError) as error:
            raise RasterError(
                f"{path}: cannot decode image (truncated or corrupt?): {error}"
            ) from error
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        self._array = array
        super().__init__(
            path,
            array.shape[0],
            array.shape[1],
            array.shape[2],
            array.dtype,
            {"backend": "pil", "driver": mode},
            uint16_max,
        )
        if self._bands == 4:  # check the whole alpha now, it is in memory anyway
            self._to_rgb(array)

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self._array[row0:row1, col0:col1]


def _pread(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), offset)
        if not chunk:
            raise OSError(f"unexpected end of file at byte {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class TiffReader(RasterReader):
    """TIFF through tifffile, reading only the rows a window needs (see the module notes)."""

    def __init__(self, path: Path, uint16_max: int | None = None) -> None:
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            page = self._tif.pages[0]
        except Exception as error:  # tifffile raises many types for corrupt files
            raise RasterError(
                f"{path}: cannot read TIFF (truncated or corrupt?): {error}"
            ) from error
        self._page = page
        try:
            if page.imagedepth != 1:
                raise RasterError(
                    f"{path}: volumetric TIFF (depth {page.imagedepth}) not supported"
                )
            if int(page.photometric) == 3:
                raise RasterError(f"{path}: palette (colormap) TIFF; terraseg needs RGB")
            if page.dtype is None or np.dtype(page.dtype) not in (np.uint8, np.uint16):
                kind = page.dtype if page.dtype is not None else f"{page.bitspersample}-bit"
                raise RasterError(f"{path}: pixel type {kind} is not supported (uint8 or uint16)")
            self._separate = int(page.planarconfig) == 2 and page.samplesperpixel > 1
            alpha = None
            extras = tuple(int(e) for e in (page.extrasamples or ()))
            if page.samplesperpixel == 4 and extras and extras[0] in (1, 2):
                alpha = 3
            geotags = []
            for code in GEOTIFF_TAGS:
                tag = page.tags.get(code)
                if tag is not None:
                    geotags.append((code, int(tag.dtype), tag.count, tag.value, True))
            self._geotags = geotags
            profile = {
                "backend": "tifffile",
                "driver": "GTiff",
                "compression": str(page.compression.name).lower(),
                "tiled": bool(page.is_tiled),
                "geotiff_tags": [t[0] for t in geotags],
            }
            super().__init__(
                path,
                page.imagelength,
                page.imagewidth,
                page.samplesperpixel,
                page.dtype,
                profile,
                uint16_max,
                alpha,
            )
            self._file_dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
            self._contiguous = bool(page.is_contiguous) and int(page.fillorder) == 1
            if self._contiguous:
                self._offset = int(page.dataoffsets[0])
                self._fd = os.open(path, os.O_RDONLY)
        except Exception:
            self._tif.close()
            raise

    @property
    def georef(self) -> dict[str, Any] | None:
        """``{"geotiff_tags": [...]}`` (tifffile extratags) when the input is a GeoTIFF."""
        return {"geotiff_tags": list(self._geotags)} if self._geotags else None

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        if self._contiguous:
            return self._read_contiguous(row0, row1, col0, col1)
        return self._read_segments(row0, row1, col0, col1)

    def _read_rows(self, first: int, rows: int, row_items: int, col0: int, col1: int) -> bytes:
        """Items ``[col0, col1)`` of ``rows`` rows of ``row_items`` items from item ``first``."""
        item = self._file_dtype.itemsize
        if col1 - col0 == row_items:  # whole rows: one read
            return _pread(self._fd, rows * row_items * item, self._offset + first * item)
        return b"".join(
            _pread(
                self._fd, (col1 - col0) * item, self._offset + (first + r * row_items + col0) * item
            )
            for r in range(rows)
        )

    def _read_contiguous(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """Read only the window (a column band reads no more than its columns)."""
        width, bands = self._width, self._bands
        rows, cols = row1 - row0, col1 - col0
        if not self._separate:
            row_items = width * bands
            data = self._read_rows(row0 * row_items, rows, row_items, col0 * bands, col1 * bands)
            array = np.frombuffer(data, self._file_dtype).reshape(rows, cols, bands)
        else:
            planes = [
                np.frombuffer(
                    self._read_rows((b * self._height + row0) * width, rows, width, col0, col1),
                    self._file_dtype,
                ).reshape(rows, cols)
                for b in range(bands)
            ]
            array = np.stack(planes, axis=-1)
        return array.astype(self._file_dtype.newbyteorder("="), copy=False)

    def _read_segments(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        page = self._page
        out = np.zeros((row1 - row0, col1 - col0, self._bands), self._file_dtype.newbyteorder("="))
        if page.is_tiled:
            seg_h, seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            seg_h, seg_w = int(page.rowsperstrip) or self._height, self._width
            seg_h = min(seg_h, self._height)
        across = -(-self._width // seg_w)
        down = -(-self._height // seg_h)
        per_plane = across * down
        planes = range(self._bands) if self._separate else range(1)
        handle = self._tif.filehandle
        decode = page.decode
        for plane in planes:
            for ty in range(row0 // seg_h, (row1 - 1) // seg_h + 1):
                for tx in range(col0 // seg_w, (col1 - 1) // seg_w + 1):
                    index = plane * per_plane + ty * across + tx
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    if count:
                        handle.seek(offset)
                        data = handle.read(count)
                    else:
                        data = None
                    try:
                        segment, _, _ = decode(data, index, jpegtables=page.jpegtables)
                    except (ValueError, NotImplementedError, KeyError) as error:
                        raise RasterError(
                            f"{self.path}: cannot decode {page.compression.name} data "
                            f"({error}); install 'imagecodecs' or rasterio (terraseg[geo])"
                        ) from error
                    if segment is None:
                        continue
                    segment = segment[0]  # (h, w, contiguous samples)
                    y0, x0 = ty * seg_h, tx * seg_w
                    ys, ye = max(row0, y0), min(row1, y0 + segment.shape[0], self._height)
                    xs, xe = max(col0, x0), min(col1, x0 + segment.shape[1], self._width)
                    piece = segment[ys - y0 : ye - y0, xs - x0 : xe - x0]
                    target = out[ys - row0 : ye - row0, xs - col0 : xe - col0]
                    if self._separate:
                        target[..., plane] = piece[..., 0]
                    else:
                        target[...] = piece
        return out

    def close(self) -> None:
        """Close the TIFF (idempotent)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        self._tif.close()


class RasterioReader(RasterReader):
    """Any GDAL raster through rasterio's windowed reads; keeps CRS and transform."""

    def __init__(self, path: Path, uint16_max: int | None = None) -> None:
        import rasterio
        from rasterio.enums import ColorInterp
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._src = rasterio.open(path)
        except RasterioIOError as error:
            raise RasterError(f"{path}: cannot read raster: {error}") from error
        src = self._src
        try:
            dtypes = set(src.dtypes)
            if len(dtypes) != 1:
                raise RasterError(f"{path}: bands of different types {sorted(dtypes)}")
            alpha = None
            if src.count == 4:
                interp = list(src.colorinterp)
                alphas = [i for i, c in enumerate(interp) if c == ColorInterp.alpha]
                alpha = alphas[0] if len(alphas) == 1 else 3
            profile = {
                "backend": "rasterio",
                "driver": src.driver,
                "crs": src.crs,
                "transform": src.transform,
                "nodata": src.nodata,
                "compression": (src.compression.name.lower() if src.compression else "none"),
            }
            super().__init__(
                path, src.height, src.width, src.count, src.dtypes[0], profile, uint16_max, alpha
            )
        except Exception:
            src.close()
            raise

    @property
    def georef(self) -> dict[str, Any] | None:
        """``{"crs", "transform"}`` when the source has a CRS or a non-identity transform."""
        from affine import Affine

        src = self._src
        if src.crs is None and src.transform == Affine.identity():
            return None
        return {"crs": src.crs, "transform": src.transform}

    def _read_raw(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        from rasterio.windows import Window

        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            with _gdal_env():
                data = self._src.read(window=window)
        except Exception as error:
            raise RasterError(f"{self.path}: cannot read rows {row0}:{row1}: {error}") from error
        return np.moveaxis(data, 0, -1)

    def close(self) -> None:
        """Close the dataset (idempotent)."""
        self._src.close()


def _gdal_env():
    """A rasterio environment capping GDAL's block cache (see :data:`GDAL_CACHE_BYTES`)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def open_raster(
    path: str | Path, *, backend: str = "auto", uint16_max: int | None = None
) -> RasterReader:
    """Open an image for windowed reading.

    Args:
        path: The image: PNG/JPEG/WebP/BMP (PIL) or TIFF (rasterio when installed, else
            tifffile).
        backend: ``"auto"``, ``"pil"``, ``"tifffile"`` or ``"rasterio"``.
        uint16_max: For uint16 input, the value that maps to 255 (default 65535).

    Returns:
        A :class:`RasterReader` (use it as a context manager to close the file).

    Raises:
        FileNotFoundError: naming the file when it does not exist.
        RasterError: naming the file when it cannot be decoded or is not RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input image not found")
    suffix = path.suffix.lower()
    if backend == "auto":
        if suffix in TIFF_SUFFIXES:
            backend = "rasterio" if rasterio_available() else "tifffile"
        elif suffix in PIL_SUFFIXES:
            backend = "pil"
        else:
            backend = "rasterio" if rasterio_available() else "pil"
    if backend == "pil":
        return PILReader(path, uint16_max)
    if backend == "tifffile":
        return TiffReader(path, uint16_max)
    if backend == "rasterio":
        if not rasterio_available():
            raise RasterError(f"{path}: backend 'rasterio' requested but rasterio is not installed")
        return RasterioReader(path, uint16_max)
    raise ValueError(f"unknown backend {backend!r}; choose auto, pil, tifffile or rasterio")


# --------------------------------------------------------------------------- writers


class _Sink:
    """Receives consecutive row blocks of one output image."""

    def __init__(self, path: Path, height: int, width: int, channels: int) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.height, self.width, self.channels = height, width, channels

    def write(self, row0: int, block: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


class _PNGSink(_Sink):
    """Assembles the image in memory and saves it with PIL on close."""

    def __init__(self, path: Path, height: int, width: int, channels: int) -> None:
        super().__init__(path, height, width, channels)
        shape = (height, width) if channels == 1 else (height, width, channels)
        self.array = np.zeros(shape, np.uint8)

    def write(self, row0: int, block: np.ndarray) -> None:
        self.array[row0 : row0 + block.shape[0]] = block

    def close(self) -> None:
        from PIL import Image

        Image.fromarray(self.array).save(self.partial, format="PNG")
        os.replace(self.partial, self.path)
        self.array = None  # type: ignore[assignment]


class _Aligner:
    """Regroups incoming row blocks into blocks of exactly ``rows`` rows (last may be short)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.next_row = 0

    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self.parts.append(block)
        self.count += block.shape[0]
        out = []
        while self.count >= self.rows:
            out.append(self._take(self.rows))
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        return [self._take(self.count)] if self.count else []

    def _take(self, rows: int) -> tuple[int, np.ndarray]:
        joined = np.concatenate(self.parts, axis=0) if len(self.parts) > 1 else self.parts[0]
        block, rest = joined[:rows], joined[rows:]
        self.parts = [rest] if rest.shape[0] else []
        self.count -= rows
        row0 = self.next_row
        self.next_row += rows
        return row0, np.ascontiguousarray(block)


_END = object()


class _TiffSink(_Sink):
    """Streams a tiled, deflate-compressed TIFF through tifffile in a writer thread.

    tifffile pulls tiles from an iterator, so a background thread runs ``TiffWriter.write``
    over a generator fed by a small bounded queue of 256-row bands: memory stays at a few
    bands and compression overlaps with inference.
    """

    def __init__(
        self, path: Path, height: int, width: int, channels: int, extratags: Sequence = ()
    ) -> None:
        super().__init__(path, height, width, channels)
        self.aligner = _Aligner(BLOCK)
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.extratags = list(extratags)
        self.thread = threading.Thread(target=self._run, name=f"tiff-{path.name}", daemon=True)
        self.thread.start()

    def _tiles(self):
        while True:
            band = self.queue.get()
            if band is _END:
                return
            if band is None:  # abort
                raise RuntimeError("aborted")
            for x in range(0, self.width, BLOCK):
                yield np.ascontiguousarray(band[:, x : x + BLOCK])

    def _run(self) -> None:
        import tifffile

        try:
            shape = (self.height, self.width) + ((self.channels,) if self.channels > 1 else ())
            big = self.height * self.width * self.channels > 2**32 - 2**26
            with tifffile.TiffWriter(self.partial, bigtiff=big) as tiff:
                tiff.write(
                    self._tiles(),
                    shape=shape,
                    dtype=np.uint8,
                    tile=(BLOCK, BLOCK),
                    compression="zlib",
                    photometric="rgb" if self.channels == 3 else "minisblack",
                    extratags=self.extratags,
                    metadata=None,
                )
        except BaseException as error:  # re-raised in the producer thread
            self.error = error

    def _put(self, item: object) -> None:
        while True:
            if self.error is not None:
                raise RuntimeError(f"{self.path}: TIFF writer failed: {self.error}") from self.error
            if not self.thread.is_alive():
                if item is _END:  # tifffile stops pulling once it has every tile it needs
                    return
                raise RuntimeError(f"{self.path}: TIFF writer stopped before all rows arrived")
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def write(self, row0: int, block: np.ndarray) -> None:
        for _, band in self.aligner.push(block):
            self._put(band)

    def close(self) -> None:
        for _, band in self.aligner.flush():
            self._put(band)
        self._put(_END)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"{self.path}: TIFF writer failed: {self.error}") from self.error
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=5)
            self.thread.join(timeout=30)
        super().abort()


class _RasterioSink(_Sink):
    """GeoTIFF through rasterio with the input's CRS and transform (256x256 tiles, deflate)."""

    def __init__(
        self, path: Path, height: int, width: int, channels: int, crs: Any, transform: Any
    ) -> None:
        import rasterio

        super().__init__(path, height, width, channels)
        self.aligner = _Aligner(BLOCK)
        self.dataset = rasterio.open(
            self.partial,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=channels,
            dtype="uint8",
            crs=crs,
            transform=transform,
            tiled=True,
            blockxsize=BLOCK,
            blockysize=BLOCK,
            compress="deflate",
            BIGTIFF="IF_SAFER",
            photometric="RGB" if channels == 3 else "MINISBLACK",
        )

    def write(self, row0: int, block: np.ndarray) -> None:
        from rasterio.windows import Window

        for start, band in self.aligner.push(block):
            data = band[None] if band.ndim == 2 else np.moveaxis(band, -1, 0)
            with _gdal_env():
                self.dataset.write(data, window=Window(0, start, self.width, band.shape[0]))

    def close(self) -> None:
        from rasterio.windows import Window

        with _gdal_env():
            for start, band in self.aligner.flush():
                data = band[None] if band.ndim == 2 else np.moveaxis(band, -1, 0)
                self.dataset.write(data, window=Window(0, start, self.width, band.shape[0]))
            self.dataset.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.dataset.close()
        super().abort()


class _Staging:
    """One output's pixels, written in column bands, read back in row order.

    A raw uint8 file beside the output, written and read with positional I/O (no memory
    map), so staged pixels sit in the page cache rather than in the process's memory.
    """

    def __init__(self, path: Path, height: int, width: int, channels: int) -> None:
        self.path, self.width, self.channels = path, width, channels
        self.row_bytes = width * channels
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(self.fd, height * self.row_bytes)
        except BaseException:
            self.remove()
            raise

    def write(self, row0: int, col0: int, block: np.ndarray) -> None:
        rows = np.ascontiguousarray(block).reshape(block.shape[0], -1)
        offset = row0 * self.row_bytes + col0 * self.channels
        for number, row in enumerate(rows):
            if os.pwrite(self.fd, row, offset + number * self.row_bytes) != row.nbytes:
                raise OSError(f"{self.path}: short write (disk full?)")

    def read(self, row0: int, row1: int) -> np.ndarray:
        data = _pread(self.fd, (row1 - row0) * self.row_bytes, row0 * self.row_bytes)
        shape = (row1 - row0, self.width) + ((self.channels,) if self.channels > 1 else ())
        return np.frombuffer(data, np.uint8).reshape(shape)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


OUTPUT_KINDS = ("mask", "color", "confidence", "overlay")


class PredictionWriter:
    """Writes streamed class probabilities as mask / colour / confidence / overlay images.

    The inference loop calls :meth:`write` with blocks of probabilities: full-width row
    blocks in order (streamed straight to the outputs; nothing is kept beyond what the
    chosen format needs, see the module notes), or, for rasters predicted in column bands,
    blocks anywhere. Those are rendered at once and staged as uint8 pixels in a raw file
    beside each output (``<output>.bands``: the output's uncompressed size on disk, not in
    memory), which :meth:`close` replays in row order. Use as a context manager: on an
    exception the partial and staging files are removed, otherwise :meth:`close`
    finalises every output and checks that every pixel was written.

    Args:
        out_dir: Output folder (created).
        stem: File name stem; outputs are ``<stem>_mask.<ext>`` and so on.
        height: Image height in pixels.
        width: Image width in pixels.
        palette: One colour per class, for the colour rendering and overlay.
        fmt: ``"png"`` or ``"tif"``.
        georef: ``reader.georef``: GeoTIFF outputs keep it (rasterio CRS/transform, or
            GeoTIFF tags with tifffile). Ignored for PNG.
        color: Write ``<stem>_color``.
        confidence: Write ``<stem>_confidence`` (max probability x 255, uint8).
        overlay_reader: When given, write ``<stem>_overlay``: the colour rendering blended
            over the rows read back from this reader.
        overlay_alpha: Opacity of the mask in the overlay.
    """

    def __init__(
        self,
        out_dir: str | Path,
        stem: str,
        height: int,
        width: int,
        palette: Sequence,
        *,
        fmt: str = "png",
        georef: dict[str, Any] | None = None,
        color: bool = True,
        confidence: bool = False,
        overlay_reader: RasterReader | None = None,
        overlay_alpha: float = 0.5,
    ) -> None:
        if fmt not in ("png", "tif"):
            raise ValueError(f"fmt must be 'png' or 'tif', not {fmt!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.height, self.width = int(height), int(width)
        self.palette = list(palette)
        self.overlay_reader = overlay_reader
        self.overlay_alpha = overlay_alpha
        self.next_row = 0
        self.staging: dict[str, _Staging] = {}
        self.staged_pixels = 0
        self.closed = False
        kinds = ["mask"] + (["color"] if color else []) + (["confidence"] if confidence else [])
        if overlay_reader is not None:
            kinds.append("overlay")
        self.sinks: dict[str, _Sink] = {}
        try:
            for kind in kinds:
                channels = 3 if kind in ("color", "overlay") else 1
                path = self.out_dir / f"{stem}_{kind}.{fmt}"
                self.sinks[kind] = self._sink(path, channels, fmt, georef)
        except BaseException:
            self.abort()
            raise

    def _sink(self, path: Path, channels: int, fmt: str, georef: dict | None) -> _Sink:
        if fmt == "png":
            return _PNGSink(path, self.height, self.width, channels)
        if georef and ("crs" in georef or "transform" in georef):
            return _RasterioSink(
                path, self.height, self.width, channels, georef.get("crs"), georef.get("transform")
            )
        tags = georef.get("geotiff_tags", ()) if georef else ()
        return _TiffSink(path, self.height, self.width, channels, tags)

    @property
    def paths(self) -> dict[str, Path]:
        """Output kind → file path."""
        return {kind: sink.path for kind, sink in self.sinks.items()}

    def write(self, row0: int, probs: np.ndarray, col0: int = 0) -> None:
        """Add a block of probabilities.

        Args:
            row0: First image row of the block. Full-width blocks must arrive in order,
                without gaps, unless narrower blocks came first.
            probs: float ``[N, rows, cols]`` class probabilities.
            col0: First image column of the block.
        """
        if probs.ndim != 3:
            raise ValueError(f"expected probabilities [N, rows, cols], got {probs.shape}")
        rows, cols = probs.shape[1:]
        if row0 < 0 or col0 < 0 or row0 + rows > self.height or col0 + cols > self.width:
            raise ValueError(
                f"block rows {row0}:{row0 + rows}, columns {col0}:{col0 + cols} outside the "
                f"{self.height}x{self.width} image"
            )
        streamed = col0 == 0 and cols == self.width and not self.staging
        if streamed and row0 != self.next_row:
            raise ValueError(f"rows must arrive in order: expected row {self.next_row}, got {row0}")
        if not streamed and self.next_row:
            raise ValueError("a column block after full-width rows: write one way per image")
        mask = probs.argmax(axis=0).astype(np.uint8)
        rendered = None
        for kind, sink in self.sinks.items():
            if kind == "mask":
                block = mask
            elif kind == "confidence":
                block = np.rint(np.clip(probs.max(axis=0), 0, 1) * 255).astype(np.uint8)
            else:
                if rendered is None:
                    rendered = colorize(mask, self.palette)
                if kind == "color":
                    block = rendered
                else:
                    assert self.overlay_reader is not None
                    image = self.overlay_reader.read(row0, row0 + rows, col0, col0 + cols)
                    block = overlay(image, rendered, self.overlay_alpha)
            if streamed:
                sink.write(row0, block)
            else:
                if kind not in self.staging:
                    path = sink.path.with_name(sink.path.name + ".bands")
                    self.staging[kind] = _Staging(path, self.height, self.width, sink.channels)
                self.staging[kind].write(row0, col0, block)
        if streamed:
            self.next_row += rows
        else:
            self.staged_pixels += rows * cols

    def close(self) -> None:
        """Finalise every output.

        Raises:
            RuntimeError: when fewer rows (or pixels) than the image holds were written.
        """
        if self.closed:
            return
        total = self.height * self.width
        if self.staging and self.staged_pixels != total:
            self.abort()
            raise RuntimeError(f"{self.staged_pixels} of {total} pixels were written")
        if not self.staging and self.next_row != self.height:
            self.abort()
            raise RuntimeError(f"only {self.next_row} of {self.height} rows were written")
        try:
            for kind, staged in self.staging.items():
                for row0 in range(0, self.height, BLOCK):
                    self.sinks[kind].write(row0, staged.read(row0, min(row0 + BLOCK, self.height)))
                staged.remove()
            for sink in self.sinks.values():
                sink.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        """Stop and delete the partial outputs."""
        for staged in self.staging.values():
            staged.remove()
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                sink.abort()
        self.closed = True

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def output_format(reader: RasterReader) -> str:
    """Default output format for a reader: TIFF for TIFF or very large inputs, else PNG."""
    height, width = reader.shape[:2]
    return "tif" if reader.is_tiff or height * width > PNG_MAX_PIXELS else "png"


def prediction_writer(
    reader: RasterReader,
    out_dir: str | Path,
    palette: Sequence,
    *,
    stem: str | None = None,
    fmt: str = "auto",
    color: bool = True,
    confidence: bool = False,
    overlay: bool = False,
    overlay_alpha: float = 0.5,
) -> PredictionWriter:
    """Make the :class:`PredictionWriter` for one input (stem, format and georef from it).

    Args:
        reader: The input being predicted.
        out_dir: Output folder.
        palette: One colour per class.
        stem: Output stem (default: the input's file stem).
        fmt: ``"auto"`` (see :func:`output_format`), ``"png"`` or ``"tif"``.
        color: Write the colour rendering.
        confidence: Write the confidence map.
        overlay: Write the overlay (reads the input rows a second time).
        overlay_alpha: Opacity of the mask in the overlay.

    Returns:
        The writer.
    """
    if stem is None:
        if reader.path is None:
            raise ValueError("an in-memory reader needs an explicit stem")
        stem = reader.path.stem
    if fmt == "auto":
        fmt = output_format(reader)
    height, width = reader.shape[:2]
    return PredictionWriter(
        out_dir,
        stem,
        height,
        width,
        palette,
        fmt=fmt,
        georef=reader.georef if fmt == "tif" else None,
        color=color,
        confidence=confidence,
        overlay_reader=reader if overlay else None,
        overlay_alpha=overlay_alpha,
    )


def read_index_mask(path: str | Path) -> np.ndarray:
    """Read a single-band class-index mask (PNG, palette PNG, TIFF) as uint8 ``HxW``.

    Raises:
        RasterError: naming the file when it is not a single-band 8-bit mask.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                if image.mode not in ("L", "P", "I", "I;16"):
                    raise RasterError(
                        f"{path}: mode {image.mode} is not a single-band class-index mask"
                    )
                array = np.array(image)
    except RasterError:
        raise
    except Exception as error:
        raise RasterError(f"{path}: cannot read mask: {error}") from error
    if array.ndim != 2:
        raise RasterError(f"{path}: expected a single-band mask, got shape {array.shape}")
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise RasterError(f"{path}: mask values outside 0..255")
        array = array.astype(np.uint8)
    return array
