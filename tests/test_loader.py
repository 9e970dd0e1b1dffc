"""Shard loader: seeded endless training streams and exactly-once evaluation, on 2 ranks."""

import gc
import json
import os
import socket
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import build_tiny, make_tiny_dataset

from engine.data.shards.loader import (
    Codecs,
    eval_batches,
    eval_steps,
    partition,
    read_samples,
    train_batches,
)
from engine.data.shards.manifest import load_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_partition_is_contiguous_and_exact():
    for total in (0, 1, 7, 10):
        for parts in (1, 3, 4):
            ranges = partition(total, parts)
            flat = [i for start, stop in ranges for i in range(start, stop)]
            assert flat == list(range(total))
            assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_train_stream_is_seeded_and_yields_exact_steps(tmp_path):
    build_tiny(make_tiny_dataset(tmp_path / "d"), tmp_path / "s", val=0, test=0)
    manifest = load_manifest(tmp_path / "s")

    def keys(**kw):
        return [b.keys for b in train_batches(manifest, 3, 7, num_workers=0, **kw)]

    first = keys(seed=1, rank=0, epoch=0)
    assert len(first) == 7 and all(len(k) == 3 for k in first)
    assert first == keys(seed=1, rank=0, epoch=0)
    assert first != keys(seed=1, rank=1, epoch=0)
    assert first != keys(seed=1, rank=0, epoch=1)
    batch = next(iter(train_batches(manifest, 2, 1, seed=0, rank=0, epoch=0, num_workers=1)))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (2, 3, 32, 32)
    assert batch.masks.dtype == torch.uint8 and batch.masks.shape == (2, 32, 32)
    # Tiles are stacked as decoded (H x W x 3): channels-last strides, no transposing copy.
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    samples = {
        s.key: s for s in read_samples(list(manifest.split("train").shards), Codecs.of(manifest))
    }
    for key, image, mask in zip(batch.keys, batch.images, batch.masks):
        assert torch.equal(image, samples[key].image) and torch.equal(mask, samples[key].mask)


def _rank_main(rank: int, world: int, port: int, shards: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    manifest = load_manifest(shards)
    train = [
        b.keys for b in train_batches(manifest, 2, 6, seed=0, rank=rank, epoch=0, num_workers=2)
    ]
    evals = [
        b.keys
        for b in eval_batches(manifest, "train", 2, rank=rank, world_size=world, num_workers=2)
    ]
    # A collective per eval step: it would hang if ranks took different numbers of steps.
    for _ in evals:
        dist.all_reduce(torch.ones(1))
    gathered = [None] * world
    dist.all_gather_object(gathered, {"train": train, "eval": evals})
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(gathered, handle)
    dist.destroy_process_group()


def test_two_ranks_two_workers_uneven_shards(tmp_path):
    # 3 images of 2x2 tiles → 12 samples in 3 shards of 5/5/2: not divisible by 2 ranks x 2 workers.
    build_tiny(
        make_tiny_dataset(tmp_path / "d", groups=1, per_group=3), tmp_path / "s", val=0, test=0
    )
    manifest = load_manifest(tmp_path / "s")
    split = manifest.split("train")
    assert len(split.shards) == 3 and split.num_samples == 12
    out = tmp_path / "result.json"
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path / "s"), str(out)), nprocs=2, join=True)
    ranks = json.loads(out.read_text())
    assert [len(r["train"]) for r in ranks] == [6, 6]
    assert all(len(keys) == 2 for r in ranks for keys in r["train"])
    steps = eval_steps(split, 2, world_size=2, num_workers=2)
    assert [len(r["eval"]) for r in ranks] == [steps, steps]
    seen = Counter(k for r in ranks for keys in r["eval"] for k in keys)
    expected = {
        b.keys[i] for b in eval_batches(manifest, "train", 1, num_workers=0) for i in range(1)
    }
    assert set(seen) == expected and set(seen.values()) == {1}


def test_eval_pads_ranks_to_equal_steps(tmp_path):
    build_tiny(
        make_tiny_dataset(tmp_path / "d", groups=1, per_group=1), tmp_path / "s", val=0, test=0
    )
    manifest = load_manifest(tmp_path / "s")  # 4 samples
    per_rank = [
        list(eval_batches(manifest, "train", 3, rank=r, world_size=3, num_workers=0))
        for r in range(3)
    ]
    assert [len(b) for b in per_rank] == [1, 1, 1]
    keys = [k for batches in per_rank for b in batches for k in b.keys]
    assert len(keys) == len(set(keys)) == 4
    per_rank = [
        list(eval_batches(manifest, "train", 1, rank=r, world_size=3, num_workers=0))
        for r in range(3)
    ]
    assert [len(b) for b in per_rank] == [2, 2, 2]
    padding = [b for batches in per_rank for b in batches if not b.keys]
    assert len(padding) == 2 and all((b.masks == 255).all() for b in padding)


def test_corrupt_or_missing_members_name_the_shard_and_sample(tmp_path):
    import io
    import tarfile

    from engine.data.shards.loader import ShardReadError

    build_tiny(make_tiny_dataset(tmp_path / "d"), tmp_path / "s", val=0, test=0)
    manifest = load_manifest(tmp_path / "s")
    assert manifest.image_codec == "npy"
    shard = manifest.split("train").shards[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first_key = members[0][0].name.split(".", 1)[0]
    for damage, expected in (("truncate", "mask.npy is truncated"), ("drop", "no mask.npy member")):
        with tarfile.open(shard, "w") as tar:
            for member, data in members:
                if member.name == f"{first_key}.mask.npy":
                    if damage == "drop":
                        continue
                    data = data[:200]
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        with pytest.raises(ShardReadError, match=f"{shard.name}: sample {first_key}: .*{expected}"):
            list(read_samples([shard], Codecs.of(manifest)))


def _reference(manifest) -> dict:
    """Every sample of the train split decoded by the reference path (tar → decode_image)."""
    shards = list(manifest.split("train").shards)
    return {s.key: s for s in read_samples(shards, Codecs.of(manifest))}


def _same_pixels(batches, reference) -> int:
    seen = 0
    for batch in batches:
        assert batch.images.is_contiguous(memory_format=torch.channels_last)
        for key, image, mask in zip(batch.keys, batch.images, batch.masks):
            assert torch.equal(image, reference[key].image), key
            assert torch.equal(mask, reference[key].mask), key
            seen += 1
    return seen


@pytest.mark.parametrize("codec", ["npy", "png"])
def test_direct_reads_give_the_worker_batches_byte_for_byte(tmp_path, codec):
    # 12 samples in shards of 5/5/2: uneven parts for 2 workers, a short last batch.
    build_tiny(
        make_tiny_dataset(tmp_path / "d", groups=1, per_group=3),
        tmp_path / "s",
        val=0,
        test=0,
        image_codec=codec,
    )
    manifest = load_manifest(tmp_path / "s")
    reference = _reference(manifest)
    if codec == "png":  # decoding needs worker processes: the direct path is not taken
        with pytest.raises(ValueError, match="local npy shards only"):
            train_batches(manifest, 2, 1, seed=0, rank=0, epoch=0, direct=True)
        batches = list(train_batches(manifest, 3, 4, seed=0, rank=0, epoch=0, num_workers=1))
        assert _same_pixels(batches, reference) == 12
        return
    for workers in (0, 2):
        kw = dict(seed=3, rank=1, epoch=2, num_workers=workers, pin_memory=False)
        fast = list(train_batches(manifest, 3, 9, direct=True, **kw))
        slow = list(train_batches(manifest, 3, 9, direct=False, **kw))
        assert [b.keys for b in fast] == [b.keys for b in slow] and len(fast) == 9
        assert _same_pixels(fast, reference) == 27
        for a, b in zip(fast, slow):
            assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
        for rank in (0, 1):
            kw = dict(rank=rank, world_size=2, num_workers=workers, pin_memory=False)
            fast = list(eval_batches(manifest, "train", 4, direct=True, **kw))
            slow = list(eval_batches(manifest, "train", 4, direct=False, **kw))
            assert [b.keys for b in fast] == [b.keys for b in slow]
            for a, b in zip(fast, slow):
                assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
            _same_pixels([b for b in fast if b.keys], reference)
    # Batches dropped (and scribbled over) by the consumer: their memory is reused, and
    # every later batch is still whole.
    gc.collect()  # loaders of the loops above close their worker pipes when collected
    addresses, descriptors = [], len(os.listdir("/proc/self/fd"))
    kw = dict(seed=3, rank=0, epoch=0, num_workers=2, pin_memory=False, direct=True)
    for batch in train_batches(manifest, 3, 12, **kw):
        assert _same_pixels([batch], reference) == 3
        addresses.append(batch.images.data_ptr())
        batch.images.fill_(7)
        batch.masks.fill_(7)
        del batch
    assert len(set(addresses)) < len(addresses)
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == descriptors  # no shard left open


def test_direct_reads_reject_damaged_members_naming_shard_and_sample(tmp_path):
    import io
    import tarfile

    import numpy as np

    from engine.data.shards.loader import ShardReadError

    build_tiny(make_tiny_dataset(tmp_path / "d"), tmp_path / "s", val=0, test=0)
    manifest = load_manifest(tmp_path / "s")
    shard = manifest.split("train").shards[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].name.split(".", 1)[0]

    def fortran(data):
        buffer = io.BytesIO()
        np.save(buffer, np.asfortranarray(np.load(io.BytesIO(data))))
        return buffer.getvalue()

    cases = (
        ("mask.npy", lambda data: data[:200], "mask.npy is truncated"),
        ("image.npy", lambda data: b"not an array" + data, "image.npy is not an npy array"),
        ("image.npy", fortran, "image.npy is stored in Fortran order"),
    )
    for suffix, damage, expected in cases:
        with tarfile.open(shard, "w") as tar:
            for member, data in members:
                if member.name == f"{key}.{suffix}":
                    data = damage(data)
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        for workers in (0, 1):
            with pytest.raises(ShardReadError, match=f"{shard.name}: sample {key}: {expected}"):
                list(eval_batches(manifest, "train", 2, num_workers=workers, direct=True))
