"""Local ``npy`` shards read straight into batch memory: a member index and positional reads.

The generic path (:func:`engine.data.shards.store.tar_members`) parses every tar header,
allocates a ``bytearray`` per member, groups members into sample dicts and stacks decoded
arrays into a batch in DataLoader workers, whose batches then cross to the main process.
For ``npy`` shards on a local disk nothing needs decoding, so this module:

* parses a shard's tar headers and the ``npy`` headers of its members once per process
  (:func:`shard_index`, cached by path, size and modification time);
* opens each shard once per batch (not per sample or member; a loader never holds
  more descriptors than its batches in flight have shards);
* reads each member's array bytes with ``os.preadv`` straight into its slot of the batch
  tensor (:func:`read_into`): one copy, from the page cache into the memory the device
  copies from. ``preadv`` releases the GIL, so threads of the main process read in parallel.
"""

from __future__ import annotations

import itertools
import os
import tarfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from webdataset.tariterators import base_plus_ext

from engine.data.shards.checks import Codecs, check_layout, check_values, duplicate_member
from engine.data.shards.npy_member import NpyHeader, check_stored, header_end, parse_header
from engine.data.shards.store import ShardReadError

_HEAD = 128  # bytes read for an npy header (numpy pads headers to 64; longer ones re-read)


class NpyMember(NamedTuple):
    """Where one ``npy`` member's array bytes are in its shard, and what its header says."""

    offset: int  # absolute file offset of the array data
    available: int  # bytes of the member after the header
    header: NpyHeader  # what the header claims (checked against the manifest before reads)

    @property
    def shape(self) -> tuple[int, ...]:
        """The claimed shape."""
        return self.header.shape

    @property
    def dtype(self) -> np.dtype:
        """The claimed type."""
        return self.header.dtype


class IndexedSample(NamedTuple):
    """One sample of a shard: its key and its members (suffix → ``NpyMember`` or ``None``)."""

    shard: str
    key: str
    members: dict


_CACHE: dict[str, tuple[tuple[int, int], list[IndexedSample]]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SHARDS = 4096  # shard indexes kept per process (a few KiB each)


def _npy_header(fd: int, offset: int, size: int, name: str) -> NpyMember:
    """Parse the ``npy`` header of the member whose data starts at ``offset`` (bounded reads)."""
    head = os.pread(fd, min(size, _HEAD), offset)
    end = header_end(head, name)  # at most MAX_HEADER_BYTES: a claimed length is not read
    if end > len(head):
        head = os.pread(fd, min(size, end), offset)
    header = parse_header(head, size, name)
    return NpyMember(offset + header.start, size - header.start, header)


def _build_index(path: str) -> list[IndexedSample]:
    samples: list[IndexedSample] = []
    with tarfile.open(path, "r:") as tar, open(path, "rb", buffering=0) as raw:
        fd = raw.fileno()
        for member in tar:
            if not member.isreg():
                continue
            key, suffix = base_plus_ext(member.name)
            if key is None:
                continue
            suffix = suffix.lower()
            if not samples or samples[-1].key != key:
                samples.append(IndexedSample(path, key, {}))
            members = samples[-1].members
            if suffix in members:
                raise duplicate_member(path, key, member.name)
            if suffix.endswith("npy"):
                try:
                    members[suffix] = _npy_header(fd, member.offset_data, member.size, suffix)
                except (ValueError, SyntaxError) as error:  # reported when the sample is read
                    members[suffix] = error
            else:
                members[suffix] = None
    return samples


def shard_index(shard: str) -> list[IndexedSample]:
    """The samples of a local tar shard, in order (parsed once per process while unchanged).

    Raises:
        ShardReadError: naming the shard when it is missing, not a tar, or truncated.
    """
    try:
        stat = os.stat(shard)
        stamp = (stat.st_size, stat.st_mtime_ns)
        with _CACHE_LOCK:
            cached = _CACHE.get(shard)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        samples = _build_index(shard)
    except ShardReadError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as error:
        raise ShardReadError(
            f"{shard}: cannot read the tar (truncated or corrupt?): {error}"
        ) from error
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SHARDS:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[shard] = (stamp, samples)
    return samples


def read_into(fd: int, target: np.ndarray, offset: int) -> None:
    """Fill the contiguous array ``target`` with the file's bytes from ``offset``.

    Raises:
        OSError: when the file ends first.
    """
    view = target.data.cast("B")
    done, total = 0, view.nbytes
    while done < total:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count <= 0:
            raise OSError(f"member ends after {done} of {total} bytes")
        done += count


def indexed_samples(shard: str, expected: int | None) -> Iterator[IndexedSample]:
    """The indexed samples of one shard; with ``expected``, the count must match the manifest.

    Raises:
        ShardReadError: as :func:`engine.data.shards.loader.raw_samples` does, for the same cases.
    """
    samples = shard_index(shard)
    if expected is not None and len(samples) > expected:
        raise ShardReadError(
            f"{shard}: holds more samples than the {expected} its manifest lists "
            "(dataset.json does not describe this shard)"
        )
    if expected is not None and len(samples) != expected:
        raise ShardReadError(
            f"{shard}: holds {len(samples)} samples but its manifest lists {expected} "
            "(truncated, or dataset.json does not describe this shard)"
        )
    return iter(samples)


def _member(sample: IndexedSample, suffix: str) -> NpyMember:
    member = sample.members.get(suffix)
    if isinstance(member, Exception):
        raise member
    if member is None:
        have = sorted(sample.members)
        raise ValueError(f"no {suffix} member (has {have})")
    return member


def _read_sample(sample, slots, index: int, codecs: Codecs, fds: dict[str, int]) -> None:
    """Check one sample's headers, read it into slot ``index`` and check its mask values."""
    try:
        image = _member(sample, f"image.{codecs.image}")
        mask = _member(sample, f"mask.{codecs.mask}")
        check_layout(image, mask, codecs)  # what the headers claim, before any read
        for member, name in ((image, "image.npy"), (mask, "mask.npy")):
            check_stored(member.header, member.available, name)
        fd = fds.get(sample.shard)
        if fd is None:
            fd = fds[sample.shard] = os.open(sample.shard, os.O_RDONLY)
        for member, slot, name in ((image, slots[0], "image"), (mask, slots[1], "mask")):
            if member.shape != slot.shape[1:]:
                raise ValueError(f"{name} {member.shape} differs from the batch's {slot.shape[1:]}")
            read_into(fd, slot[index], member.offset)
        check_values(slots[1][index], codecs)
    except (ValueError, OSError, SyntaxError) as error:
        raise ShardReadError(f"{sample.shard}: sample {sample.key}: {error}") from error


def _use_count(tensor: torch.Tensor) -> int:
    """Tensors (and storage objects) sharing ``tensor``'s memory, itself included."""
    return torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


class BatchSlots:
    """Batch tensors handed out again once nothing outside holds them (no fresh pages a batch).

    A fresh 16 MiB batch costs as much in page faults (the kernel zeroes every page) as
    reading its tiles. Pageable tensors are therefore kept (up to ``keep`` batches) and one
    is reused when no view of it is alive any more: the consumer dropped the batch, or its
    copy to the device (synchronous from pageable memory) is done. Pinned tensors come from
    torch's caching host allocator, which reuses its blocks once their copies have finished.
    """

    def __init__(self, pin: bool, keep: int) -> None:
        self.pin, self.keep = pin, keep
        self._kept: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def take(self, count: int, batch: int, size: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[count, H, W, C]`` (``size = (H, W, C, dtype)``) and uint8 masks to fill."""
        if self.pin or not hasattr(torch._C, "_storage_Use_Count"):
            return self._new(count, size)
        for images, masks, idle in self._kept:
            if (*images.shape[1:], images.dtype) == size and _use_count(images) == _use_count(
                masks
            ) == idle:
                return images[:count], masks[:count]
        if len(self._kept) >= self.keep:
            return self._new(count, size)
        images, masks = self._new(max(batch, count), size)
        self._kept.append((images, masks, _use_count(images)))
        return images[:count], masks[:count]

    def _new(self, count: int, size: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        height, width, bands, dtype = size
        images = torch.empty((count, height, width, bands), dtype=dtype, pin_memory=self.pin)
        masks = torch.empty((count, height, width), dtype=torch.uint8, pin_memory=self.pin)
        return images, masks


_TORCH_DTYPES = {
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "int16": torch.int16,
    "float32": torch.float32,
}


def _batch_size(samples: list, codecs: Codecs) -> tuple:
    """``(H, W, bands, dtype)`` of a batch: the manifest's tile size, bands and type.

    Never a header's claimed shape: every sample is checked against the manifest before
    it is read into the batch. Only without a tile size (``Codecs`` made by hand, with no
    manifest to check against) does the first sample's header size the batch.
    """
    tile = (codecs.tile, codecs.tile)
    if codecs.tile is None:
        first = samples[0].members.get(f"image.{codecs.image}")
        usable = isinstance(first, NpyMember) and len(first.shape) == 3
        tile = tuple(first.shape[:2]) if usable else (0, 0)
    return (*tile, codecs.bands, _TORCH_DTYPES.get(codecs.dtype, torch.uint8))


def fill_batch(samples: list, images, masks, codecs: Codecs):
    """Read ``samples`` into ``images`` ``[B,H,W,C]`` (the bands' type) and uint8 ``masks``.

    Returns:
        ``(images, masks, keys)``: images still ``HxWxC`` per sample (the caller views them
        as ``[B,C,H,W]`` channels-last).
    """
    slots = (images.numpy(), masks.numpy())
    fds: dict[str, int] = {}  # shard file -> open descriptor
    try:
        for index, sample in enumerate(samples):
            _read_sample(sample, slots, index, codecs, fds)
    finally:
        for fd in fds.values():
            os.close(fd)
    return images, masks, [s.key for s in samples]


def _chunks(samples: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(samples, size)):
        yield chunk


def _round_robin(parts: list[Iterator]) -> Iterator:
    """Items of ``parts`` in turn, skipping exhausted ones (a DataLoader's worker order)."""
    active = list(parts)
    while active:
        for part in list(active):
            item = next(part, None)
            if item is None:
                active.remove(part)
            else:
                yield item


def direct_batches(
    streams: list[Iterator], batch_size: int, codecs: Codecs, threads: int, pin: bool
) -> Iterator[tuple]:
    """Batches of ``streams`` (one per DataLoader worker it replaces), in a DataLoader's order.

    Each stream is cut into batches (the last one may be short); batches are taken from the
    streams in turn, as a DataLoader takes them from its workers. With ``threads`` > 0,
    that many threads of this process read batches ahead (``2 x threads`` in flight).
    """
    plan = _round_robin([_chunks(stream, batch_size) for stream in streams])
    slots = BatchSlots(pin, keep=2 * max(threads, 1) + 2)

    def job(samples: list) -> tuple:
        tensors = slots.take(len(samples), batch_size, _batch_size(samples, codecs))
        return samples, *tensors, codecs

    if threads <= 0:
        for samples in plan:
            yield fill_batch(*job(samples))
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="terraseg-read")
    pending: deque = deque()
    try:
        while True:
            while len(pending) < 2 * threads:
                samples = next(plan, None)
                if samples is None:
                    break
                pending.append(pool.submit(fill_batch, *job(samples)))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
