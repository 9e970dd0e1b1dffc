"""Per-band statistics of a shard build, and the band options (selection, true colour).

Workers never send an image's pixels back: each adds the *valid* train pixels (not
padding, not nodata in the image, not ignore in the mask) of one tile at a time
(:func:`tile_sums`) into a :class:`BandAccumulator`, and returns its :meth:`~BandAccumulator.sums`
for the image; the build adds those up in another accumulator:

* **integer bands** (uint8, uint16, int16): one value histogram per band (256 or 65536
  bins). Mean and population std are exact: the sums ``Σv`` and ``Σv²`` are taken in
  Python integers and divided once. The display range (2nd and 98th percentiles) is exact
  too: the smallest value whose cumulative count reaches ``q · N`` (numpy's
  ``inverted_cdf`` percentile).
* **float32 bands**: count, mean and sum of squared deviations in float64 per image
  (two-pass) per tile, merged across tiles and images with Chan's formula. Percentiles
  come from a deterministic subsample: every ``ceil(N / 16384)``-th of the N valid train
  pixels of each tile in row-major order, all tiles' samples together thinned to at most
  1,000,000 evenly spaced values (in build order), then ``inverted_cdf`` percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.data.build.output import BuildError
from engine.data.shards.normalize import BandStats, Normalization
from engine.data.sources.band_select import band_positions

#: Histogram bins and the offset added to a value to get its bin, per integer band type.
HISTOGRAM = {"uint8": (256, 0), "uint16": (65536, 0), "int16": (65536, 32768)}
DISPLAY_PERCENTILES = (2.0, 98.0)
FLOAT_SAMPLE_PER_TILE = 16384
FLOAT_SAMPLE_TOTAL = 1_000_000
#: Band names (lower case) that make a true-colour view when ``--rgb-bands`` is not given.
RGB_NAMES = (("red", "green", "blue"), ("b4", "b3", "b2"))


@dataclass
class BandSums:
    """What a tile or an image contributes to the statistics (no pixels but float samples).

    Attributes:
        dtype: The band type.
        count: Valid train pixels.
        histograms: Integer types: per band, ``(bins, counts)`` of the values present.
        moments: float32: ``[C, 2]`` float64 mean and sum of squared deviations.
        sample: float32: ``[n, C]`` deterministic subsample of the valid train pixels.
    """

    dtype: str
    count: int
    histograms: list[tuple[np.ndarray, np.ndarray]] | None = None
    moments: np.ndarray | None = None
    sample: np.ndarray | None = None


def tile_sums(pixels: np.ndarray) -> BandSums:
    """Summarise the ``[N, C]`` valid train pixels of one tile (native type)."""
    dtype = str(pixels.dtype)
    count = int(pixels.shape[0])
    if dtype in HISTOGRAM:
        bins, offset = HISTOGRAM[dtype]
        histograms = []
        for band in range(pixels.shape[1]):
            counts = np.bincount(pixels[:, band].astype(np.int64) + offset, minlength=bins)
            present = np.flatnonzero(counts)
            histograms.append((present, counts[present]))
        return BandSums(dtype, count, histograms=histograms)
    values = pixels.astype(np.float64)
    mean = values.mean(0) if count else np.zeros(pixels.shape[1])
    moments = np.stack([mean, ((values - mean) ** 2).sum(0)], 1)
    stride = max(1, math.ceil(count / FLOAT_SAMPLE_PER_TILE))
    return BandSums(dtype, count, moments=moments, sample=pixels[::stride].copy())


@dataclass
class BandAccumulator:
    """Adds up :class:`BandSums` (of tiles, or of images); :meth:`finish` gives the bands."""

    channels: int
    dtype: str
    count: int = 0
    _histogram: np.ndarray | None = None
    _moments: np.ndarray | None = None
    _samples: list[np.ndarray] = field(default_factory=list)

    def add(self, sums: BandSums) -> None:
        """Add the sums of a tile or image (of this accumulator's band type)."""
        if sums.count == 0:
            return
        if sums.histograms is not None:
            if self._histogram is None:
                self._histogram = np.zeros((self.channels, HISTOGRAM[self.dtype][0]), np.int64)
            for band, (present, counts) in enumerate(sums.histograms):
                self._histogram[band, present] += counts
        else:
            assert sums.moments is not None and sums.sample is not None
            if self._moments is None:
                self._moments = sums.moments.copy()
            else:  # Chan et al.: merge (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b)
                n_a, n_b = self.count, sums.count
                delta = sums.moments[:, 0] - self._moments[:, 0]
                total = n_a + n_b
                self._moments[:, 0] += delta * (n_b / total)
                self._moments[:, 1] += sums.moments[:, 1] + delta * delta * (n_a * n_b / total)
            self._samples.append(sums.sample)
        self.count += sums.count

    def sums(self) -> BandSums:
        """Everything added so far as one :class:`BandSums` (sparse histograms)."""
        if self._histogram is not None:
            present = [np.flatnonzero(counts) for counts in self._histogram]
            histograms = [(p, counts[p]) for p, counts in zip(present, self._histogram)]
            return BandSums(self.dtype, self.count, histograms=histograms)
        if self._moments is None:
            return BandSums(self.dtype, 0)
        sample = np.concatenate(self._samples)
        return BandSums(self.dtype, self.count, moments=self._moments.copy(), sample=sample)

    def finish(self, names: Sequence[str], nodata: float | None) -> tuple[BandStats, ...]:
        """The bands' statistics (``nodata`` recorded on every band).

        Raises:
            BuildError: when no valid train pixel was seen.
        """
        if self.count == 0:
            raise BuildError(
                "the train split is empty (or all its pixels are nodata or ignore): lower "
                "--val/--test or add groups"
            )
        if self._histogram is not None:
            stats = [self._integer_band(band) for band in range(self.channels)]
        else:
            stats = self._float_bands()
        return tuple(
            BandStats(name, self.dtype, mean, std, display, nodata)
            for name, (mean, std, display) in zip(names, stats, strict=True)
        )

    def _integer_band(self, band: int) -> tuple[float, float, tuple[float, float]]:
        assert self._histogram is not None
        _, offset = HISTOGRAM[self.dtype]
        counts = self._histogram[band]
        present = np.flatnonzero(counts)
        values = (present - offset).tolist()
        weights = counts[present].tolist()
        n = self.count
        total = sum(v * c for v, c in zip(values, weights))  # Python ints: exact
        squares = sum(v * v * c for v, c in zip(values, weights))
        mean = total / n
        std = math.sqrt((n * squares - total * total) / (n * n))
        cumulative = np.cumsum(counts[present])
        display = tuple(
            float(values[int(np.searchsorted(cumulative, q / 100.0 * n, side="left"))])
            for q in DISPLAY_PERCENTILES
        )
        return mean, std, display  # type: ignore[return-value]

    def _float_bands(self) -> list[tuple[float, float, tuple[float, float]]]:
        assert self._moments is not None
        sample = np.concatenate(self._samples)
        if len(sample) > FLOAT_SAMPLE_TOTAL:
            sample = sample[np.linspace(0, len(sample) - 1, FLOAT_SAMPLE_TOTAL).astype(np.int64)]
        low, high = np.percentile(sample, DISPLAY_PERCENTILES, axis=0, method="inverted_cdf")
        return [
            (float(mean), math.sqrt(max(m2, 0.0) / self.count), (float(lo), float(hi)))
            for (mean, m2), lo, hi in zip(self._moments.tolist(), low.tolist(), high.tolist())
        ]


def check_band_options(
    bands: object, band_files: object, nodata: object, rgb_bands: object
) -> None:
    """Reject malformed ``--bands``, ``--band-files``, ``--nodata``, ``--rgb-bands`` values.

    Raises:
        BuildError: naming the option and its value.
    """
    for name, value in (("--bands", bands), ("--band-files", band_files)):
        if value is not None and (
            not isinstance(value, tuple)
            or not value
            or not all((isinstance(v, int) and v >= 1) or (isinstance(v, str) and v) for v in value)
        ):
            raise BuildError(f"{name} {value!r}: give band names or 1-based band indices")
    if isinstance(band_files, tuple) and not all(isinstance(v, str) for v in band_files):
        raise BuildError(f"--band-files {band_files!r}: give band names, not indices")
    if nodata is not None and (not isinstance(nodata, (int, float)) or isinstance(nodata, bool)):
        raise BuildError(f"--nodata {nodata!r}: must be a number or nan")
    if rgb_bands is not None and not isinstance(rgb_bands, (str, tuple)):
        raise BuildError(f"--rgb-bands {rgb_bands!r}: give 3 bands or 'none'")


def resolve_rgb(
    option: tuple[int | str, ...] | str | None, names: Sequence[str], dtype: str, where: str
) -> tuple[int, int, int] | None:
    """The ``rgb_bands`` of a build: positions among the stored bands, or ``None``.

    Args:
        option: ``--rgb-bands``: 3 names or 1-based positions among the stored bands,
            ``"none"``, or ``None`` for the default: bands named red/green/blue (any case),
            else Sentinel-2 ``B4, B3, B2``, else the 3 bands of a 3-band uint8 image.
        names: The stored bands' names, in order.
        dtype: Their type.
        where: The file named in errors.

    Raises:
        BuildError: when a band is not there or the option does not list 3 bands.
    """
    if isinstance(option, str):
        if option.lower() != "none":
            raise BuildError(f"--rgb-bands {option!r}: give 3 bands or 'none'")
        return None
    if option is not None:
        if len(option) != 3:
            raise BuildError(f"--rgb-bands {option!r}: give exactly 3 bands (red, green, blue)")
        a, b, c = band_positions(option, names, f"{where}: --rgb-bands", error=BuildError)
        return a, b, c
    lower = [name.lower() for name in names]
    for wanted in RGB_NAMES:
        if all(name in lower for name in wanted):
            a, b, c = (lower.index(name) for name in wanted)
            return a, b, c
    if len(names) == 3 and dtype == "uint8":
        return 0, 1, 2
    return None


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


class BuildBands:
    """The bands of a build: every image must have the same band count and type.

    Images whose band names differ (other colour-interpretation tags, other descriptions)
    are matched by position and the manifest records the first image's names; one line
    says so. The same names in another order are an error (``--bands`` orders them).
    Call :meth:`add` with each image's result, then :meth:`normalization`.
    """

    def __init__(self) -> None:
        self.first: str | None = None
        self.names: tuple[str, ...] = ()
        self.dtype = ""
        self.nodata: float | None = None
        self.mixed_nodata = False
        self.accumulator: BandAccumulator | None = None
        self.renamed: list[tuple[str, tuple[str, ...]]] = []  # images matched by position
        self.alpha_notes: list[tuple[str, ...]] = []  # per image: bands tagged alpha kept

    def add(
        self,
        image: str,
        names: tuple[str, ...],
        dtype: str,
        nodata: float | None,
        sums: BandSums,
        notes: Sequence[str] = (),
    ) -> None:
        """Check one image's bands against the first image's and add its sums.

        Raises:
            BuildError: naming the image whose band count or type differs, or whose bands
                are the first image's in another order.
        """
        if self.accumulator is None:
            self.first, self.names, self.dtype, self.nodata = image, names, dtype, nodata
            self.accumulator = BandAccumulator(len(names), dtype)
        elif (len(names), dtype) != (len(self.names), self.dtype):
            alpha = [*notes, *(self.alpha_notes[0] if self.alpha_notes else ())][:1]
            raise BuildError(
                f"{image}: {len(names)} {dtype} bands ({', '.join(names)}) differ from "
                f"{self.first}'s {len(self.names)} {self.dtype} bands ({', '.join(self.names)}); "
                "every image of a build needs the same number and type of bands (see --bands)"
                + "".join(f"; note: {line}" for line in alpha)
            )
        elif names != self.names:
            lower, first = [n.lower() for n in names], [n.lower() for n in self.names]
            if lower != first and sorted(lower) == sorted(first):
                raise BuildError(
                    f"{image}: bands {', '.join(names)} are {self.first}'s "
                    f"({', '.join(self.names)}) in another order; give the order with --bands"
                )
            self.renamed.append((image, names))
        if notes:
            self.alpha_notes.append(tuple(notes))
        if not _same_nodata(nodata, self.nodata):  # the first image's is its own
            self.mixed_nodata = True
        self.accumulator.add(sums)

    def notes(self) -> list[str]:
        """One line each: bands tagged alpha kept as data, images matched by position."""
        lines = []
        if self.alpha_notes:
            *first, last = self.alpha_notes[0]
            more = len(self.alpha_notes) - 1
            lines += [*first, last + (f" (and in {more} more image(s))" if more else "")]
        if self.renamed:
            image, names = self.renamed[0]
            more = len(self.renamed) - 1
            lines.append(
                f"{image}: band names ({', '.join(names)}) differ from {self.first}'s "
                f"({', '.join(self.names)}), same count and type"
                + (f", as in {more} more image(s)" if more else "")
                + f": matched by position; dataset.json records {self.first}'s names"
            )
        return lines

    def normalization(
        self,
        rgb_option: tuple[int | str, ...] | str | None,
        warn: Callable[[str], None] | None = None,
    ) -> Normalization:
        """The build's per-band statistics and true-colour bands.

        Each line of :meth:`notes` goes to ``warn`` first. ``nodata`` is the value the
        images share (``None``, with a warning, when they differ: their nodata pixels are
        ignore in the masks all the same); float bands without one record NaN, which is
        never a valid pixel.

        Raises:
            BuildError: when no valid train pixel was seen, or ``--rgb-bands`` does not fit.
        """
        assert self.accumulator is not None and self.first is not None
        if warn is not None:
            for line in self.notes():
                warn(line)
        nodata = None if self.mixed_nodata else self.nodata
        if self.mixed_nodata and warn is not None:
            warn(
                f"images have different nodata values ({self.first}: {self.nodata}); "
                "dataset.json records none (pass --nodata to use one value for all)"
            )
        if nodata is None and self.dtype == "float32":
            nodata = math.nan
        bands = self.accumulator.finish(self.names, nodata)
        return Normalization(bands, resolve_rgb(rgb_option, self.names, self.dtype, self.first))
