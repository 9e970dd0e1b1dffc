"""Stream shard samples as uint8 batches, safely on every rank of a distributed job.

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
"""

from __future__ import annotations

import itertools
import json
import math
import random
import signal
import tarfile
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from engine.data.imageio import decode_image
from engine.data.manifest import Manifest, SplitInfo
from engine.errors import UserError


class Batch(NamedTuple):
    """A batch as it leaves the loader.

    Attributes:
        images: uint8 ``[B, 3, H, W]`` with channels-last strides (as decoded: stacking
            ``HxWx3`` tiles needs no transposing copy on the host).
        masks: uint8 ``[B, H, W]``; 255 = ignore.
        keys: Sample keys; empty for padding batches.
    """

    images: torch.Tensor
    masks: torch.Tensor
    keys: list[str]


class Sample(NamedTuple):
    """One decoded sample."""

    image: torch.Tensor  # uint8 [3, H, W], a view of the decoded H x W x 3 array
    mask: torch.Tensor  # uint8 [H, W]
    key: str
    meta: dict


class Codecs(NamedTuple):
    """Codecs of a shard folder's ``image.*`` and ``mask.*`` members."""

    image: str
    mask: str

    @classmethod
    def of(cls, manifest: Manifest) -> Codecs:
        """The codecs the manifest names."""
        return cls(manifest.image_codec, manifest.mask_codec)


class ShardReadError(UserError):
    """A shard sample cannot be decoded; the message names the shard, the sample and why."""


def decode_sample(raw: dict, codecs: Codecs) -> Sample:
    """Decode the raw members of one shard sample (as read from the tar).

    Raises:
        ShardReadError: naming the shard and sample key when a member is missing or corrupt.
    """
    key = raw.get("__key__")
    try:
        members = {}
        for name, codec in (("image", codecs.image), ("mask", codecs.mask)):
            suffix = f"{name}.{codec}"
            if suffix not in raw:
                have = sorted(k for k in raw if not k.startswith("__"))
                raise ValueError(f"no {suffix} member (has {have})")
            members[name] = decode_image(raw[suffix], codec)
        image, mask = members["image"], members["mask"]
        if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
            raise ValueError(f"image {image.shape} and mask {mask.shape} do not form a sample")
        meta = json.loads(raw["meta.json"]) if "meta.json" in raw else {}
    except (ValueError, OSError, SyntaxError) as error:
        raise ShardReadError(f"{raw.get('__url__')}: sample {key}: {error}") from error
    return Sample(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask), key, meta)


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytearray:
    # A bytearray, so that npy members decode to writable views (torch.from_numpy needs one).
    data = bytearray(member.size)
    if tar.extractfile(member).readinto(data) != member.size:  # type: ignore[union-attr]
        raise OSError(f"{tar.name}: member {member.name} is truncated")
    return data


def _tar_members(shards: Iterable) -> Iterator[dict]:
    """The regular files of local tar shards, in order, as webdataset's file dicts.

    Random access (``tarfile`` mode ``r:``) reads each member with one ``read``; the
    streaming reader of ``webdataset.tarfile_samples`` copies it in 10 KiB records, which
    cost ~5 ms per 1024² ``npy`` sample on a 2-core CPU against ~1 ms here.
    """
    for shard in shards:
        with tarfile.open(str(shard), "r:") as tar:
            for member in tar:
                if member.isreg():
                    data = _read_member(tar, member)
                    yield {"fname": member.name, "data": data, "__url__": str(shard)}
        yield {}  # end of shard: the last sample is complete (as webdataset marks it)


def raw_samples(shards: Iterable) -> Iterator[dict]:
    """Raw samples (``__key__`` plus one entry per member suffix) of shard files, in order."""
    return group_by_keys(_tar_members(shards))


def read_samples(shards: list, codecs: Codecs) -> Iterator[Sample]:
    """Decode every sample of the given shard files, in order."""
    for raw in raw_samples(shards):
        yield decode_sample(raw, codecs)


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
    """Stack samples into a :class:`Batch` (images stacked as ``HxWx3``, then viewed as CHW)."""
    return Batch(
        _stack([s.image.permute(1, 2, 0) for s in samples]).permute(0, 3, 1, 2),
        _stack([s.mask for s in samples]),
        [s.key for s in samples],
    )


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


OPEN_SHARDS = 4  # shards each training worker reads from at once


class _TrainStream(IterableDataset):
    """An endless, seeded stream of shuffled training samples for one rank."""

    def __init__(
        self, split: SplitInfo, codecs: Codecs, seed: int, rank: int, epoch: int, buffer: int
    ):
        self.shards = [str(s) for s in split.shards]
        self.codecs, self.seed, self.rank = codecs, seed, rank
        self.epoch, self.buffer = epoch, buffer

    def __iter__(self) -> Iterator[Sample]:
        worker, _ = _worker()
        rng = random.Random(f"terraseg/train/{self.seed}/{self.rank}/{worker}/{self.epoch}")

        # Several shards are read at once, a random one for each sample: a shard often holds
        # the tiles of few source images, and a batch from one image is a poor gradient.
        streams = [raw_samples([rng.choice(self.shards)]) for _ in range(OPEN_SHARDS)]

        def interleaved() -> Iterator[dict]:
            while True:
                slot = rng.randrange(len(streams))
                raw = next(streams[slot], None)
                if raw is None:
                    streams[slot] = raw_samples([rng.choice(self.shards)])
                else:
                    yield raw

        pool: list[dict] = []
        for raw in interleaved():
            pool.append(raw)
            if len(pool) < self.buffer:
                continue
            index = rng.randrange(len(pool))
            pool[index], pool[-1] = pool[-1], pool[index]
            yield decode_sample(pool.pop(), self.codecs)


def _ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGUSR1 to their rank, which checkpoints and stops them.

    Cluster schedulers signal every process of a job; a worker dying of it would crash its
    rank before the preemption checkpoint. Workers still exit when their rank exits.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


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
    """
    dataset = _TrainStream(
        manifest.split(split), Codecs.of(manifest), seed, rank, epoch, shuffle_buffer
    )
    return itertools.islice(iter(_loader(dataset, batch_size, num_workers, pin_memory)), steps)


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
        ranges = partition(self.split.num_samples, self.world_size * workers)
        start, stop = ranges[self.rank * workers + worker]
        offset = 0
        for shard, count in zip(self.split.shards, self.split.shard_samples):
            if offset < stop and offset + count > start:
                for index, raw in enumerate(raw_samples([shard]), offset):
                    if start <= index < stop:
                        yield decode_sample(raw, self.codecs)
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
) -> Iterator[Batch]:
    """Yield this rank's share of ``split``, then padding, for :func:`eval_steps` batches.

    Padding batches hold zero images and all-ignore masks, so metrics are unaffected; every
    rank steps the same number of times, so collective operations cannot hang.
    """
    info = manifest.split(split)
    steps = eval_steps(info, batch_size, world_size, num_workers)
    loader = _loader(
        _EvalPart(info, Codecs.of(manifest), rank, world_size), batch_size, num_workers, pin_memory
    )
    yielded = 0
    for batch in loader:
        yielded += 1
        yield batch
    size = manifest.tile_size
    for _ in range(steps - yielded):
        yield Batch(
            torch.zeros(batch_size, 3, size, size, dtype=torch.uint8),
            torch.full((batch_size, size, size), manifest.ignore_index, dtype=torch.uint8),
            [],
        )
