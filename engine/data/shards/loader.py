"""Stream shard samples as batches (the bands' native type), safely on every rank of a job.

Nothing here goes through ``accelerator.prepare``: each rank builds its own loader from
its rank and the world size.

* Training (:func:`train_batches`): every worker draws shards *with replacement* from the
  whole split, seeded from ``(seed, rank, worker, epoch)``, reads several at once and
  shuffles samples in a buffer. The stream never ends, so no worker can lack a shard and
  no rank can run out first; each rank takes exactly ``steps`` batches.
* Evaluation (:func:`eval_batches`): the split's samples, in manifest order, are cut into
  ``world_size × workers`` contiguous parts, one per (rank, worker). Every sample is read
  exactly once, and every rank yields :func:`eval_steps` batches, padding with batches
  whose masks are all ignore.

Two ways to move the bytes, with the same batches in the same order: local ``npy`` shards
(nothing to decode) are read by ``num_workers`` *threads* of this process straight into the
batch tensors (:mod:`engine.data.shards.direct_read`: tar headers indexed once, one ``preadv`` per
member, batch memory reused); other codecs and URLs are decoded in DataLoader worker
*processes*. The order of the samples depends only on ``(seed, rank, worker, epoch)``, where
"worker" is the DataLoader worker or the thread stream standing for it.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import signal
from collections.abc import Iterable, Iterator
from functools import partial
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from engine.data.shards.checks import (
    Codecs,
    check_image,
    check_mask,
    check_members,
    unique_members,
)
from engine.data.shards.codecs import decode_image
from engine.data.shards.direct_read import direct_batches, indexed_samples
from engine.data.shards.manifest import Manifest, SplitInfo
from engine.data.shards.store import ShardReadError, is_url, shard_digests, tar_members
from engine.errors import UserError


class Batch(NamedTuple):
    """A batch as it leaves the loader.

    Attributes:
        images: ``[B, C, H, W]`` in the bands' type (uint8, uint16, int16 or float32; see
            the manifest's ``bands``) with channels-last strides (as decoded: stacking
            ``HxWxC`` tiles needs no transposing copy on the host).
        masks: uint8 ``[B, H, W]``; 255 = ignore.
        keys: Sample keys; empty for padding batches.
    """

    images: torch.Tensor
    masks: torch.Tensor
    keys: list[str]


class Sample(NamedTuple):
    """One decoded sample."""

    image: torch.Tensor  # [C, H, W] in the bands' type, a view of the decoded H x W x C
    mask: torch.Tensor  # uint8 [H, W]
    key: str
    meta: dict


def decode_sample(raw: dict, codecs: Codecs) -> Sample:
    """Decode the raw members of one shard sample (as read from the tar) and check them.

    Raises:
        ShardReadError: naming the shard and sample key when a member is missing, corrupt, of
            the wrong type or shape, or when a mask value is neither a class nor ignore.
    """
    key: str = raw["__key__"]  # group_by_keys gives every sample its key
    try:
        members = {}
        for name, codec, check in (
            ("image", codecs.image, check_image),
            ("mask", codecs.mask, check_mask),
        ):
            suffix = f"{name}.{codec}"
            if suffix not in raw:
                have = sorted(k for k in raw if not k.startswith("__"))
                raise ValueError(f"no {suffix} member (has {have})")
            # the header is checked against the manifest before any array is made
            members[name] = decode_image(raw[suffix], codec, partial(check, codecs=codecs), name)
        image, mask = members["image"], members["mask"]
        check_members(image, mask, codecs)
        meta = json.loads(raw["meta.json"]) if "meta.json" in raw else {}
    except (ValueError, OSError, SyntaxError) as error:
        raise ShardReadError(f"{raw.get('__url__')}: sample {key}: {error}") from error
    return Sample(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), key, meta)


def _shard_samples(shard: object, expected: int | None, digests: dict | None = None):
    """Raw samples of one shard; with ``expected``, the count must match the manifest.

    A remote shard must match its entry in ``digests`` (:func:`shard_digests`), if any.
    """
    count = 0
    members = tar_members(shard, (digests or {}).get(str(shard)))
    for raw in group_by_keys(unique_members(members, shard)):
        count += 1
        if expected is not None and count > expected:
            raise ShardReadError(
                f"{shard}: holds more samples than the {expected} its manifest lists "
                "(dataset.json does not describe this shard)"
            )
        yield raw
    if expected is not None and count != expected:
        raise ShardReadError(
            f"{shard}: holds {count} samples but its manifest lists {expected} "
            "(truncated, or dataset.json does not describe this shard)"
        )


def raw_samples(shards: Iterable, counts: Iterable[int] | None = None, digests=None):
    """Raw samples (``__key__`` plus one entry per member suffix) of shard files, in order.

    Args:
        shards: Shard files.
        counts: Samples each shard must hold (the manifest's ``shard_samples``); a shard
            holding fewer or more is a :class:`ShardReadError` once it has been read.
        digests: :func:`shard_digests`; a remote shard must match its own.
    """
    shards = list(shards)
    for shard, expected in zip(shards, [None] * len(shards) if counts is None else counts):
        yield from _shard_samples(shard, expected, digests)


def read_samples(
    shards: list, codecs: Codecs, counts: Iterable[int] | None = None, digests=None
) -> Iterator[Sample]:
    """Decode every sample of the given shard files, in order (see :func:`raw_samples`)."""
    for raw in raw_samples(shards, counts, digests):
        yield decode_sample(raw, codecs)


def read_split(manifest: Manifest, split: str) -> Iterator[Sample]:
    """Decode every sample of ``split``, checking each shard's count against the manifest."""
    info = manifest.split(split)
    digests = shard_digests(info)
    return read_samples(list(info.shards), Codecs.of(manifest), info.shard_samples, digests)


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack``, straight into shared memory inside a DataLoader worker.

    As ``default_collate`` does: the batch then crosses to the main process without the
    extra copy into shared memory that pickling a private tensor makes.
    """
    out = None
    if get_worker_info() is not None:
        first = tensors[0]
        storage = first._typed_storage()._new_shared(len(tensors) * first.numel())
        out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


def read_sample(manifest: Manifest, split: str, index: int) -> Sample:
    """Decode sample ``index`` (in manifest order) of ``split``, reading only its shard.

    Raises:
        IndexError: when the split has no such sample.
    """
    info = manifest.split(split)
    if not 0 <= index < info.num_samples:
        raise IndexError(f"{split} has {info.num_samples} samples; index {index} is out of range")
    for shard, count in zip(info.shards, info.shard_samples):
        if index < count:
            raw = next(itertools.islice(raw_samples([shard]), index, None))
            return decode_sample(raw, Codecs.of(manifest))
        index -= count
    raise IndexError(f"{split}: the manifest counts more samples than its shards hold")


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (images stacked as ``HxWxC``, then viewed as CHW)."""
    return Batch(
        _stack([s.image.permute(1, 2, 0) for s in samples]).permute(0, 3, 1, 2),
        _stack([s.mask for s in samples]),
        [s.key for s in samples],
    )


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


OPEN_SHARDS = 4  # shards each training worker reads from at once


def _train_order(shards: list, rng: random.Random, buffer: int, open_shard) -> Iterator:
    """One worker's endless, seeded order of samples (``open_shard(shard, count)`` reads one).

    Several shards are read at once, a random one for each sample: a shard often holds the
    tiles of few source images, and a batch from one image is a poor gradient. Samples are
    then shuffled in a buffer.
    """

    def opened() -> Iterator:
        shard, count = rng.choice(shards)
        return open_shard(shard, count)

    streams = [opened() for _ in range(OPEN_SHARDS)]
    pool: list = []
    while True:
        slot = rng.randrange(len(streams))
        raw = next(streams[slot], None)
        if raw is None:
            streams[slot] = opened()
            continue
        pool.append(raw)
        if len(pool) < buffer:
            continue
        index = rng.randrange(len(pool))
        pool[index], pool[-1] = pool[-1], pool[index]
        yield pool.pop()


def _train_rng(seed: int, rank: int, worker: int, epoch: int) -> random.Random:
    return random.Random(f"terraseg/train/{seed}/{rank}/{worker}/{epoch}")


class _TrainStream(IterableDataset):
    """An endless, seeded stream of shuffled training samples for one rank."""

    def __init__(
        self, split: SplitInfo, codecs: Codecs, seed: int, rank: int, epoch: int, buffer: int
    ):
        self.shards = [(str(s), n) for s, n in zip(split.shards, split.shard_samples)]
        self.codecs, self.seed, self.rank = codecs, seed, rank
        self.epoch, self.buffer, self.digests = epoch, buffer, shard_digests(split)

    def __iter__(self) -> Iterator[Sample]:
        rng = _train_rng(self.seed, self.rank, _worker()[0], self.epoch)
        samples = functools.partial(_shard_samples, digests=self.digests)
        for raw in _train_order(self.shards, rng, self.buffer, samples):
            yield decode_sample(raw, self.codecs)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGUSR1 to their rank, which checkpoints and stops them.

    Cluster schedulers signal every process of a job; a worker dying of it would crash its
    rank before the preemption checkpoint. Workers still exit when their rank exits.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _one_line_errors(loader: DataLoader) -> Iterator[Batch]:
    """The loader's batches; a worker's :class:`UserError` keeps its one-line message.

    Workers are shut down however iteration ends: they ignore SIGTERM, so one left running
    would hang the interpreter's exit.
    """
    batches = iter(loader)
    try:
        yield from batches
    except UserError as error:  # from a worker, the message holds the worker's traceback
        last = str(error).rstrip().splitlines()[-1]
        if "Original Traceback" not in str(error) or ": " not in last:
            raise
        raise type(error)(last.split(": ", 1)[1]) from None
    finally:
        getattr(batches, "_shutdown_workers", lambda: None)()


def _loader(dataset: IterableDataset, batch_size: int, num_workers: int, pin: bool | None):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=_ignore_stop_signals,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin is None else pin,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def train_batches(
    manifest: Manifest,
    batch_size: int,
    steps: int,
    *,
    seed: int,
    rank: int,
    epoch: int,
    num_workers: int = 2,
    shuffle_buffer: int = 64,
    split: str = "train",
    pin_memory: bool | None = None,
    direct: bool | None = None,
) -> Iterator[Batch]:
    """Yield exactly ``steps`` training batches for this rank and epoch.

    Args:
        manifest: The shard folder's manifest.
        batch_size: Samples per batch (per rank).
        steps: Batches to yield; the same on every rank.
        seed: Run seed; with ``rank``, worker and ``epoch`` it seeds shard and sample order.
        rank: This process's global rank.
        epoch: Epoch number (or any value that changes when the stream should change, e.g.
            the step a resumed run starts from).
        num_workers: DataLoader worker processes.
        shuffle_buffer: Samples each worker holds to shuffle from.
        split: The split to stream.
        pin_memory: Pin host memory (default: when CUDA is available).
        direct: Read local ``npy`` shards with threads straight into the batches
            (:mod:`engine.data.shards.direct_read`; the same batches, in the same order, as the
            worker processes). Default: whenever the shards allow it.
    """
    info, codecs = manifest.split(split), Codecs.of(manifest)
    if _use_direct(info, codecs, direct):
        shards = [(str(s), n) for s, n in zip(info.shards, info.shard_samples)]
        streams = [
            _train_order(shards, _train_rng(seed, rank, w, epoch), shuffle_buffer, indexed_samples)
            for w in range(max(num_workers, 1))
        ]
        batches = _direct(streams, batch_size, codecs, num_workers, pin_memory)
        return itertools.islice(batches, steps)
    dataset = _TrainStream(info, codecs, seed, rank, epoch, shuffle_buffer)
    loader = _loader(dataset, batch_size, num_workers, pin_memory)
    return itertools.islice(_one_line_errors(loader), steps)


def _use_direct(info: SplitInfo, codecs: Codecs, direct: bool | None) -> bool:
    """Whether the direct path can read this split (local ``npy`` shards), as asked."""
    possible = codecs.image == codecs.mask == "npy" and not any(is_url(s) for s in info.shards)
    if direct and not possible:
        raise ValueError("the direct path reads local npy shards only")
    return possible if direct is None else direct


def _direct(streams, batch_size: int, codecs: Codecs, threads: int, pin: bool | None):
    pin = torch.cuda.is_available() if pin is None else pin
    for images, masks, keys in direct_batches(streams, batch_size, codecs, threads, pin):
        yield Batch(images.permute(0, 3, 1, 2), masks, keys)


def partition(total: int, parts: int) -> list[tuple[int, int]]:
    """Cut ``range(total)`` into ``parts`` contiguous ``(start, stop)`` ranges, sizes ±1."""
    return [(total * p // parts, total * (p + 1) // parts) for p in range(parts)]


def eval_steps(split: SplitInfo, batch_size: int, world_size: int, num_workers: int) -> int:
    """Batches every rank yields for ``split`` (the most any rank needs)."""
    workers = max(num_workers, 1)
    ranges = partition(split.num_samples, world_size * workers)
    per_rank = [
        sum(
            math.ceil((stop - start) / batch_size)
            for start, stop in ranges[r * workers : (r + 1) * workers]
        )
        for r in range(world_size)
    ]
    return max(per_rank)


class _EvalPart(IterableDataset):
    """The samples of one (rank, worker) part of a split, read exactly once."""

    def __init__(self, split: SplitInfo, codecs: Codecs, rank: int, world_size: int):
        self.split, self.codecs, self.rank, self.world_size = split, codecs, rank, world_size

    def __iter__(self) -> Iterator[Sample]:
        worker, workers = _worker()
        samples = functools.partial(_shard_samples, digests=shard_digests(self.split))
        for raw in _eval_part(self.split, self.rank * workers + worker, self.world_size * workers,
                              samples):  # fmt: skip
            yield decode_sample(raw, self.codecs)


def _eval_part(split: SplitInfo, part: int, parts: int, open_shard) -> Iterator:
    """The samples of part ``part`` of ``parts`` of a split, in order, each read once."""
    start, stop = partition(split.num_samples, parts)[part]
    offset = 0
    for shard, count in zip(split.shards, split.shard_samples):
        if offset < stop and offset + count > start:
            for index, raw in enumerate(open_shard(str(shard), count), offset):
                if start <= index < stop:
                    yield raw
        offset += count


def eval_batches(
    manifest: Manifest,
    split: str,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 2,
    pin_memory: bool | None = None,
    direct: bool | None = None,
) -> Iterator[Batch]:
    """Yield this rank's share of ``split``, then padding, for :func:`eval_steps` batches.

    Padding batches hold zero images and all-ignore masks, so metrics are unaffected; every
    rank steps the same number of times, so collective operations cannot hang. ``direct``
    as in :func:`train_batches`.
    """
    info, codecs = manifest.split(split), Codecs.of(manifest)
    steps = eval_steps(info, batch_size, world_size, num_workers)
    if _use_direct(info, codecs, direct):
        workers = max(num_workers, 1)
        parts = [
            _eval_part(info, rank * workers + w, world_size * workers, indexed_samples)
            for w in range(workers)
        ]
        batches = _direct(parts, batch_size, codecs, num_workers, pin_memory)
    else:
        part = _EvalPart(info, codecs, rank, world_size)
        batches = _one_line_errors(_loader(part, batch_size, num_workers, pin_memory))
    yielded = 0
    for batch in batches:
        yielded += 1
        yield batch
    size, bands = manifest.tile_size, codecs.bands
    dtype = getattr(torch, codecs.dtype)
    for _ in range(steps - yielded):
        yield Batch(
            torch.zeros(batch_size, bands, size, size, dtype=dtype),
            torch.full((batch_size, size, size), manifest.ignore_index, dtype=torch.uint8),
            [],
        )
