"""Output sinks: one image written in consecutive row blocks (PNG, TIFF, GeoTIFF), staging.

Every sink writes to ``<name>.partial`` and renames it when complete. PNG outputs are
assembled in memory and written on close; TIFF outputs are streamed (256x256 tiles,
deflate) so a 20000x20000 prediction never holds its mask in memory. :class:`Staging`
holds outputs of rasters predicted in column bands on disk until they can be replayed in
row order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.raster_base import gdal_env, pread_exact

BLOCK = 256


class Sink:
    """Receives consecutive row blocks of one output image."""

    def __init__(
        self, path: Path, height: int, width: int, channels: int, dtype: Any = np.uint8
    ) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.height, self.width, self.channels = height, width, channels
        self.dtype = np.dtype(dtype)

    def write(self, row0: int, block: np.ndarray) -> None:
        """Write the row block starting at ``row0``."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output: flush, then rename it into place."""
        raise NotImplementedError

    def abort(self) -> None:
        """Remove what was written."""
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


class PNGSink(Sink):
    """Assembles the image in memory and saves it with PIL on close."""

    def __init__(
        self, path: Path, height: int, width: int, channels: int, dtype: Any = np.uint8
    ) -> None:
        super().__init__(path, height, width, channels, dtype)
        shape = (height, width) if channels == 1 else (height, width, channels)
        self.array = np.zeros(shape, self.dtype)

    def write(self, row0: int, block: np.ndarray) -> None:
        """Write the row block starting at ``row0``."""
        self.array[row0 : row0 + block.shape[0]] = block

    def close(self) -> None:
        """Finish the output: flush, then rename it into place."""
        from PIL import Image

        Image.fromarray(self.array).save(self.partial, format="PNG")
        os.replace(self.partial, self.path)
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


_END = object()


class TiffSink(Sink):
    """Streams a tiled, deflate-compressed TIFF through tifffile in a writer thread.

    tifffile pulls tiles from an iterator, so a background thread runs ``TiffWriter.write``
    over a generator fed by a small bounded queue of 256-row bands: memory stays at a few
    bands and compression overlaps with inference.
    """

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        channels: int,
        extratags: Sequence = (),
        dtype: Any = np.uint8,
    ) -> None:
        super().__init__(path, height, width, channels, dtype)
        self.aligner = Aligner(BLOCK)
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
            big = self.height * self.width * self.channels * self.dtype.itemsize > 2**32 - 2**26
            with tifffile.TiffWriter(self.partial, bigtiff=big) as tiff:
                tiff.write(
                    self._tiles(),
                    shape=shape,
                    dtype=self.dtype,
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
        """Write the row block starting at ``row0``."""
        for _, band in self.aligner.push(block):
            self._put(band)

    def close(self) -> None:
        """Finish the output: flush, then rename it into place."""
        for _, band in self.aligner.flush():
            self._put(band)
        self._put(_END)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"{self.path}: TIFF writer failed: {self.error}") from self.error
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Remove what was written."""
        if self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.queue.put(None, timeout=5)
            self.thread.join(timeout=30)
        super().abort()


class RasterioSink(Sink):
    """GeoTIFF through rasterio with the input's CRS and transform (256x256 tiles, deflate)."""

    def __init__(
        self,
        path: Path,
        height: int,
        width: int,
        channels: int,
        crs: Any,
        transform: Any,
        dtype: Any = np.uint8,
    ) -> None:
        import rasterio

        super().__init__(path, height, width, channels, dtype)
        self.aligner = Aligner(BLOCK)
        self.dataset = rasterio.open(
            self.partial,
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=channels,
            dtype=self.dtype.name,
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
        """Write the row block starting at ``row0``."""
        from rasterio.windows import Window

        for start, band in self.aligner.push(block):
            data = band[None] if band.ndim == 2 else np.moveaxis(band, -1, 0)
            with gdal_env():
                self.dataset.write(data, window=Window(0, start, self.width, band.shape[0]))

    def close(self) -> None:
        """Finish the output: flush, then rename it into place."""
        from rasterio.windows import Window

        with gdal_env():
            for start, band in self.aligner.flush():
                data = band[None] if band.ndim == 2 else np.moveaxis(band, -1, 0)
                self.dataset.write(data, window=Window(0, start, self.width, band.shape[0]))
            self.dataset.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Remove what was written."""
        with contextlib.suppress(Exception):
            self.dataset.close()
        super().abort()


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
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(self.fd, height * self.row_bytes)
        except BaseException:
            self.remove()
            raise

    def write(self, row0: int, col0: int, block: np.ndarray) -> None:
        """Write a block whose top-left pixel is ``(row0, col0)``."""
        rows = np.ascontiguousarray(block, self.dtype).reshape(block.shape[0], -1)
        offset = row0 * self.row_bytes + col0 * self.channels * self.dtype.itemsize
        for number, row in enumerate(rows):
            if os.pwrite(self.fd, row, offset + number * self.row_bytes) != row.nbytes:
                raise OSError(f"{self.path}: short write (disk full?)")

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
