"""A shard folder's manifest is data: plain shard names, a bounded strict read, a checked
schema, and per-shard SHA-256 digests recorded at build that ``verify_shards.py`` checks."""

import hashlib
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import build_tiny, make_tiny_dataset
from servers import QuietHandler, moto_s3, served

from engine.data.build.upload import _SHARD_NAME
from engine.data.shards.manifest import ManifestError, load_manifest, shard_name

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shards(tmp_path) -> Path:
    """A fresh tiny shard folder (train, val, test) with digests."""
    build_tiny(make_tiny_dataset(tmp_path / "data"), tmp_path / "shards")
    return tmp_path / "shards"


def _edit(folder: Path, change) -> dict:
    path = folder / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def _verify(capsys, location) -> tuple[int, list[str], str]:
    code = _script("verify_shards").main([str(location)])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.strip()


# ---------------------------------------------------------------- shard names


BAD_NAMES = ["a/b.tar", "../x.tar", "pipe:x", "http://h/x.tar", "x.tar; touch M",
             "$(touch M).tar", " x.tar", "-x.tar", ".x.tar", "x\\y.tar", "x\n.tar"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_shard_name_that_is_not_a_plain_file_name_is_refused_and_never_run(
    shards, tmp_path, monkeypatch, bad
):
    monkeypatch.chdir(tmp_path)  # where a command in the name would create M
    (shards / bad.replace("/", "_")).write_bytes(b"")  # a file by that name does not help

    def rename(data):
        data["splits"]["val"]["shards"][0] = bad

    _edit(shards, rename)
    pattern = r"dataset\.json: splits\['val'\]\.shards: .* is not a plain file name"
    with pytest.raises(ManifestError, match=pattern) as caught:
        load_manifest(shards)
    assert repr(bad)[:60] in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ManifestError, match=pattern):
        load_manifest(f"pipe:cat {shards}/{{}}")
    assert not (tmp_path / "M").exists()


def test_the_builders_names_are_plain_file_names(shards):
    manifest = load_manifest(shards)
    names = [s.name for split in ("train", "val", "test") for s in manifest.split(split).shards]
    assert names and names[0] == shard_name("train", 0) == "train-000000.tar"
    assert all(_SHARD_NAME.match(n) for n in names)  # what an upload's --overwrite replaces

    def odd_but_plain(data):
        (shards / "_A.b-1.TAR").write_bytes((shards / names[0]).read_bytes())
        data["splits"]["train"]["shards"][0] = "_A.b-1.TAR"

    _edit(shards, odd_but_plain)
    assert load_manifest(shards).split("train").shards[0].name == "_A.b-1.TAR"


@pytest.mark.slow
def test_evaluate_refuses_a_command_in_a_shard_name_with_one_line(shards, tmp_path):
    _edit(shards, lambda d: d["splits"]["test"]["shards"].__setitem__(0, "x.tar; touch M"))
    done = subprocess.run(
        [sys.executable, str(REPO / "launch" / "evaluate.py"), "--model", str(tmp_path / "run"),
         "--shards", f"pipe:cat {shards}/{{}}", "--out", str(tmp_path / "eval")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "'x.tar; touch M' is not a plain file name" in lines[0]
    assert not (tmp_path / "M").exists()


# ---------------------------------------------------------------- bounded read, schema


def test_an_oversize_or_nan_manifest_is_refused(shards, monkeypatch):
    size = (shards / "dataset.json").stat().st_size
    monkeypatch.setenv("TERRASEG_MAX_METADATA_BYTES", str(size - 1))
    with pytest.raises(ManifestError, match=rf"dataset\.json: {size} bytes is over the {size - 1}"):
        load_manifest(shards)
    with pytest.raises(ManifestError, match=rf"dataset\.json: \d+ bytes is over the {size - 1}"):
        load_manifest(f"pipe:cat {shards}/{{}}")
    monkeypatch.delenv("TERRASEG_MAX_METADATA_BYTES")
    text = (shards / "dataset.json").read_text()
    (shards / "dataset.json").write_text(text.replace('"mean": ', '"mean": NaN, "x": ', 1))
    with pytest.raises(ManifestError, match=r"dataset\.json: not valid JSON \(NaN is not JSON\)"):
        load_manifest(shards)


class _Endless(QuietHandler):
    """Answers ``dataset.json`` with a 1 GiB body of spaces, sent until the client leaves."""

    sent = 0
    LENGTH = 1 << 30

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(self.LENGTH))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.do_HEAD()
        block = b" " * (1 << 16)
        try:
            for _ in range(self.LENGTH // len(block)):  # bounded; ends when the client leaves
                self.wfile.write(block)
                type(self).sent += len(block)
        except OSError:
            pass


def test_a_huge_remote_manifest_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("TERRASEG_MAX_METADATA_BYTES", "100000")
    monkeypatch.setattr(_Endless, "sent", 0)
    with served(tmp_path, _Endless) as url:
        with pytest.raises(ManifestError, match=r"dataset\.json: 100001 bytes is over the 100000"):
            load_manifest(url)
    assert _Endless.sent < 64 << 20  # the rest of the 1 GiB was never read


def _set(path: str, value):
    def change(data):
        *keys, last = path.split(".")
        target = data
        for key in keys:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value

    return change


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("classes", [{"name": f"c{i}", "color": "#000000"} for i in range(256)], "at most 255"),
        ("classes.0.color", "red", "class colour 'red' is not #RRGGBB"),
        ("tile_size", 70000, r"tile_size 70000 must be an integer in 1\.\.65536"),
        ("tile_size", 32.0, r"tile_size 32\.0 must be an integer"),
        ("bands", [], r"bands must be a list of 1\.\.1024"),
        ("bands", [{"name": "b"}] * 1025, r"bands must be a list of 1\.\.1024"),
        ("bands.0.std", -1, r"bands\[0\]: mean and std must be finite numbers, std >= 0"),
        ("bands.0.display", [0, "x"], r"bands\[0\]\.display must be \[low, high\]"),
        ("class_pixels.train", [1, 2], "class_pixels must map each split to 3 non-negative"),
        ("ignore_pixels.train", -5, "ignore_pixels must map each split to a non-negative"),
        ("split", {"by": "magic"}, "split must be a mapping with by 'group' or 'blocks'"),
        ("splits.train.groups", [1], r"splits\['train'\]\.groups must be a list of group names"),
        ("splits.train.shard_samples", [True], "shard_samples must be a list of non-negative"),
        ("splits.train.shard_sha256", ["0" * 64], r"shard_sha256 must be a list of \d+ entries"),
        ("splits.train.shard_sha256.0", "A" * 64, r"shard_sha256 entry 'A+' is not 64 lower-hex"),
        ("splits.train.shard_sha256.0", 7, r"shard_sha256 entry '7' is not 64 lower-hex"),
        ("splits.train.shard_bytes.0", -1, r"shard_bytes entry '-1' is not a byte count"),
        ("splits.train.shard_bytes.0", "10240", r"shard_bytes entry '10240' is not a byte count"),
        ("splits.train.shard_bytes", {}, r"shard_bytes must be a list of \d+ entries"),
    ],
)
def test_manifest_fields_are_type_and_range_checked(shards, path, value, message):
    _edit(shards, _set(path, value))
    with pytest.raises(ManifestError, match=rf"dataset\.json: .*{message}"):
        load_manifest(shards)


# ---------------------------------------------------------------- digests recorded at build


def test_the_manifest_records_each_shards_sha256_and_size(shards):
    manifest = load_manifest(shards)
    for split in ("train", "val", "test"):
        info = manifest.split(split)
        assert len(info.shard_sha256) == len(info.shard_bytes) == len(info.shards) > 0
        for shard, digest, size in zip(info.shards, info.shard_sha256, info.shard_bytes):
            data = shard.read_bytes()
            assert digest == hashlib.sha256(data).hexdigest() and size == len(data)


def test_a_shard_of_another_size_is_refused_and_old_manifests_still_load(shards):
    shard = shards / "val-000000.tar"
    size = shard.stat().st_size
    with open(shard, "ab") as handle:
        handle.write(b"\0" * 512)
    message = rf"dataset\.json: shard val-000000\.tar of split 'val' is {size + 512} bytes, "
    with pytest.raises(ManifestError, match=rf"{message}the manifest records {size} "):
        load_manifest(shards)

    def forget(data):
        for info in data["splits"].values():
            del info["shard_sha256"], info["shard_bytes"]

    _edit(shards, forget)  # a manifest written before digests were recorded
    info = load_manifest(shards).split("val")
    assert info.shard_sha256 == () and info.shard_bytes == ()
    _edit(shards, _set("splits.val.shard_bytes", [None] * len(info.shards)))
    assert load_manifest(shards).split("val").shard_bytes == (None,) * len(info.shards)


# ---------------------------------------------------------------- verify_shards.py


def _flip_a_member_byte(shard: Path) -> None:
    """Change one byte inside the first member's data: the tar stays valid."""
    with tarfile.open(shard) as tar:
        offset = tar.getmembers()[0].offset_data + 10
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_verify_passes_a_built_folder_and_names_a_changed_shard(shards, capsys):
    count = sum(len(load_manifest(shards).split(s).shards) for s in ("train", "val", "test"))
    code, lines, err = _verify(capsys, shards)
    assert code == 0 and not err
    assert len(lines) == count + 1 and all(line.startswith("ok ") for line in lines[:-1])
    assert lines[-1] == f"{count} of {count} shards match {shards}"

    shard = shards / "train-000001.tar"
    expected = hashlib.sha256(shard.read_bytes()).hexdigest()
    _flip_a_member_byte(shard)
    with tarfile.open(shard) as tar:
        assert tar.getmembers()  # still a valid tar: only the digest can tell
    actual = hashlib.sha256(shard.read_bytes()).hexdigest()
    code, lines, err = _verify(capsys, shards)
    assert code == 1 and not err
    bad = [line for line in lines if line.startswith("MISMATCH")]
    size = shard.stat().st_size
    assert bad == [
        f"MISMATCH train-000001.tar (train): sha256 {actual} (manifest {expected}), "
        f"{size} bytes (manifest {size})"
    ]
    assert lines[-1] == f"{count - 1} of {count} shards match {shards}"
    (shards / "val-000000.tar").unlink()  # a missing shard is reported too, not a stop
    (shards / "test-000000.tar").write_bytes(b"short")
    code, lines, err = _verify(capsys, shards)
    assert code == 1 and not err and lines[-1] == f"{count - 3} of {count} shards match {shards}"
    assert any(line.startswith("MISMATCH val-000000.tar (val): cannot read it: ") for line in lines)
    assert any(line.startswith("MISMATCH test-000000.tar (test): sha256 ") for line in lines)


def test_verify_over_http_and_of_a_build_uploaded_to_s3(shards, tmp_path, capsys):
    with served(shards.parent) as url:
        code, lines, err = _verify(capsys, f"{url}/shards")
    assert code == 0 and not err and lines[0].startswith("ok train-000000.tar (train) sha256 ")
    with moto_s3():
        build_tiny(make_tiny_dataset(tmp_path / "data"), "s3://shards/verified")
        code, lines, err = _verify(capsys, "s3://shards/verified")
        assert code == 0 and "error" not in err  # (moto logs its requests on stderr)
        assert lines[-1].endswith("shards match s3://shards/verified")
        assert len(lines) > 3


def test_verify_refuses_bad_input_with_one_line(shards, tmp_path, capsys):
    code, lines, err = _verify(capsys, tmp_path / "nowhere")
    assert code == 2 and err == f"error: {tmp_path / 'nowhere'}: shard folder not found"

    def forget(data):
        del data["splits"]["train"]["shard_sha256"]

    _edit(shards, forget)
    code, lines, err = _verify(capsys, shards)
    assert code == 2 and not lines
    assert err == (
        f"error: {shards / 'dataset.json'}: split 'train' records no shard digests "
        "(shard_sha256); rebuild the shards with this terraseg version to verify them"
    )
