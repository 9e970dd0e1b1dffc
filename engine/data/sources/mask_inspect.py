"""Mask inspection: find how masks are encoded and which values occur, then draft a classes file.

The original project's ``get_palette``, made useful: every distinct colour or value with
its pixel count, its share and the number of files it occurs in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.processes import parallel_map
from engine.data.sources.classes import DEFAULT_PALETTE, format_color, parse_color
from engine.data.sources.formats import read_by_gdal
from engine.data.sources.imageio import read_mask_values
from engine.data.sources.pictures import ImageReadError

DISTINCT_DELTA_E = 20.0  # the masks' own colours are kept when every two differ this much


def to_lab(colors: list[str]) -> np.ndarray:
    """CIELAB (D65) of ``"#RRGGBB"`` colours, float64 ``[N, 3]``."""
    rgb = np.array([parse_color(c) for c in colors], np.float64).reshape(-1, 3) / 255.0
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ to_xyz.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def min_color_distance(colors: list[str]) -> float:
    """The smallest CIE76 ΔE between any two of ``colors`` (inf for fewer than two)."""
    lab = to_lab(colors)
    if len(lab) < 2:
        return float("inf")
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return float(distances[np.triu_indices(len(lab), 1)].min())


@dataclass(frozen=True)
class ValueStats:
    """How often one mask value occurs."""

    value: int
    pixels: int
    files: int


@dataclass
class MaskReport:
    """What :func:`inspect_masks` found.

    Attributes:
        encoding: ``"rgb"`` or ``"index"``.
        kinds: How many files of each storage kind (``rgb``, ``palette``, ``single-band 8``...).
        values: Every value with pixel and file counts, most frequent first.
        palette: For palette-only index masks, value → ``#RRGGBB`` from the files' palette.
        num_files: Number of masks read.
    """

    encoding: str
    kinds: dict[str, int]
    values: list[ValueStats]
    palette: dict[int, str]
    num_files: int

    @property
    def total_pixels(self) -> int:
        """All mask pixels read."""
        return sum(item.pixels for item in self.values)

    def describe(self, value: int) -> str:
        """Render a value as ``#RRGGBB`` (rgb) or an integer (index)."""
        if self.encoding == "rgb":
            return format_color(((value >> 16) & 255, (value >> 8) & 255, value & 255))
        return str(value)

    def table(self) -> str:
        """A plain-text table of values, pixel counts, shares and file counts."""
        total = max(self.total_pixels, 1)
        lines = [f"{'value':>9}  {'pixels':>12}  {'share':>7}  {'files':>5}"]
        for item in self.values:
            share = 100.0 * item.pixels / total
            value = self.describe(item.value)
            lines.append(f"{value:>9}  {item.pixels:>12,}  {share:6.2f}%  {item.files:>5}")
        return "\n".join(lines)


def _storage_kind(path: Path) -> tuple[str, dict[int, str]]:
    """Classify how a mask file stores its values, and return its palette if it has one."""
    if read_by_gdal(path):
        from engine.data.sources.rasters import RasterError, _open_dataset

        try:
            with _open_dataset(path) as src:
                bands, dtype = src.count, src.dtypes[0]
        except RasterError as error:
            raise ImageReadError(str(error)) from error
        return ("rgb" if bands >= 3 else f"single-band {dtype}"), {}
    try:
        with Image.open(path) as image:
            mode = image.mode
            palette = image.getpalette() if mode == "P" else None
    except (OSError, SyntaxError) as error:
        raise ImageReadError(f"{path}: cannot open mask: {error}") from error
    if mode == "P":
        colours = np.array(palette, dtype=np.int64).reshape(-1, 3) if palette else np.zeros((0, 3))
        return "palette", {i: format_color(c) for i, c in enumerate(colours)}
    if mode in ("RGB", "RGBA"):
        return "rgb", {}
    return f"single-band {mode}", {}


def _count_values(args: tuple[Path, str]) -> dict[int, int]:
    path, encoding = args
    values, counts = np.unique(read_mask_values(path, encoding), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def inspect_masks(paths: list[Path], workers: int = 1) -> MaskReport:
    """Detect the mask encoding and count every distinct value over ``paths``.

    Colour masks (any 3-band file) make the encoding ``rgb``; palette files among them are
    read as colours. Palette-only or single-band sets are ``index`` (palette indices or
    stored integers are the values; a palette gives the draft colours).

    Raises:
        ImageReadError: naming a file that cannot be read.
        ValueError: when ``paths`` is empty.
    """
    if not paths:
        raise ValueError("no mask files to inspect")
    kinds: Counter[str] = Counter()
    palette: dict[int, str] = {}
    for path in paths:
        kind, file_palette = _storage_kind(path)
        kinds[kind] += 1
        palette = palette or file_palette
    encoding = "rgb" if kinds["rgb"] else "index"
    pixels: Counter[int] = Counter()
    files: Counter[int] = Counter()
    jobs = [(Path(p), encoding) for p in paths]
    for counts in parallel_map(_count_values, jobs, workers):
        pixels.update(counts)
        files.update(counts.keys())
    values = [ValueStats(v, pixels[v], files[v]) for v in pixels]
    values.sort(key=lambda item: (-item.pixels, item.value))
    return MaskReport(
        encoding, dict(kinds), values, palette if encoding == "index" else {}, len(paths)
    )


def draft_classes_yaml(report: MaskReport) -> str:
    """Write a draft classes file for the user to edit (names, ignore values).

    RGB values are listed most frequent first; index values in numeric order (they are
    usually class indices already). Display colours are the masks' own (rgb values or a
    palette file's colours) when every two differ by at least 20 ΔE, else
    :data:`DEFAULT_PALETTE` in order (grey-coded masks would give near-identical greys).
    """
    total = max(report.total_pixels, 1)
    ordered = report.values
    if report.encoding == "index":
        ordered = sorted(report.values, key=lambda item: item.value)
    own = [
        report.describe(item.value) if report.encoding == "rgb" else report.palette.get(item.value)
        for item in ordered
    ]
    distance = min_color_distance([c for c in own if c]) if all(own) else 0.0
    if distance >= DISTINCT_DELTA_E:
        colors, note = own, "the masks' own colours"
    else:
        colors = [DEFAULT_PALETTE[n % len(DEFAULT_PALETTE)] for n in range(len(ordered))]
        note = "a colour-blind-safe palette" + (
            f" (the masks' own colours are too alike: ΔE {distance:.0f} < {DISTINCT_DELTA_E:g})"
            if all(own)
            else ""
        )
    lines = [
        f"# Draft classes file: {report.num_files} masks, encoding {report.encoding}.",
        f"# Colours (for rendering only): {note}.",
        "# Edit the names. Mark no-data / unlabeled values with `ignore: true` (they become 255).",
        "# Class index = order of the non-ignored entries. `value` may be a list to merge values.",
        f"encoding: {report.encoding}",
        "classes:",
    ]
    for number, item in enumerate(ordered):
        if report.encoding == "rgb":
            value = f'"{report.describe(item.value)}"'
        else:
            value = str(item.value)
        color = f'"{colors[number]}"'
        share = 100.0 * item.pixels / total
        hint = "; negative: often no data (ignore: true?)" if item.value < 0 else ""
        if report.encoding == "rgb":
            hint = ""
        lines.append(
            f"  - {{name: class_{number}, value: {value}, color: {color}}}"
            f"  # {share:.2f} % of pixels, in {item.files} files{hint}"
        )
    return "\n".join(lines) + "\n"
