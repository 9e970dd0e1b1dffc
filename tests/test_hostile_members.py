"""Shard members written to attack the reader give one line naming shard, sample and problem.

Each case rewrites a real shard with hand-made ``npy`` header bytes (the writer is below, on
purpose: ``numpy.save`` would refuse to write most of them) or a duplicated member, then
reads it through training and evaluation, on the direct path (local ``npy`` shards read
with ``preadv``) and on the generic path (``direct=False``: tar → webdataset → decode).
"""

import io
import re
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny, make_tiny_dataset

from engine.data.shards.loader import ShardReadError, eval_batches, train_batches
from engine.data.shards.manifest import load_manifest

TILE = 32
GOOD = {"descr": "|u1", "fortran_order": False, "shape": (TILE, TILE, 3)}
PAYLOAD = bytes(TILE * TILE * 3)


def npy_bytes(header: dict | str, payload: bytes = PAYLOAD, *, version: int = 1,
              length: int | None = None) -> bytes:  # fmt: skip
    """An ``npy`` member written by hand: magic, version, header length, header, payload.

    ``header`` is a dictionary (written with ``repr``, as numpy does) or any text;
    ``length`` overrides the header length field (a header claiming more than it holds).
    """
    text = (header if isinstance(header, str) else repr(header)).encode("latin1")
    prefix = 10 if version == 1 else 12
    text += b" " * (-(prefix + len(text) + 1) % 64) + b"\n"  # padded to 64 as numpy pads
    size = len(text) if length is None else length
    field = struct.pack("<H" if version == 1 else "<I", size)
    return b"\x93NUMPY" + bytes([version, 0]) + field + text + payload


def huge_png(side: int) -> bytes:
    """A real 32x32 RGB PNG whose header (with a valid CRC) claims ``side x side`` pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((TILE, TILE, 3), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", side, side)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    return bytes(data)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """One train shard per codec (npy, png) of the tiny dataset: 8 samples of 32x32."""
    root = tmp_path_factory.mktemp("hostile")
    data = make_tiny_dataset(root / "data", groups=1)
    out = {}
    for codec in ("npy", "png"):
        build_tiny(data, root / codec, val=0, test=0, samples_per_shard=100, image_codec=codec)
        out[codec] = root / codec
    return out


def _rewrite(shard: Path, suffix: str, member: bytes | None) -> None:
    """Every sample's ``suffix`` member replaced by ``member``, or (``None``) written twice."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            copies = [data]
            if info.name.endswith("." + suffix):
                copies = [data, data] if member is None else [member]
            for data in copies:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _read_all(manifest, direct: bool, workers: int = 0) -> None:
    """Every way a split is read: training batches and evaluation batches."""
    common = dict(num_workers=workers, pin_memory=False, direct=direct)
    list(train_batches(manifest, 2, 4, seed=0, rank=0, epoch=0, shuffle_buffer=1, **common))
    list(eval_batches(manifest, "train", 2, **common))


def _expect(manifest, shard: Path, message: str, direct: bool, workers: int = 0) -> None:
    pattern = rf"{re.escape(shard.name)}: sample Tile_0/part_\d/r\d+_c\d+: {message}"
    common = dict(num_workers=workers, pin_memory=False, direct=direct)
    for read in (
        lambda: train_batches(manifest, 2, 4, seed=0, rank=0, epoch=0, shuffle_buffer=1, **common),
        lambda: eval_batches(manifest, "train", 2, **common),
    ):
        with pytest.raises(ShardReadError, match=pattern) as caught:
            list(read())
        assert "\n" not in str(caught.value)


HOSTILE_NPY = [
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"shape": (10**6, 10**6, 3)}),
        r"image \(1000000, 1000000, 3\) is not 32x32x3 \(tile_size in the manifest\)",
        id="image-claims-3e12-elements",
    ),
    pytest.param(
        "mask.npy", npy_bytes(GOOD | {"shape": (10**6, 10**6)}, bytes(TILE * TILE)),
        r"mask \(1000000, 1000000\) is not 32x32", id="mask-claims-1e12-elements",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"shape": (TILE, TILE, 10**9)}),
        "image has 1000000000 bands, but the manifest lists 3", id="image-claims-1e9-bands",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"descr": "|O"}), "image is object, but the manifest's",
        id="object-dtype",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"descr": "<f8"}, bytes(8 * len(PAYLOAD))),
        "image is float64, but the manifest's bands are uint8", id="float64-dtype",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"fortran_order": True}),
        "image.npy is stored in Fortran order", id="fortran-order",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD, b"", length=5000),
        "image.npy: npy header of 5,010 bytes is longer than the member", id="header-past-member",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD, version=2, length=2**31),
        r"image.npy: npy header of 2,147,483,648 bytes \(at most 10,000\)", id="header-of-2GiB",
    ),
    pytest.param(
        "image.npy", b"\x00garbage" * 100, "image.npy is not an npy array", id="garbage",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"shape": (TILE, TILE, -3)}),
        "image.npy: npy header claims a negative dimension", id="negative-dimension",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD | {"extra": 1}),
        r"image.npy: malformed npy header \(Header does not contain the correct keys",
        id="extra-key",
    ),
    pytest.param(
        "mask.npy", npy_bytes(repr(GOOD)[:-1] + ", 'x': __import__('os').system('touch PWNED')}"),
        r"mask.npy: malformed npy header", id="code-in-header",
    ),
    pytest.param(
        "image.npy", npy_bytes(GOOD, PAYLOAD[:100]),
        r"image.npy is truncated \(100 of 3072 bytes\)", id="truncated-payload",
    ),
]  # fmt: skip


@pytest.mark.parametrize("suffix, member, message", HOSTILE_NPY)
def test_hostile_npy_headers_are_one_line_on_both_paths(shards, tmp_path, monkeypatch, suffix,
                                                        member, message):  # fmt: skip
    monkeypatch.chdir(tmp_path)  # where the code in a header would touch PWNED
    manifest = load_manifest(shards["npy"])
    shard = Path(manifest.split("train").shards[0])
    whole = shard.read_bytes()
    try:
        _rewrite(shard, suffix, member)
        for direct in (True, False):
            _expect(manifest, shard, message, direct)
    finally:
        shard.write_bytes(whole)
    assert not (tmp_path / "PWNED").exists()


def test_hostile_headers_in_loader_workers_stay_one_line(shards):
    manifest = load_manifest(shards["npy"])
    shard = Path(manifest.split("train").shards[0])
    whole = shard.read_bytes()
    try:
        _rewrite(shard, "image.npy", npy_bytes(GOOD | {"shape": (10**6, 10**6, 3)}))
        for direct in (True, False):  # threads, then DataLoader worker processes
            _expect(manifest, shard, r"image \(1000000, 1000000, 3\) is not 32x32x3", direct, 1)
    finally:
        shard.write_bytes(whole)


@pytest.mark.parametrize("codec", ["npy", "png"])
def test_a_member_twice_in_one_sample_is_named(shards, codec):
    manifest = load_manifest(shards[codec])
    shard = Path(manifest.split("train").shards[0])
    whole = shard.read_bytes()
    try:
        _rewrite(shard, f"image.{codec}", None)
        name = rf"Tile_0/part_\d/r\d+_c\d+\.image\.{codec}"
        message = f"member {name} appears twice"
        for direct in (True, False) if codec == "npy" else (False,):
            _expect(manifest, shard, message, direct)
    finally:
        shard.write_bytes(whole)


def test_picture_headers_claiming_other_sizes_are_refused_before_decoding(shards):
    manifest = load_manifest(shards["png"])
    shard = Path(manifest.split("train").shards[0])
    whole = shard.read_bytes()
    try:
        _rewrite(shard, "image.png", huge_png(4000))  # 16 M pixels: never decoded
        _expect(manifest, shard, r"image \(4000, 4000, 3\) is not 32x32x3", direct=False)
        _rewrite(shard, "image.png", huge_png(100_000))  # PIL's own limit answers first
        _expect(manifest, shard, r"image.png: Image size \(10000000000 pixels\) exceeds", False)
    finally:
        shard.write_bytes(whole)


def test_intact_shards_read_on_both_paths(shards):
    """The same shards untouched: both paths read every sample (the checks refuse nothing)."""
    for codec, paths in (("npy", (True, False)), ("png", (False,))):
        manifest = load_manifest(shards[codec])
        for direct in paths:
            _read_all(manifest, direct)
