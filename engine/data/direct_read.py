"""Local ``npy`` shards read straight into batch memory: a member index and positional reads.

The generic path (:func:`engine.data.shard_store.tar_members`) parses every tar header,
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

import ast
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

from engine.data.sample_checks import Codecs, check_layout, check_values
from engine.data.shard_store import ShardReadError

_NPY_MAGIC = b"\x93NUMPY"
_HEAD = 128  # bytes read for an npy header (numpy pads headers to 64; longer ones re-read)


class NpyMember(NamedTuple):
    """Where one ``npy`` member's array bytes are in its shard, and what its header says."""

    offset: int  # absolute file offset of the array data
    available: int  # bytes of the member after the header
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool


class IndexedSample(NamedTuple):
    """One sample of a shard: its key and its members (suffix → ``NpyMember`` or ``None``)."""

    shard: str
    key: str
    members: dict


_CACHE: dict[str, tuple[tuple[int, int], list[IndexedSample]]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SHARDS = 4096  # shard indexes kept per process (a few KiB each)


def _npy_header(fd: int, offset: int, size: int, name: str) -> NpyMember:
    """Parse the ``npy`` header of the member whose data starts at ``offset``."""
    head = os.pread(fd, min(size, _HEAD), offset)
    if len(head) < 10 or not head.startswith(_NPY_MAGIC):
        raise ValueError(f"{name} is not an npy array")
    major = head[6]
    if major == 1:
        start, length = 10, int.from_bytes(head[8:10], "little")
    elif major in (2, 3) and len(head) >= 12:
        start, length = 12, int.from_bytes(head[8:12], "little")
    else:
        raise ValueError(f"{name}: unsupported npy version {major}")
    if start + length > len(head):
        head = os.pread(fd, min(size, start + length), offset)
    if start + length > len(head):
        raise ValueError(f"{name}: npy header is truncated")
    header = ast.literal_eval(head[start : start + length].decode("latin1"))
    try:
        shape = tuple(int(n) for n in header["shape"])
        dtype = np.dtype(header["descr"])
        fortran = bool(header["fortran_order"])
    except (KeyError, TypeError) as error:
        raise ValueError(f"{name}: malformed npy header ({error})") from error
    return NpyMember(offset + start + length, size - start - length, shape, dtype, fortran)


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
                raise ValueError(f"{member.name}: duplicate file name in the tar")
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
    view = memoryview(target).cast("B")
    done, total = 0, view.nbytes
    while done < total:
        count = os.preadv(fd, [view[done:]], offset + done)
        if count <= 0:
            raise OSError(f"member ends after {done} of {total} bytes")
        done += count


def indexed_samples(shard: str, expected: int | None) -> Iterator[IndexedSample]:
    """The indexed samples of one shard; with ``expected``, the count must match the manifest.

    Raises:
        ShardReadError: as :func:`engine.data.loader.raw_samples` does, for the same cases.
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
    if member.fortran:
        raise ValueError(f"{suffix} is stored in Fortran order; shards hold C order")
    return member


def _read_sample(sample, slots, index: int, codecs: Codecs, fds: dict) -> None:
    """Check one sample's headers, read it into slot ``index`` and check its mask values."""
    try:
        image = _member(sample, f"image.{codecs.image}")
        mask = _member(sample, f"mask.{codecs.mask}")
        check_layout(image, mask, codecs)
        fd = fds.get(sample.shard)
        if fd is None:
            fd = fds[sample.shard] = os.open(sample.shard, os.O_RDONLY)
        for member, slot, name in ((image, slots[0], "image"), (mask, slots[1], "mask")):
            if member.shape != slot.shape[1:]:
                raise ValueError(f"{name} {member.shape} differs from the batch's {slot.shape[1:]}")
            if member.available < slot[index].nbytes:
                raise ValueError(
                    f"{name}.npy is truncated ({member.available} of {slot[index].nbytes} bytes)"
                )
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
    """``(H, W, bands, dtype)`` of a batch: its first sample's tile, the manifest's bands.

    Every sample is checked against the manifest when it is read.
    """
    first = samples[0].members.get(f"image.{codecs.image}")
    tile = (
        tuple(first.shape[:2]) if isinstance(first, NpyMember) and len(first.shape) == 3 else (0, 0)
    )
    return (*tile, codecs.bands, _TORCH_DTYPES.get(codecs.dtype, torch.uint8))


def fill_batch(samples: list, images, masks, codecs: Codecs):
    """Read ``samples`` into ``images`` ``[B,H,W,C]`` (the bands' type) and uint8 ``masks``.

    Returns:
        ``(images, masks, keys)``: images still ``HxWxC`` per sample (the caller views them
        as ``[B,C,H,W]`` channels-last).
    """
    slots, fds = (images.numpy(), masks.numpy()), {}
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
