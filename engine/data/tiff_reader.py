"""TIFF through tifffile, for machines without rasterio.

Never decodes more than the requested rows. Uncompressed contiguous images are read with
positional file reads of exactly the requested rows (no persistent memory map, so pages read
do not accumulate in the process's resident memory); striped or tiled images decode only the
strips/tiles that intersect the window. Limits: first page only (the full-resolution level of
a COG); compressions need tifffile's codecs (deflate and LZMA work out of the box; LZW, JPEG,
PackBits, ZSTD need ``imagecodecs`` — the error says so); planar-separate works; palette
(colormap) and 1-bit images are rejected. GeoTIFF tags are carried to the outputs so
georeferencing survives without rasterio.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.raster_base import GEOTIFF_TAGS, RasterError, RasterReader, pread_exact


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
        try:
            if self._contiguous:
                return self._read_contiguous(row0, row1, col0, col1)
            return self._read_segments(row0, row1, col0, col1)
        except (OSError, ValueError) as error:  # a truncated file, or a header that lies
            raise RasterError(
                f"{self.path}: cannot read rows {row0}:{row1} (truncated or corrupt?): {error}"
            ) from error

    def _read_rows(self, first: int, rows: int, row_items: int, col0: int, col1: int) -> bytes:
        """Items ``[col0, col1)`` of ``rows`` rows of ``row_items`` items from item ``first``."""
        item = self._file_dtype.itemsize
        if col1 - col0 == row_items:  # whole rows: one read
            return pread_exact(self._fd, rows * row_items * item, self._offset + first * item)
        return b"".join(
            pread_exact(
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
