"""Build webdataset shards from image/mask pairs (the format is specified in shards/README.md).

The build is reproducible (same inputs and seed → byte-identical shards) and atomic: it
writes into a temporary sibling folder and renames it into place only when everything
succeeded, so a failed build leaves no ``*.tar`` behind. The file-system rules (what
``--overwrite`` may replace, the lock, killed builds, full disks, worker processes) are in
:mod:`engine.data.build.output`.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from engine.data.build.advice import (
    coverage_warnings,
    padding_warnings,
    print_warning,
    split_warnings,
)
from engine.data.build.footprints import read_footprints
from engine.data.build.options import BuildOptions
from engine.data.build.output import BuildError, BuildOutput, ShardTar
from engine.data.build.sources import read_pair
from engine.data.build.splits import (
    PairSplit,
    flat_folder_warning,
    groups_by_split,
    image_sizes,
    parse_split_by,
    plan_splits,
)
from engine.data.build.statistics import (
    BandAccumulator,
    BandSums,
    BuildBands,
    check_band_options,
    tile_sums,
)
from engine.data.build.tiling import tile_windows, train_window_start
from engine.data.build.upload import ShardUploader, build_to_url
from engine.data.processes import parallel_map
from engine.data.shards.codecs import IMAGE_CODECS, encode_image, mask_codec_for
from engine.data.shards.manifest import FORMAT_VERSION, MANIFEST_NAME, SPLITS, shard_name
from engine.data.shards.store import is_url
from engine.data.sources.classes import IGNORE_INDEX, ClassesFile
from engine.data.sources.pairing import Pair, check_member_keys, safe_key

if TYPE_CHECKING:
    pass

MEMBER_EXT = {"png": "png", "jpg": "jpg", "webp": "webp", "npy": "npy"}


@dataclass
class _Sample:
    split: str
    key: str
    image: bytes
    mask: bytes
    meta: bytes


@dataclass
class _PairResult:
    image: str
    bands: tuple[str, ...]
    dtype: str
    nodata: float | None
    samples: list[_Sample]
    sums: BandSums  # of the valid (mask not ignore) non-padding pixels of train tiles
    class_pixels: dict[str, np.ndarray]  # split → int64 [num_classes + 1], last = ignore
    note: str | None  # a line for the user (a mask resampled onto the image's grid)
    band_notes: tuple[str, ...]  # the reader's lines (bands tagged alpha kept as data)


@dataclass
class _SplitWriter:
    """Writes one split's samples into consecutive deterministic tars."""

    folder: Path
    split: str
    limit: int
    image_ext: str
    mask_ext: str
    mix: int  # samples held back and written in seeded random order
    rng: random.Random
    done: Callable[[Path], None] | None = None  # gets each tar once full or finished (uploads)
    shards: list[str] = field(default_factory=list)
    shard_samples: list[int] = field(default_factory=list)
    shard_sha256: list[str] = field(default_factory=list)  # of each closed tar, as written
    shard_bytes: list[int] = field(default_factory=list)
    _tar: ShardTar | None = None
    _held: list[_Sample] = field(default_factory=list)

    def add(self, sample: _Sample) -> None:
        """Queue a sample; once more than ``mix`` wait, write a random one of them."""
        self._held.append(sample)
        if len(self._held) > self.mix:
            index = self.rng.randrange(len(self._held))
            self._held[index], self._held[-1] = self._held[-1], self._held[index]
            self._write(self._held.pop())

    def finish(self) -> None:
        """Write what is held back, in random order, and close the last tar."""
        self.rng.shuffle(self._held)
        for sample in self._held:
            self._write(sample)
        self._held.clear()
        self.close()

    def _write(self, sample: _Sample) -> None:
        if self._tar is None:
            name = shard_name(self.split, len(self.shards))
            self.shards.append(name)
            self.shard_samples.append(0)
            self._tar = _open_tar(self.folder / name)
        for suffix, data in (
            (f"image.{self.image_ext}", sample.image),
            (f"mask.{self.mask_ext}", sample.mask),
            ("meta.json", sample.meta),
        ):
            self._tar.add(f"{sample.key}.{suffix}", data)
        self.shard_samples[-1] += 1
        if self.shard_samples[-1] >= self.limit:
            self.close()

    def close(self, complete: bool = True) -> None:
        """Close the open tar; a ``complete`` one (not after an error) goes to ``done``."""
        if self._tar is not None:
            tar, self._tar = self._tar, None
            digest, size = tar.close()
            self.shard_sha256.append(digest)
            self.shard_bytes.append(size)
            if complete and self.done is not None:
                self.done(self.folder / self.shards[-1])


def _open_tar(path: Path) -> ShardTar:
    """Create one shard tar (a seam the full-disk test replaces)."""
    return ShardTar(path)


def _member_key(key: str, row: int, col: int) -> str:
    return f"{safe_key(key)}/r{row:05d}_c{col:05d}"


def _process_pair(args: tuple[Pair, PairSplit, ClassesFile, BuildOptions]) -> _PairResult:
    pair, pair_split, classes, options = args
    image, mask, names, nodata, note, band_notes = read_pair(pair, classes, options)
    bands, dtype = image.shape[2], str(image.dtype)
    num_classes = len(classes.classes)
    samples: list[_Sample] = []
    class_pixels: dict[str, np.ndarray] = {}
    stats = BandAccumulator(bands, dtype)
    tile = options.tile
    size = (image.shape[0], image.shape[1])
    split_at = partial(pair_split.at, tile=tile)
    for row, col, height, width in tile_windows(*size, tile):
        split = pair_split.at(row, col, tile)
        # The grid cell's own pixels are counted; the stored tile may reach back over a
        # neighbour's (engine.data.build.tiling.train_window_start), whose pixels that
        # neighbour counts.
        window = mask[row : row + height, col : col + width]
        counts = np.bincount(np.minimum(window, num_classes).ravel(), minlength=num_classes + 1)
        class_pixels[split] = class_pixels.get(split, 0) + counts.astype(np.int64)
        if split == "train":
            pixels = image[row : row + height, col : col + width][window != IGNORE_INDEX]
            stats.add(tile_sums(pixels))
            row, col = train_window_start(row, col, size, tile, split_at)
            height, width = min(tile, size[0] - row), min(tile, size[1] - col)
        image_tile = np.zeros((tile, tile, bands), image.dtype)
        mask_tile = np.full((tile, tile), IGNORE_INDEX, np.uint8)
        image_tile[:height, :width] = image[row : row + height, col : col + width]
        mask_tile[:height, :width] = mask[row : row + height, col : col + width]
        meta = {
            "key": pair.key,
            "image": getattr(pair, "source", "") or str(pair.image),  # a STAC item: its href
            "mask": str(pair.mask),
            "group": pair.group,
            "split": split,
            "window": {"row": row, "col": col, "height": height, "width": width},
            "source_size": {"height": image.shape[0], "width": image.shape[1]},
        }
        samples.append(
            _Sample(
                split=split,
                key=_member_key(pair.key, row, col),
                image=encode_image(image_tile, options.image_codec, options.jpeg_quality),
                mask=encode_image(mask_tile, mask_codec_for(options.image_codec)),
                meta=json.dumps(meta, sort_keys=True).encode(),
            )
        )
    return _PairResult(
        str(pair.image), tuple(names), dtype, nodata, samples, stats.sums(), class_pixels, note,
        band_notes,
    )  # fmt: skip


def _results(jobs: list, workers: int) -> Generator[_PairResult, None, None]:
    """Results of the jobs in order; closing the iterator terminates the worker processes."""
    return parallel_map(_process_pair, jobs, workers)


def check_options(options: BuildOptions) -> None:
    """Reject settings that cannot build (one line each, naming the option).

    Raises:
        BuildError: naming the option and its value.
    """
    if options.image_codec not in IMAGE_CODECS:
        raise BuildError(f"unknown image codec {options.image_codec!r}; choose from {IMAGE_CODECS}")
    if options.unknown not in ("error", "ignore"):
        raise BuildError(f"--unknown must be 'error' or 'ignore', not {options.unknown!r}")
    for name, value, low in (
        ("--tile", options.tile, 1),
        ("--samples-per-shard", options.samples_per_shard, 1),
        ("--mix-buffer", options.mix_buffer, 0),
        ("--workers", options.workers, 1),
        ("--jpeg-quality", options.jpeg_quality, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise BuildError(f"{name} {value!r}: must be an integer >= {low}")
    if options.jpeg_quality > 100:
        raise BuildError(f"--jpeg-quality {options.jpeg_quality}: must be at most 100")
    check_band_options(options.bands, options.band_files, options.nodata, options.rgb_bands)


def build_shards(
    pairs: list[Pair],
    classes: ClassesFile,
    out: str | Path,
    options: BuildOptions,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Decode, map, tile, split and write ``pairs`` as shards plus ``dataset.json``.

    Args:
        pairs: Image/mask pairs with their groups (see :mod:`engine.data.sources.pairing`).
        classes: The classes file mapping mask values to class indices.
        out: Output folder (created; must be empty unless ``options.overwrite``), or an
            object-store URL (``s3://``, ``gs://``): built in a local temporary folder
            (``TMPDIR``), each shard uploaded once complete and ``dataset.json`` last
            (:mod:`engine.data.build.upload`; a failed build uploads no manifest).
        options: Tiling, codec, split and parallelism settings.
        warn: Called once per build-time warning (mostly-padding tiles, classes missing
            or rare in train); default: print ``warning: …`` on stderr.

    Returns:
        The manifest that was written.

    Raises:
        BuildError, ImageReadError, PairingError, SplitError: naming the offending file or
            setting; nothing is left in ``out``.
    """
    check_options(options)
    if classes.encoding == "text" and options.vector_labels is None:
        raise BuildError(
            f"{classes.path}: encoding 'text' names the values of a vector file's attribute; "
            "pass --vector FILE --attribute NAME"
        )
    if not pairs:
        raise BuildError("no image/mask pairs to build from")
    if is_url(out):  # built locally; each shard uploaded once complete, the manifest last
        local = replace(options, overwrite=False)
        return build_to_url(
            str(out), options.overwrite, lambda to, up: _build(pairs, classes, to, local, warn, up)
        )
    return _build(pairs, classes, out, options, warn)


def _plan_jobs(pairs: list[Pair], classes: ClassesFile, options: BuildOptions, warn) -> tuple:
    """Split the pairs and order them into worker jobs (seeded shuffle within each split).

    Returns:
        ``(jobs, groups, split_record)``: one ``_process_pair`` argument per pair, the
        groups of each split, and the manifest's ``split`` record.
    """
    check_member_keys(pairs)
    sizes = image_sizes(pairs)
    footprints = read_footprints(pairs)  # overlapping georeferenced images share a split
    for message in filter(None, [flat_folder_warning(pairs, footprints)]):
        warn(message)
    plan, split_record = plan_splits(
        pairs, sizes, options.tile, parse_split_by(options.split_by),
        options.val, options.test, options.seed, footprints,
    )  # fmt: skip
    for message in padding_warnings(list(sizes.values()), options.tile):
        warn(message)
    rng = random.Random(options.seed)
    jobs = []
    for split in (*SPLITS, ""):  # "": pairs whose blocks go to several splits
        members = [p for p in pairs if plan[p.key].split == split]
        rng.shuffle(members)
        jobs += [(pair, plan[pair.key], classes, options) for pair in members]
    return jobs, groups_by_split(pairs, plan), split_record


@dataclass
class _Tally:
    """What the build has written: one shard writer, class-pixel counts per split, bands."""

    writers: dict[str, _SplitWriter]
    totals: dict[str, np.ndarray]  # split → int64 [num_classes + 1], last = ignore
    bands: BuildBands = field(default_factory=BuildBands)

    @classmethod
    def start(cls, staging: Path, options: BuildOptions, num_classes: int, uploader) -> _Tally:
        """Empty writers (into ``staging``, each full tar to ``uploader``) and zero counts."""
        writers = {
            s: _SplitWriter(
                staging,
                s,
                options.samples_per_shard,
                MEMBER_EXT[options.image_codec],
                MEMBER_EXT[mask_codec_for(options.image_codec)],
                options.mix_buffer,
                random.Random(f"{options.seed}/{s}"),
                uploader.put if uploader else None,
            )
            for s in SPLITS
        }
        return cls(writers, {s: np.zeros(num_classes + 1, np.int64) for s in SPLITS})

    def add(self, result: _PairResult) -> None:
        """Write one pair's samples and count its pixels and band sums."""
        for sample in result.samples:
            self.writers[sample.split].add(sample)
        for split, counts in result.class_pixels.items():
            self.totals[split] += counts
        self.bands.add(
            result.image, result.bands, result.dtype, result.nodata, result.sums, result.band_notes
        )


def _write_all(stream: Generator[_PairResult, None, None], count: int, tally: _Tally, warn) -> None:
    """Write every result of ``stream`` (``count`` pairs) under a progress bar, then its notes."""
    progress = tqdm(total=count, desc="building shards", unit="image")
    notes = []  # said once the progress bar is closed, one line each
    for result in stream:
        notes += [result.note] if result.note else []
        tally.add(result)
        progress.update()
    stream.close()  # the pool's workers end here
    progress.close()
    for note in notes:
        warn(note)
    for writer in tally.writers.values():
        writer.finish()


def _manifest(
    classes: ClassesFile, options: BuildOptions, tally: _Tally, split_record: dict, groups, warn
) -> dict:
    """The ``dataset.json`` record of a finished build (shards/README.md)."""
    num_classes = len(classes.classes)
    totals, writers = tally.totals, tally.writers
    normalization = tally.bands.normalization(options.rgb_bands, warn)
    return {
        "format": "terraseg-shards",
        "version": FORMAT_VERSION,
        "classes": classes.manifest_classes(),
        "ignore_value": classes.ignore_value(),
        "num_classes": num_classes,
        "ignore_index": IGNORE_INDEX,
        "tile_size": options.tile,
        "image_codec": options.image_codec,
        "mask_codec": mask_codec_for(options.image_codec),
        **normalization.records(),
        "seed": options.seed,
        "split": split_record,
        "class_pixels": {s: totals[s][:num_classes].tolist() for s in SPLITS if writers[s].shards},
        "ignore_pixels": {s: int(totals[s][num_classes]) for s in SPLITS if writers[s].shards},
        "splits": {
            s: {
                "shards": w.shards,
                "shard_samples": w.shard_samples,
                "shard_sha256": w.shard_sha256,
                "shard_bytes": w.shard_bytes,
                "num_samples": sum(w.shard_samples),
                "groups": groups[s],
            }
            for s, w in writers.items()
            if w.shards
        },
        **({"stac": options.stac} if options.stac else {}),
    }


def _build(pairs, classes, out, options, warn, uploader: ShardUploader | None = None) -> dict:
    """:func:`build_shards` into the folder ``out``; with ``uploader``, published as it goes."""
    output = BuildOutput(Path(out), options.overwrite)
    output.check()
    warn = warn or print_warning
    jobs, groups, split_record = _plan_jobs(pairs, classes, options, warn)
    staging = output.__enter__()
    tally = _Tally.start(staging, options, len(classes.classes), uploader)
    stream = _results(jobs, options.workers)
    try:
        _write_all(stream, len(jobs), tally, warn)
        manifest = _manifest(classes, options, tally, split_record, groups, warn)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if uploader is not None:
            uploader.finish(staging / MANIFEST_NAME)
        output.commit()
        for message in coverage_warnings(manifest["class_pixels"], classes.names):
            warn(message)
        for message in split_warnings(manifest):
            warn(message)
    except BaseException as error:
        stream.close()
        if uploader is not None:  # uploads in flight end before staging goes
            uploader.abort()
        for writer in tally.writers.values():
            with contextlib.suppress(OSError):  # a full disk fails the close too
                writer.close(complete=False)
        output.__exit__(type(error), error, error.__traceback__)
        raise
    output.__exit__(None, None, None)
    return manifest
