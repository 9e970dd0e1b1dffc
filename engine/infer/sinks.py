"""Output sinks: one image written in consecutive row blocks (PNG, GeoTIFF, COG), staging.

Every sink writes to ``<name>.partial`` and renames it when complete, so nothing appears
under the final name before it is whole. PNG outputs are assembled in memory and written
on close. GeoTIFF outputs go through rasterio (GDAL) only: tiled 256x256, deflate, with the
input's CRS, transform and the output's nodata value, written in 256-row bands so a
20000x20000 prediction never holds its mask in memory. A COG is that GeoTIFF copied by
GDAL's COG driver (``rasterio.shutil.copy(driver="COG")``, which adds the overviews) once it
is complete. :class:`Staging` holds outputs of rasters predicted in column bands on disk
until they can be replayed in row order.

Closing is two steps: :meth:`Sink.finish` completes the ``.partial`` file (the COG copy
included), :meth:`Sink.commit` renames it into place, so a writer can finish every output
before it renames any. A failed write (``OSError``, GDAL's errors) becomes one
:class:`OutputWriteError` naming the output; a full disk or quota is a
:class:`~engine.train.state_io.DiskFullError` ("no space left on device"). GDAL reports a
full disk as a plain "Write failed", so when the error carries no ``errno`` the file is
asked to grow by :data:`PROBE_BYTES` (:func:`cannot_grow`): the kernel's ``ENOSPC`` or
``EDQUOT`` answer decides.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import UserError
from engine.train.state_io import DiskFullError, disk_full

#: Tile edge of GeoTIFF outputs, and the rows per band they are written in.
BLOCK = 256
#: GDAL block-cache cap (bytes) while rasterio writes: GDAL's default (5 % of RAM) would
#: otherwise keep up to that much of a streamed output resident.
GDAL_CACHE_BYTES = 32 * 2**20
#: Bytes appended to a file that failed to write, to ask the kernel whether it is full.
PROBE_BYTES = 2**20


class OutputWriteError(UserError):
    """An output could not be written (not a full disk: that is a ``DiskFullError``)."""


def cannot_grow(path: Path) -> bool:
    """Whether appending :data:`PROBE_BYTES` to ``path`` fails with ``ENOSPC``/``EDQUOT``.

    Only asked of terraseg's own temporary files after a failed write; they are removed
    afterwards, so the appended zeros never reach an output.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    chunk = bytes(64 * 1024)
    try:
        for _ in range(PROBE_BYTES // len(chunk)):
            os.write(fd, chunk)
    except OSError as error:
        return disk_full(error, path) is not None
    finally:
        os.close(fd)
    return False


def _write_errors() -> tuple[type[BaseException], ...]:
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    return (OSError, RasterioError, CPLE_BaseError)


@contextlib.contextmanager
def reported(output: Path, written: Path):
    """Turn a failed write of ``written`` (output ``output``) into a one-line error.

    Raises:
        DiskFullError: naming ``output`` when the disk or the quota is full.
        OutputWriteError: naming ``output`` for any other write failure.
    """
    try:
        yield
    except UserError:
        raise
    except _write_errors() as error:
        full = disk_full(error, output) if isinstance(error, OSError) else None
        if full is None and cannot_grow(written):
            full = DiskFullError(f"{output}: no space left on device")
        if full is not None:
            raise full from error
        cause = error.__cause__ or error
        raise OutputWriteError(f"{output}: cannot write ({_first_line(cause)})") from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def gdal_env():
    """A rasterio environment capping GDAL's block cache (see :data:`GDAL_CACHE_BYTES`)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


@dataclass(frozen=True)
class PixelSpec:
    """What each pixel of one output holds.

    Attributes:
        channels: Bands of the output.
        dtype: Their numpy type.
        nodata: The output's nodata value (``None``: none).
        masked: Whether the sink keeps a per-pixel validity mask (GeoTIFF: GDAL's
            per-dataset mask band) for outputs whose values cannot hold a nodata value.
    """

    channels: int
    dtype: Any = np.uint8
    nodata: float | None = None
    masked: bool = False


class Sink:
    """Receives consecutive row blocks of one output image ``height x width`` of ``pixels``.

    Attributes:
        channels: ``pixels.channels``.
        dtype: ``pixels.dtype`` as a numpy dtype.
        nodata: ``pixels.nodata``.
        masked: ``pixels.masked``.
    """

    def __init__(self, path: Path, height: int, width: int, pixels: PixelSpec) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.height, self.width, self.channels = height, width, pixels.channels
        self.dtype = np.dtype(pixels.dtype)
        self.nodata = pixels.nodata
        self.masked = pixels.masked

    def write(self, row0: int, block: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write the row block starting at ``row0`` (``valid``: bool ``rows x width``)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Complete the temporary file (everything but the rename)."""
        raise NotImplementedError

    def commit(self) -> None:
        """Rename the finished temporary file into place."""
        with reported(self.path, self.partial):
            os.replace(self.partial, self.path)

    def close(self) -> None:
        """Finish the output, then rename it into place."""
        self.finish()
        self.commit()

    def abort(self) -> None:
        """Remove what was written."""
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


class PNGSink(Sink):
    """Assembles the image in memory and saves it with PIL on close (no validity mask)."""

    def __init__(self, path: Path, height: int, width: int, pixels: PixelSpec) -> None:
        super().__init__(path, height, width, PixelSpec(pixels.channels, pixels.dtype))
        channels = self.channels
        shape = (height, width) if channels == 1 else (height, width, channels)
        self.array = np.zeros(shape, self.dtype)

    def write(self, row0: int, block: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write the row block starting at ``row0`` (``valid`` is not kept in PNG)."""
        self.array[row0 : row0 + block.shape[0]] = block

    def finish(self) -> None:
        """Save the assembled image to the temporary file."""
        from PIL import Image

        with reported(self.path, self.partial):
            Image.fromarray(self.array).save(self.partial, format="PNG")
        self.array = None  # type: ignore[assignment]


class Aligner:
    """Regroups incoming row blocks into blocks of exactly ``rows`` rows (last may be short)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.parts: list[np.ndarray] = []
        self.count = 0
        self.next_row = 0

    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add rows; return the complete blocks they finish."""
        self.parts.append(block)
        self.count += block.shape[0]
        out = []
        while self.count >= self.rows:
            out.append(self._take(self.rows))
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """Return the rows still held (the last, partial block)."""
        return [self._take(self.count)] if self.count else []

    def _take(self, rows: int) -> tuple[int, np.ndarray]:
        joined = np.concatenate(self.parts, axis=0) if len(self.parts) > 1 else self.parts[0]
        block, rest = joined[:rows], joined[rows:]
        self.parts = [rest] if rest.shape[0] else []
        self.count -= rows
        row0 = self.next_row
        self.next_row += rows
        return row0, np.ascontiguousarray(block)


class GeoTiffSink(Sink):
    """GeoTIFF (or COG) through rasterio: the input's CRS and transform, a nodata value.

    Written as a tiled (256x256), deflate-compressed GeoTIFF in 256-row bands. With
    ``cog=True`` the finished GeoTIFF is copied by GDAL's COG driver (256x256 blocks,
    overviews by nearest-neighbour resampling, or averaging for float outputs) and the copy
    renamed into place. ``pixels.masked`` also writes GDAL's per-dataset mask band (0 where
    ``valid`` is False), for outputs such as colour renderings whose every value is legal.
    ``georef`` is the input's ``{"crs", "transform"}`` (either may be missing).
    """

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        pixels: PixelSpec,
        *,
        georef: dict[str, Any] | None = None,
        cog: bool = False,
    ) -> None:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        super().__init__(path, height, width, pixels)
        self.cog = cog
        self.cog_partial = path.with_name(path.name + ".cog.partial")
        self.aligner = Aligner(BLOCK)
        self.valid_aligner = Aligner(BLOCK) if pixels.masked else None
        crs, transform = (georef or {}).get("crs"), (georef or {}).get("transform")
        options: dict[str, Any] = {"crs": crs, "transform": transform} if crs or transform else {}
        if pixels.nodata is not None:
            options["nodata"] = pixels.nodata
        rgb = self.channels == 3 and self.dtype == np.uint8
        with warnings.catch_warnings(), gdal_env(), reported(path, self.partial):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.dataset = rasterio.open(
                self.partial,
                "w",
                driver="GTiff",
                height=height,
                width=width,
                count=self.channels,
                dtype=self.dtype.name,
                tiled=True,
                blockxsize=BLOCK,
                blockysize=BLOCK,
                compress="deflate",
                BIGTIFF="IF_SAFER",
                photometric="RGB" if rgb else "MINISBLACK",
                **options,
            )

    def _write_band(self, start: int, band: np.ndarray, valid: np.ndarray | None) -> None:
        from rasterio.windows import Window

        window = Window(0, start, self.width, band.shape[0])
        data = band[None] if band.ndim == 2 else np.moveaxis(band, -1, 0)
        self.dataset.write(data, window=window)
        if self.masked:
            mask = np.full(band.shape[:2], 255, np.uint8) if valid is None else valid
            self.dataset.write_mask(np.where(mask, 255, 0).astype(np.uint8), window=window)

    def write(self, row0: int, block: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Write the row block starting at ``row0`` (``valid``: bool ``rows x width``)."""
        bands = self.aligner.push(block)
        if self.valid_aligner is None:
            masks: list = [None] * len(bands)
        else:
            valid = np.ones(block.shape[:2], bool) if valid is None else valid
            masks = [band for _, band in self.valid_aligner.push(valid)]
        with gdal_env(), reported(self.path, self.partial):
            for (start, band), mask in zip(bands, masks, strict=True):
                self._write_band(start, band, mask)

    def finish(self) -> None:
        """Flush the last rows and close the GeoTIFF (for a COG: copy it, drop the plain one)."""
        with gdal_env(), reported(self.path, self.partial):
            bands = self.aligner.flush()
            masks = (
                [band for _, band in self.valid_aligner.flush()]
                if self.valid_aligner is not None
                else [None] * len(bands)
            )
            for (start, band), mask in zip(bands, masks, strict=True):
                self._write_band(start, band, mask)
            self.dataset.close()
        if self.cog:
            with gdal_env(), reported(self.path, self.cog_partial):
                self._copy_to_cog()
            self.partial.unlink()

    def commit(self) -> None:
        """Rename the finished GeoTIFF (or its COG copy) into place."""
        finished = self.cog_partial if self.cog else self.partial
        with reported(self.path, finished):
            os.replace(finished, self.path)

    def _copy_to_cog(self) -> None:
        from rasterio.shutil import copy

        resampling = "AVERAGE" if self.dtype.kind == "f" else "NEAREST"
        copy(
            self.partial,
            self.cog_partial,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=BLOCK,
            RESAMPLING=resampling,
            OVERVIEWS="AUTO",
            BIGTIFF="IF_SAFER",
        )

    def abort(self) -> None:
        """Remove what was written."""
        with contextlib.suppress(Exception):
            self.dataset.close()
        with contextlib.suppress(FileNotFoundError):
            self.cog_partial.unlink()
        super().abort()


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` (positional, no seek; large reads chunked)."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), offset)
        if not chunk:
            raise OSError(f"unexpected end of file at byte {offset}")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


class Staging:
    """One output's pixels, written in column bands, read back in row order.

    A raw file beside the output, written and read with positional I/O (no memory
    map), so staged pixels sit in the page cache rather than in the process's memory.
    """

    def __init__(
        self, path: Path, height: int, width: int, channels: int, dtype: Any = np.uint8
    ) -> None:
        self.path, self.width, self.channels = path, width, channels
        self.dtype = np.dtype(dtype)
        self.row_bytes = width * channels * self.dtype.itemsize
        with reported(path, path):
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with reported(path, path):
                os.ftruncate(self.fd, height * self.row_bytes)
        except BaseException:
            self.remove()
            raise

    def write(self, row0: int, col0: int, block: np.ndarray) -> None:
        """Write a block whose top-left pixel is ``(row0, col0)``."""
        rows = np.ascontiguousarray(block, self.dtype).reshape(block.shape[0], -1)
        offset = row0 * self.row_bytes + col0 * self.channels * self.dtype.itemsize
        with reported(self.path, self.path):
            for number, row in enumerate(rows):
                if os.pwrite(self.fd, row.data, offset + number * self.row_bytes) != row.nbytes:
                    raise OSError(f"{self.path}: short write")

    def read(self, row0: int, row1: int) -> np.ndarray:
        """Read rows ``[row0, row1)``."""
        data = pread_exact(self.fd, (row1 - row0) * self.row_bytes, row0 * self.row_bytes)
        shape = (row1 - row0, self.width) + ((self.channels,) if self.channels > 1 else ())
        return np.frombuffer(data, self.dtype).reshape(shape)

    def remove(self) -> None:
        """Close and delete the staging file."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
