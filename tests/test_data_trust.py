"""The data stage under hostile files and faults (issue #12): nothing lost, nothing trusted."""

import errno
import io
import json
import os
import runpy
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import build_tiny, make_tiny_dataset, write_pair
from PIL import Image, ImageOps

import engine.data.build.builder as shard_builder
from engine.data.build.builder import BuildOptions, build_shards
from engine.data.build.output import BuildError, BuildOutput, ShardTar
from engine.data.shards.loader import ShardReadError, eval_batches, read_split, train_batches
from engine.data.shards.manifest import ManifestError, load_manifest
from engine.data.sources.classes import load_classes
from engine.data.sources.imageio import read_image, read_mask_values
from engine.data.sources.pairing import pair_by_glob
from engine.data.sources.pictures import ImageReadError
from engine.data.sources.rasters import RasterError, open_raster, read_index_mask

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, str(ROOT / "launch" / "build_shards.py")]


def cli(root: Path, out: Path, *extra: str, classes: Path | None = None) -> list[str]:
    return CLI + [
        "--images", str(root / "*/images/*.png"), "--masks", str(root / "*/masks/*.png"),
        "--classes", str(classes or root / "classes.yaml"), "--out", str(out), "--tile", "32",
        *extra,
    ]  # fmt: skip


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def run_main(args: list[str], capsys, monkeypatch) -> subprocess.CompletedProcess:
    """Run ``launch/build_shards.py``'s ``main`` in this process (no interpreter start-up)."""
    main = runpy.run_path(args[1])["main"]
    monkeypatch.setattr(sys, "argv", args[1:])
    code = main()
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if "building shards" not in line]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
        result.returncode,
        result.stderr,
    )
    return lines[0]


# ---------------------------------------------------------------- 1. nothing deleted or lost


def test_overwrite_replaces_only_terraseg_shard_folders_or_empty_ones(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", groups=2)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(BuildError, match="neither, so it is left alone"):
        build_tiny(root, root, val=0, test=0, overwrite=True)  # --out = the input folder
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    (tmp_path / "empty").mkdir()
    build_tiny(root, tmp_path / "empty", val=0, test=0, overwrite=True)
    build_tiny(root, tmp_path / "empty", val=0, test=0, overwrite=True)  # its own output
    assert load_manifest(tmp_path / "empty").split("train").num_samples == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "empty"]  # no lock, no staging


def test_a_second_build_into_the_same_out_is_refused(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", groups=2)
    with BuildOutput(tmp_path / "out", overwrite=False):  # a build in progress holds the lock
        with pytest.raises(BuildError, match=r"another build is writing .*\.out\.lock"):
            build_tiny(root, tmp_path / "out", val=0, test=0)
    # Two real builds at once: they cannot both succeed.
    runs = [subprocess.Popen(cli(root, tmp_path / "race", "--val", "0", "--test", "0"),
                             env=os.environ | {"PYTHONPATH": str(ROOT)}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)]  # fmt: skip
    results = [(run.communicate(timeout=120)[1], run.returncode)[::-1] for run in runs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    assert load_manifest(tmp_path / "race").split("train").num_samples == 16


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _grandchildren(pid: int) -> list[int]:
    return [grandchild for child in _children(pid) for grandchild in _children(child)]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_build_takes_its_workers_and_leftovers_are_cleaned(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for k in range(6):
        mask = np.zeros((512, 512, 3), np.uint8)
        write_pair(root, f"g{k}", "a", rng.integers(0, 256, (512, 512, 3), np.uint8), mask)
    (root / "classes.yaml").write_text(
        yaml.safe_dump({"classes": [{"name": "x", "value": "#000000"}]})
    )
    args = cli(root, tmp_path / "out", "--workers", "2", "--image-codec", "png", "--val", "0",
               "--test", "0")  # fmt: skip
    build = subprocess.Popen(args, env=os.environ | {"PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(workers := _grandchildren(build.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    helpers = _children(build.pid)  # the forkserver the workers come from, its resource tracker
    try:
        build.send_signal(signal.SIGSTOP)  # freeze it mid-build, then kill it outright
        assert len(workers) == 2 and build.poll() is None, "the build ended before it was killed"
        assert list(tmp_path.glob(".out.building-*")), "no staging folder mid-build"
        build.kill()
        build.wait(10)
        deadline = time.monotonic() + 10
        while any(map(_alive, workers + helpers)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(_alive, workers)), "worker processes outlived the killed build"
        assert not any(map(_alive, helpers)), "the forkserver outlived the killed build"
    finally:
        build.kill()
        for pid in filter(_alive, workers + helpers):  # do not leave orphans behind if it failed
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "out").exists()
    # The next build into the same --out recognises the leftovers and removes them.
    pairs = pair_by_glob(str(root / "*/images/*.png"), str(root / "*/masks/*.png"))
    options = BuildOptions(tile=256, val=0, test=0)
    build_shards(pairs, load_classes(root / "classes.yaml"), tmp_path / "out", options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    # SIGTERM (a scheduler, `kill`): the build cleans up and the previous output survives.
    build = subprocess.Popen([*args, "--overwrite"], env=os.environ | {"PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while len(workers := _grandchildren(build.pid)) < 2 and build.poll() is None:
            time.sleep(0.005)
        build.terminate()
        assert build.wait(30) == 128 + signal.SIGTERM
    finally:
        build.kill()
    deadline = time.monotonic() + 10  # the death signal reaches orphaned workers a moment later
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(map(_alive, workers))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]
    assert load_manifest(tmp_path / "out").tile_size == 256


class _FullDisk(io.FileIO):
    """A real file on which writing past 4 KiB fails as a full disk does."""

    def write(self, data):
        if self.tell() + len(data) > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        return super().write(data)


def test_full_disk_removes_the_partial_build_and_says_so(tmp_path, monkeypatch):
    root = make_tiny_dataset(tmp_path / "data", groups=2)
    opened = []

    def open_tar(path):
        opened.append(path)
        return ShardTar(path, _FullDisk(path, "w"))

    monkeypatch.setattr(shard_builder, "_open_tar", open_tar)
    with pytest.raises(BuildError, match=r"\.tar: no space left on device while building .*out"):
        build_tiny(root, tmp_path / "out", val=0, test=0)
    assert opened and not any(p.exists() for p in opened)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ---------------------------------------------------------------- 2. one image reader


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_cmyk_and_exif_images_read_the_same_in_build_and_predict(tmp_path):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), np.uint8))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgb.save(tmp_path / "rotated.jpg", exif=_exif(6))
    for name in ("cmyk.jpg", "rotated.jpg"):
        with Image.open(tmp_path / name) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        built = read_image(tmp_path / name)
        with open_raster(tmp_path / name, backend="pil") as reader:
            predicted = reader.read(0, reader.shape[0], 0, reader.shape[1])
        assert np.array_equal(built, expected) and np.array_equal(predicted, expected), name
    assert read_image(tmp_path / "rotated.jpg").shape == (40, 24, 3)  # upright


def test_exif_rotated_image_pairs_with_an_upright_mask_and_says_why_when_not(tmp_path):
    root = tmp_path / "data"
    image = np.zeros((24, 40, 3), np.uint8)
    image[:, :20] = 200  # the left half as stored; shown upright (EXIF 8), the bottom half
    (root / "g/images").mkdir(parents=True)
    (root / "g/masks").mkdir(parents=True)
    Image.fromarray(image).save(root / "g/images/a.png", exif=_exif(8))
    upright = np.rot90(image)  # orientation 8: shown turned 90° counter-clockwise... or not
    with Image.open(root / "g/images/a.png") as opened:
        upright = np.asarray(ImageOps.exif_transpose(opened))  # whichever way PIL turns it
    mask = np.where(upright[..., 0] > 100, 1, 0).astype(np.uint8)
    Image.fromarray(mask).save(root / "g/masks/a.png")
    classes = {"encoding": "index", "classes": [{"name": "dark", "value": 0},
                                                {"name": "bright", "value": 1}]}  # fmt: skip
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    pairs = pair_by_glob(str(root / "*/images/*.png"), str(root / "*/masks/*.png"))
    options = BuildOptions(tile=64, val=0, test=0, image_codec="npy")
    build_shards(pairs, load_classes(root / "classes.yaml"), tmp_path / "out", options)
    (sample,) = read_split(load_manifest(tmp_path / "out"), "train")
    valid = sample.mask != 255
    bright = sample.image[0] > 100
    assert valid.sum() == 24 * 40 and bool((bright[valid] == (sample.mask[valid] == 1)).all())
    Image.fromarray(np.where(image[..., 0] > 100, 1, 0).astype(np.uint8)).save(
        root / "g/masks/a.png"
    )  # a mask of the stored orientation: a named size error that explains the EXIF tag
    with pytest.raises(BuildError, match=r"a\.png: mask is 40x24.*EXIF orientation 8"):
        build_shards(pairs, load_classes(root / "classes.yaml"), tmp_path / "o2", options)


def test_transparent_mask_pixels_become_ignore_and_partial_alpha_is_refused(tmp_path):
    root = make_tiny_dataset(tmp_path / "data", groups=1, per_group=1, size=(32, 32))
    path = root / "Tile 0/masks/part_0.png"
    rgba = np.asarray(Image.open(path).convert("RGBA")).copy()
    rgba[20:, 20:] = (7, 7, 7, 0)  # a colour no class has, fully transparent
    Image.fromarray(rgba).save(path)
    build_tiny(root, tmp_path / "out", val=0, test=0)
    (sample,) = read_split(load_manifest(tmp_path / "out"), "train")
    assert bool((sample.mask[20:, 20:] == 255).all()) and bool((sample.mask[:20, 3:] < 255).all())
    rgba[0, 5, 3] = 128
    Image.fromarray(rgba).save(path)
    with pytest.raises(ImageReadError, match=r"part_0\.png: 1 partly transparent mask pixels"):
        read_mask_values(path, "rgb")


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _tiff_header(width: int, height: int, bands: int = 1) -> bytes:
    """A TIFF header for ``width x height`` uint8 pixels, with no pixel data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1),
            (262, 3, 2 if bands == 3 else 1), (273, 4, 8), (277, 3, bands), (278, 4, height),
            (279, 4, 2**32 - 1)]  # fmt: skip
    ifd = struct.pack("<H", len(tags))
    for code, kind, value in tags:
        ifd += struct.pack("<HHI", code, kind, 1) + struct.pack("<I", value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_a_huge_header_is_refused_before_decoding_naming_the_file(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (tmp_path / "bomb.tif").write_bytes(_tiff_header(100_000, 100_000))
    for name in ("bomb.png", "bomb.tif"):
        with pytest.raises(ImageReadError, match=rf"{name}: header claims 100000x100000"):
            read_image(tmp_path / name)
        with pytest.raises(ImageReadError, match=rf"{name}: header claims 100000x100000"):
            read_mask_values(tmp_path / name, "index")
    with pytest.raises(RasterError, match=r"bomb\.png: header claims 100000x100000"):
        open_raster(tmp_path / "bomb.png")
    with pytest.raises(RasterError, match=r"bomb\.png: header claims 100000x100000"):
        read_index_mask(tmp_path / "bomb.png")
    (tmp_path / "big.tif").write_bytes(_tiff_header(100_000, 100_000, bands=3))
    with open_raster(tmp_path / "big.tif") as reader:  # windowed: no limit
        with pytest.raises(RasterError, match=r"big\.tif: cannot read rows 0:10"):
            reader.read(0, 10, 0, 10)
    Image.new("RGB", (20, 10)).save(tmp_path / "small.png")
    assert read_image(tmp_path / "small.png").shape == (10, 20, 3)
    monkeypatch.setenv("TERRASEG_MAX_PIXELS", "199")
    with pytest.raises(ImageReadError, match=r"small\.png: .* = 200 pixels, over the limit of 199"):
        read_image(tmp_path / "small.png")


# ---------------------------------------------------------------- 3. shards verified as read


def _tiny_shards(tmp_path: Path) -> Path:
    build_tiny(make_tiny_dataset(tmp_path / "data", groups=2), tmp_path / "s", val=0, test=0,
               image_codec="npy")  # fmt: skip
    return tmp_path / "s"


def _forget_digests(folder: Path) -> Path:
    """Make the manifest one written before digests were recorded (``shard_bytes`` would
    refuse a changed shard up front), so the reader's own checks are what is tested."""
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    for split in data["splits"].values():
        del split["shard_sha256"], split["shard_bytes"]
    path.write_text(json.dumps(data))
    return folder


def _evaluate(folder: Path, workers: int = 0) -> int:
    manifest = load_manifest(folder)
    batches = eval_batches(manifest, "train", 4, num_workers=workers, pin_memory=False)
    return sum(len(batch.keys) for batch in batches)


def _rewrite(shard: Path, change) -> None:
    """Rewrite a shard tar, passing each member's (name, bytes) through ``change``."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members:
            data = change(member.name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_truncated_shards_are_named(tmp_path):
    folder = _tiny_shards(tmp_path)
    assert _evaluate(folder) == 16
    shard = folder / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    whole = shard.read_bytes()
    shard.write_bytes(whole[: members[6].offset])  # two whole samples, at a sample boundary
    size = rf"train-000000\.tar of split 'train' is {members[6].offset} bytes, the manifest .*"
    with pytest.raises(ManifestError, match=rf"dataset\.json: shard {size}{len(whole)}"):
        load_manifest(folder)  # the recorded size catches it before any read
    _forget_digests(folder)
    with pytest.raises(ShardReadError, match=r"train-000000\.tar: holds 2 samples but its mani"):
        _evaluate(folder)
    shard.write_bytes(whole[: members[6].offset_data + 100])  # inside a member
    with pytest.raises(ShardReadError, match=r"train-000000\.tar: cannot read the tar"):
        _evaluate(folder)


def test_manifest_counts_must_match_the_shards(tmp_path):
    folder = _tiny_shards(tmp_path)
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    counts = data["splits"]["train"]["shard_samples"]
    cases = ((counts[0] - 2, "holds more samples than the 3"),
             (counts[0] + 1, "holds 5 samples but its manifest lists 6"))  # fmt: skip
    for wrong, message in cases:
        split = data["splits"]["train"] | {"shard_samples": [wrong, *counts[1:]]}
        split["num_samples"] = sum(split["shard_samples"])
        path.write_text(json.dumps(data | {"splits": {"train": split}}))
        with pytest.raises(ShardReadError, match=rf"train-000000\.tar: {message}"):
            _evaluate(folder)
        with pytest.raises(ShardReadError, match=r"train-000000\.tar: "):
            list(read_split(load_manifest(folder), "train"))


def test_member_types_shapes_and_mask_values_are_checked(tmp_path):
    folder = _forget_digests(_tiny_shards(tmp_path))
    shard = folder / "train-000001.tar"
    whole = shard.read_bytes()

    def to_float(name, data):
        if not name.endswith("image.npy"):
            return data
        buffer = io.BytesIO()
        np.save(buffer, np.load(io.BytesIO(data)).astype(np.float64))
        return buffer.getvalue()

    _rewrite(shard, to_float)
    with pytest.raises(ShardReadError, match=r"train-000001\.tar: sample .*: image is float64"):
        _evaluate(folder)
    shard.write_bytes(whole)
    first = []

    def value_77(name, data):
        if not name.endswith("mask.npy") or first:
            return data
        first.append(name.rsplit(".", 2)[0])
        mask = np.load(io.BytesIO(data)).copy()
        mask[5, 5] = 77
        buffer = io.BytesIO()
        np.save(buffer, mask)
        return buffer.getvalue()

    _rewrite(shard, value_77)
    pattern = rf"train-000001\.tar: sample {first[0] if first else ''}.*mask values \[77\]"
    with pytest.raises(ShardReadError, match=pattern):
        _evaluate(folder)
    with pytest.raises(ShardReadError) as caught:  # in a DataLoader worker: still one line
        _evaluate(folder, workers=1)
    assert "\n" not in str(caught.value) and str(caught.value).endswith("nor ignore (255)")
    with pytest.raises(ShardReadError, match=r"mask values \[77\] are neither a class \(0\.\.2\)"):
        list(train_batches(load_manifest(folder), 4, 40, seed=0, rank=0, epoch=0, num_workers=0,
                           shuffle_buffer=1, pin_memory=False))  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": 3}, "classes must be a non-empty list"),
        ({"tile_size": "32"}, r"tile_size '32' must be an integer in 1\.\.65536"),
        ({"version": 2, "mean": [0.5]}, "mean must be a list of 3 numbers"),
        ({"bands": [{"name": "red", "dtype": "int32"}]}, r"bands\[0\]\.dtype 'int32' is not one"),
        ({"rgb_bands": [0, 1, 3]}, r"rgb_bands \[0, 1, 3\] must be null or 3 band indices below 3"),
        ({"splits": []}, "splits must be a mapping"),
        ({"train": {"num_samples": "x"}}, r"num_samples 'x' is not a non-negative integer"),
        ({"train": {"shard_samples": [-1, 0, 0, 0]}}, "shard_samples must be a list of non-neg"),
        ({"train": {"shards": ["../elsewhere.tar"]}}, "is not a plain file name inside the shard"),
        ({"version": "2"}, "version '2' is not a positive integer"),
    ],
)
def test_manifest_types_are_checked(tmp_path, change, message):
    build_tiny(make_tiny_dataset(tmp_path / "data", groups=1), tmp_path / "s", val=0, test=0)
    path = tmp_path / "s" / "dataset.json"
    data = json.loads(path.read_text())
    if "train" in change:
        data["splits"]["train"] |= change["train"]
    else:
        data |= change
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"dataset\.json: .*{message}"):
        load_manifest(tmp_path / "s")


def test_a_missing_shard_folder_is_one_line(tmp_path):
    with pytest.raises(ManifestError, match=r"nowhere: shard folder not found"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ManifestError, match=r"file: is a file, not a shard folder"):
        load_manifest(tmp_path / "file")


# ---------------------------------------------------------------- 4. one-line CLI errors


def test_build_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    root = make_tiny_dataset(tmp_path / "data", groups=3)
    (tmp_path / "five.yaml").write_text("classes: 5\n")
    (tmp_path / "colour.yaml").write_text(
        'classes:\n  - {name: a, value: "#000000", color: "#GGHHII"}\n'
    )
    (tmp_path / "a_file").write_text("x")
    cases = [
        (cli(root, tmp_path / "o", "--tile", "0") , "--tile 0: must be an integer >= 1"),
        (cli(root, tmp_path / "o", "--tile", "-5"), "--tile -5: must be an integer >= 1"),
        (cli(root, tmp_path / "o", "--band-files", "red,2"),
         "--band-files ('red', 2): give band names, not indices"),
        (cli(root, tmp_path / "o", classes=tmp_path / "five.yaml"),
         "five.yaml: 'classes' must be a list"),
        (cli(root, tmp_path / "o", classes=tmp_path / "colour.yaml"),
         "colour.yaml: classes[0]: bad color '#GGHHII'"),
        (cli(root, tmp_path / "a_file"), "a_file: --out is a file"),
        (cli(root, tmp_path / "a_file" / "sub"), "a_file/sub: cannot create the output's parent"),
    ]  # fmt: skip
    for args, message in cases:
        assert message in one_line_error(run_main(args, capsys, monkeypatch)), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "colour.yaml", "data",
                                                          "five.yaml"]  # fmt: skip
