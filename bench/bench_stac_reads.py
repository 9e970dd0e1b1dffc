"""Windowed reads of remote COGs: bytes on the wire against the compressed tiles the windows need.

STAC assets are COGs read over HTTP by windows (``/vsicurl/``), never downloaded whole. This
bench writes a few multi-band COGs (DEFLATE, internal tiles, overviews), serves them from a
loopback HTTP server with ``Range`` support that counts every byte it sends, reads random
windows at full resolution through rasterio, and compares:

- ``wire_bytes``: all bytes the server sent (status lines, headers and bodies);
- ``needed_bytes``: the compressed bytes of the distinct full-resolution tiles the windows
  overlap (``TileByteCounts`` of the TIFF, read through GDAL's ``BLOCK_SIZE_x_y``
  metadata), the least any reader of those windows must fetch;
- ``header_bytes``: each file's header region (everything before its first tile: the TIFF
  header, IFDs and the overviews' tile arrays, which a COG puts first), which a reader
  needs to open it, of which GDAL reads a prefix (16 KiB by default);
- ``ratio`` = wire / needed (the goal: near 1, at most 1.5) and ``file_bytes`` (what a
  download of the whole files would cost).

Two contenders read the same windows, each in a fresh process through its own server (cold
caches): terraseg's settings for remote rasters (its 32 MiB GDAL block cache, no directory
listing), and the same with a block cache that holds every decoded tile. Random windows
are the worst case for the first: a tile evicted from the block cache is fetched again
when a later window needs it, and those bytes count. Every window read over HTTP is
compared with the same window read from the local file.

    python bench/bench_stac_reads.py              # 3 COGs of 4 x 4096² uint16, tiles 512
    python bench/bench_stac_reads.py --quick      # 2 COGs of 4 x 1024², tiles 256
"""

from __future__ import annotations

import functools
import http.server
import math
import multiprocessing
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import base_parser, environment, print_table, setup, write_results  # noqa: E402

from engine.data.sources.raster_base import GDAL_CACHE_BYTES  # noqa: E402

#: GDAL settings per contender: terraseg's remote reads (no directory listing, the 32 MiB
#: block cache of its raster readers), and the same with a block cache that keeps every
#: tile decoded. (A larger ``/vsicurl/`` region cache, ``CPL_VSIL_CURL_CACHE_SIZE`` or
#: ``VSI_CACHE``, changed nothing here: GDAL 3.10 fetches a COG's tiles by ranged reads
#: that bypass it, and keeps them only as decoded blocks.)
CONTENDERS: dict[str, dict[str, Any]] = {
    "terraseg settings": {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_CACHEMAX": GDAL_CACHE_BYTES,
    },
    "GDAL_CACHEMAX 1 GiB": {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_CACHEMAX": 2**30,
    },
}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class CountingRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single ``Range`` requests (206) and counts every byte it writes."""

    counter: dict[str, int]  # set on the subclass made per server
    lock: threading.Lock
    protocol_version = "HTTP/1.1"  # keep-alive, as object stores serve
    _remaining: int | None = None

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        raw_write, counter, lock = self.wfile.write, self.counter, self.lock

        def counted(data: bytes) -> int:
            with lock:
                counter["wire_bytes"] += len(data)
            return raw_write(data)

        self.wfile.write = counted  # type: ignore[method-assign]

    def _count(self, key: str, value: int = 1) -> None:
        with self.lock:
            self.counter[key] += value

    def send_head(self):  # type: ignore[no-untyped-def]
        self._remaining = None
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        self._count(f"{self.command.lower()}_requests")
        if not header or not path.is_file():
            return super().send_head()
        match = _RANGE.match(header.strip())
        size = path.stat().st_size
        if not match or not any(match.groups()):
            self._count("unsupported_ranges")  # e.g. multi-range: served whole, and counted
            return super().send_head()
        first, last = match.groups()
        start = int(first) if first else max(0, size - int(last))
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size or end < start:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        handle = path.open("rb")
        handle.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        while remaining > 0:
            chunk = source.read(min(remaining, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        self._count("body_bytes", self._remaining - remaining)


@contextmanager
def counting_server(folder: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve ``folder`` on 127.0.0.1; yields the URL and the live byte and request counts."""
    counter = dict.fromkeys(
        ("wire_bytes", "body_bytes", "get_requests", "head_requests", "unsupported_ranges"), 0
    )
    handler = type(
        "Handler",
        (CountingRangeHandler,),
        {"counter": counter, "lock": threading.Lock()},
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()


def write_cog(path: Path, size: int, bands: int, block: int, seed: int) -> None:
    """A COG of smooth fields plus sensor-like noise (uint16; DEFLATE, predictor 2)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, bands, size // 64 + 1, size // 64 + 1, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    noise = torch.randn(bands, size, size, generator=generator) * 0.01
    pixels = ((smooth + noise).clamp(0, 1) * 4000 + 500).to(torch.int32).numpy().astype(np.uint16)
    profile = dict(
        driver="COG",
        width=size,
        height=size,
        count=bands,
        dtype="uint16",
        crs="EPSG:32640",
        transform=from_origin(300_000 + seed * size * 10, 2_800_000, 10, 10),
        BLOCKSIZE=block,
        COMPRESS="DEFLATE",
        PREDICTOR=2,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)


def tile_bytes(path: Path) -> tuple[dict[tuple[int, int], int], int]:
    """``(row, col) -> compressed bytes`` of the full-resolution tiles, and the header size.

    Byte counts come from GDAL's TIFF metadata (``BLOCK_SIZE_x_y``/``BLOCK_OFFSET_x_y``),
    summed over bands when the file is band-interleaved. The header is everything before
    the first tile of any level (a COG puts its IFDs first, then the overviews' tiles).
    """
    sizes: dict[tuple[int, int], int] = {}
    first_tile = math.inf
    with rasterio.open(path) as src:
        rows, cols = src.block_shapes[0]
        band_interleaved = src.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND"
        for row in range(math.ceil(src.height / rows)):
            for col in range(math.ceil(src.width / cols)):
                total = 0
                for bidx in range(1, src.count + 1 if band_interleaved else 2):
                    total += int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=bidx))
                    offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=bidx))
                    first_tile = min(first_tile, offset)
                sizes[(row, col)] = total
        for level in range(len(src.overviews(1))):
            offset = src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=level)
            first_tile = min(first_tile, int(offset))
    return sizes, int(first_tile)


def tiles_of(window: Window, block: tuple[int, int]) -> set[tuple[int, int]]:
    """The ``(row, col)`` tiles a window overlaps."""
    rows = range(window.row_off // block[0], (window.row_off + window.height - 1) // block[0] + 1)
    cols = range(window.col_off // block[1], (window.col_off + window.width - 1) // block[1] + 1)
    return {(r, c) for r in rows for c in cols}


def read_windows(
    folder: Path, files: list[Path], settings: dict[str, Any], args: Any
) -> dict[str, Any]:
    """Serve ``folder`` and read ``args.reads`` random windows of ``files`` through it.

    A new server (a new URL) per call, so GDAL's cache of fetched ranges starts cold.
    Returns the server's counts, the needed tile bytes and the per-window record.
    """
    rng = np.random.default_rng(args.seed)
    needed: set[tuple[int, int, int]] = set()
    layouts = [tile_bytes(path) for path in files]
    per_read_ratio, seconds, reads = [], 0.0, []
    with counting_server(folder) as (url, counter), rasterio.Env(**settings):
        remote = [rasterio.open(f"/vsicurl/{url}/{path.name}") for path in files]
        local = [rasterio.open(path) for path in files]
        open_bytes = counter["wire_bytes"]
        try:
            for _ in range(args.reads):
                index = int(rng.integers(len(files)))
                src = remote[index]
                row, col = (int(v) for v in rng.integers(0, args.size - args.window + 1, 2))
                window = Window(col, row, args.window, args.window)
                fresh = {(index, *t) for t in tiles_of(window, src.block_shapes[0])} - needed
                before, start = counter["wire_bytes"], time.perf_counter()
                pixels = src.read(window=window)
                seconds += time.perf_counter() - start
                if not np.array_equal(pixels, local[index].read(window=window)):
                    raise AssertionError(f"window {window} of {files[index].name} differs")
                needed |= fresh
                fresh_bytes = sum(layouts[i][0][(r, c)] for i, r, c in fresh)
                wire = counter["wire_bytes"] - before
                reads.append([index, row, col, len(fresh), fresh_bytes, wire])
                if fresh_bytes:
                    per_read_ratio.append(wire / fresh_bytes)
        finally:
            for dataset in remote + local:
                dataset.close()
        counts = dict(counter)
    needed_bytes = sum(layouts[i][0][(r, c)] for i, r, c in needed)
    file_bytes = sum(path.stat().st_size for path in files)
    return {
        "wire_bytes": counts["wire_bytes"],
        "body_bytes": counts["body_bytes"],
        "needed_bytes": needed_bytes,
        "ratio": counts["wire_bytes"] / needed_bytes,
        "file_bytes": file_bytes,
        "wire_fraction_of_files": counts["wire_bytes"] / file_bytes,
        "open_bytes": open_bytes,
        "header_bytes": sum(header for _, header in layouts),
        "tiles_needed": len(needed),
        "tiles_total": sum(len(sizes) for sizes, _ in layouts),
        "get_requests": counts["get_requests"],
        "head_requests": counts["head_requests"],
        "unsupported_ranges": counts["unsupported_ranges"],
        "per_read_ratio_median": float(np.median(per_read_ratio)) if per_read_ratio else None,
        "per_read_ratio_max": float(np.max(per_read_ratio)) if per_read_ratio else None,
        "windows_per_s": args.reads / seconds if seconds else None,
        "reads": reads,  # [file, row, col, new tiles, their bytes, wire bytes] per window
    }


def main() -> int:
    """Write the COGs, read windows per contender, write the JSON and print a table."""
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, help="COGs (default 3; --quick 2)")
    parser.add_argument("--size", type=int, help="pixels per side (default 4096; --quick 1024)")
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--block", type=int, help="COG tile side (default 512; --quick 256)")
    parser.add_argument("--window", type=int, default=256, help="side of a read window")
    parser.add_argument("--reads", type=int, help="windows read (default 48; --quick 12)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = setup(args)
    quick = args.quick
    args.files = args.files or (2 if quick else 3)
    args.size = args.size or (1024 if quick else 4096)
    args.block = args.block or (256 if quick else 512)
    args.reads = args.reads or (12 if quick else 48)
    env = environment(device)
    with tempfile.TemporaryDirectory(prefix="terraseg-stac-reads-") as work:
        folder = Path(work)
        files = [folder / f"scene{i}.tif" for i in range(args.files)]
        for seed, path in enumerate(files):
            write_cog(path, args.size, args.bands, args.block, seed)
        results = {}
        for name, settings in CONTENDERS.items():
            # A fresh process per contender: GDAL reads its cache sizes once per process.
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                results[name] = pool.submit(read_windows, folder, files, settings, args).result()
    config = {key: getattr(args, key) for key in ("files", "size", "bands", "block", "window")}
    config |= {"reads": args.reads, "seed": args.seed, "quick": quick, "gdal": CONTENDERS}
    config["gdal_version"] = rasterio.__gdal_version__
    payload = {"name": "bench_stac_reads", "env": env, "config": config, "results": results}
    path = write_results("bench_stac_reads", payload, args.out)
    mib = 2**20
    print_table(
        f"{args.reads} windows of {args.window}² from {args.files} COGs of {args.bands} x "
        f"{args.size}² uint16 (tiles {args.block}², DEFLATE) over loopback HTTP",
        ["GDAL", "wire MiB", "needed MiB", "ratio", "files MiB", "wire/files", "GETs"],
        [
            [
                name,
                r["wire_bytes"] / mib,
                r["needed_bytes"] / mib,
                r["ratio"],
                r["file_bytes"] / mib,
                r["wire_fraction_of_files"],
                r["get_requests"],
            ]
            for name, r in results.items()
        ],
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
