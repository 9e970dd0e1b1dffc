"""Shards read from anywhere: HTTP, S3-compatible stores (moto), ``pipe:``; builds to ``s3://``.

Every server runs on 127.0.0.1 in this process (threads), started and stopped by fixtures.
"""

import importlib.util
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny, make_tiny_dataset, tiny_args
from launching import REPO, accelerate_command, cpu_env
from servers import QuietHandler as _Quiet
from servers import moto_s3
from servers import serve as _serve

from engine.data.shards.loader import read_sample, read_split
from engine.data.shards.manifest import ManifestError, load_manifest
from engine.data.shards.store import ShardStoreError, ShardUrl, filesystem
from engine.errors import UserError

FAST_RETRIES = {"TERRASEG_SHARD_RETRIES": "2", "TERRASEG_SHARD_BACKOFF": "0.05"}


class _Counting(_Quiet):
    """Records the path of every GET."""

    requests: list = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append(self.path)
        super().do_GET()


class _Dropping(_Quiet):
    """Sends the headers of a whole ``.tar`` then closes the socket after ``cut`` bytes, on the
    first request for each shard; with ``ranges``, answers ``Range: bytes=N-`` with 206."""

    cut = 3000
    ranges = False
    dropped: set = set()
    requests: list = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.requests.append((self.path, self.headers.get("Range")))
        file = Path(self.translate_path(self.path))
        if file.suffix != ".tar":
            return super().do_GET()
        data = file.read_bytes()
        start = 0
        spec = self.headers.get("Range")
        if self.ranges and spec and spec.startswith("bytes="):
            start = int(spec[len("bytes=") :].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path not in self.dropped:
            self.dropped.add(self.path)
            self.wfile.write(data[start : start + self.cut])
            self.wfile.flush()
            time.sleep(0.05)  # the client has the bytes before the connection drops
            self.close_connection = True
            self.connection.shutdown(2)
            return None
        self.wfile.write(data[start:])
        return None


@pytest.fixture
def http_shards(synthetic_shards):
    server, url = _serve(synthetic_shards.parent)
    yield f"{url}/{synthetic_shards.name}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fast_retries(monkeypatch):
    for key, value in FAST_RETRIES.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server for the module (see :func:`servers.moto_s3`)."""
    with moto_s3() as env:
        yield env


def _samples(manifest, split: str) -> list[tuple[str, bytes, bytes]]:
    return [
        (s.key, s.image.numpy().tobytes(), s.mask.numpy().tobytes())
        for s in read_split(manifest, split)
    ]


def test_eval_from_http_matches_the_local_folder_exactly_once(synthetic_shards, http_shards):
    from engine.evaluate.shard_eval import EvalSettings, evaluate_split

    local, remote = load_manifest(synthetic_shards), load_manifest(http_shards)
    assert isinstance(remote.root, ShardUrl) and remote.data == local.data
    assert str(remote.split("val").shards[0]).startswith("http://127.0.0.1:")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, local.num_classes, 3, padding=1)
    results = [
        evaluate_split(model, m, "val", EvalSettings(batch_size=4, num_workers=2)).confusion
        for m in (local, remote)
    ]
    assert int(results[0].sum()) > 0
    assert torch.equal(results[0], results[1])
    # every pixel of every sample counted once: the totals equal the split's labelled pixels
    tile = local.tile_size
    labelled = sum(int((s.mask != 255).sum()) for s in read_split(local, "val"))
    assert int(results[1].sum()) == labelled <= local.split("val").num_samples * tile * tile
    last = local.split("val").num_samples - 1  # show.py's read_sample, the last shard
    a, b = read_sample(local, "val", last), read_sample(remote, "val", last)
    assert a.key == b.key and torch.equal(a.image, b.image)


def test_show_draws_a_sample_from_a_url(http_shards, tmp_path):
    spec = importlib.util.spec_from_file_location("launch_show", REPO / "launch" / "show.py")
    show = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(show)
    out = tmp_path / "sample.png"
    assert (
        show.main(["--shards", http_shards, "--split", "val", "--index", "3", "--out", str(out)])
        == 0
    )
    assert out.stat().st_size > 0


@pytest.mark.parametrize("ranges", [True, False], ids=["range-resume", "reread-and-skip"])
def test_connection_dropped_mid_shard_resumes_without_duplicates(
    synthetic_shards, fast_retries, monkeypatch, ranges
):
    monkeypatch.setattr(_Dropping, "ranges", ranges)
    monkeypatch.setattr(_Dropping, "dropped", set())
    monkeypatch.setattr(_Dropping, "requests", [])
    server, url = _serve(synthetic_shards.parent, _Dropping)
    try:
        remote = load_manifest(f"{url}/{synthetic_shards.name}")
        got = _samples(remote, "train")
    finally:
        server.shutdown()
        server.server_close()
    assert got == _samples(load_manifest(synthetic_shards), "train")
    shards = remote.split("train").shards
    assert len(_Dropping.dropped) == len(shards), "every shard's first request was cut"
    gets = [r for p, r in _Dropping.requests if p.endswith(".tar")]
    assert len(gets) == 2 * len(shards)
    resumed = [int(r[len("bytes=") : -1]) for r in gets if r]  # re-opened where it stopped
    assert len(resumed) == len(shards) and all(0 < n <= _Dropping.cut for n in resumed)


def test_a_server_that_stays_down_fails_naming_the_url(synthetic_shards, fast_retries):
    server, url = _serve(synthetic_shards.parent)
    remote = load_manifest(f"{url}/{synthetic_shards.name}")
    server.shutdown()
    server.server_close()
    start = time.monotonic()
    with pytest.raises(ShardStoreError, match=r"http://127\.0\.0\.1:\d+/.*train-000000\.tar"):
        list(read_split(remote, "train"))
    assert time.monotonic() - start < 20
    with pytest.raises(ManifestError, match=r"http://127\.0\.0\.1:\d+/nowhere/dataset\.json"):
        load_manifest(f"{url}/nowhere")


def test_pipe_and_cache_read_the_same_samples(synthetic_shards, tmp_path, monkeypatch):
    expected = _samples(load_manifest(synthetic_shards), "val")
    assert _samples(load_manifest(f"pipe:cat {synthetic_shards}/{{}}"), "val") == expected
    monkeypatch.setattr(_Counting, "requests", [])
    monkeypatch.setenv("TERRASEG_SHARD_CACHE", str(tmp_path / "cache"))
    server, url = _serve(synthetic_shards, _Counting)
    try:
        remote = load_manifest(url)
        assert _samples(remote, "val") == expected
        shard_gets = [p for p in _Counting.requests if p.endswith(".tar")]
        assert len(shard_gets) == len(remote.split("val").shards)
        assert _samples(remote, "val") == expected  # now from the cache: no GET of a shard
        assert [p for p in _Counting.requests if p.endswith(".tar")] == shard_gets
    finally:
        server.shutdown()
        server.server_close()
    assert len(list((tmp_path / "cache").rglob("*.tar"))) == len(remote.split("val").shards)
    assert not list((tmp_path / "cache").rglob("*.partial"))


def _objects(prefix: str) -> dict[str, bytes]:
    fs = filesystem(prefix)
    fs.invalidate_cache()  # what the server holds now, not a listing s3fs cached earlier
    return {Path(p).name: fs.cat_file(p) for p in fs.find(prefix)}


def test_build_to_s3_is_byte_identical_to_a_local_build(tmp_path, s3_endpoint):
    data = make_tiny_dataset(tmp_path / "data")
    local = tmp_path / "local"
    build_tiny(data, local)
    build_tiny(data, "s3://shards/tiny")
    uploaded = _objects("s3://shards/tiny")
    on_disk = {p.name: p.read_bytes() for p in local.iterdir()}
    assert uploaded == on_disk
    remote = load_manifest("s3://shards/tiny")
    assert _samples(remote, "train") == _samples(load_manifest(local), "train")
    with pytest.raises(ShardStoreError, match="s3://shards/tiny: not empty"):
        build_tiny(data, "s3://shards/tiny")
    build_tiny(data, "s3://shards/tiny", overwrite=True)
    assert _objects("s3://shards/tiny") == on_disk
    fs = filesystem("s3://shards")
    fs.rm_file("s3://shards/tiny/dataset.json")  # as after an upload that failed midway
    build_tiny(data, "s3://shards/tiny", overwrite=True)  # only shards there: replaced
    assert _objects("s3://shards/tiny") == on_disk
    fs.pipe_file("s3://shards/tiny/notes.txt", b"mine")
    with pytest.raises(ShardStoreError, match=r"s3://shards/tiny: --overwrite .*notes\.txt"):
        build_tiny(data, "s3://shards/tiny", overwrite=True)
    assert fs.cat_file("s3://shards/tiny/notes.txt") == b"mine"
    with pytest.raises(ShardStoreError, match=r"http://127\.0\.0\.1:9/x: http .*read-only"):
        build_tiny(data, "http://127.0.0.1:9/x")
    with pytest.raises(ShardStoreError, match=r"s3://no-such-bucket/x/train-000000\.tar"):
        build_tiny(data, "s3://no-such-bucket/x")
    # a failed build uploads no manifest (here no shard either: the mix buffer held them all)
    broken = data / "Tile 1" / "masks" / "part_0.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match="part_0.png"):
        build_tiny(data, "s3://shards/broken")
    assert _objects("s3://shards/broken") == {}


def test_build_to_s3_uploads_each_shard_once_complete_and_no_manifest_if_it_fails(
    tmp_path, s3_endpoint
):
    data = make_tiny_dataset(tmp_path / "data")
    options = dict(val=0.0, test=0.0, samples_per_shard=2, mix_buffer=0, workers=1)
    local = tmp_path / "local"
    build_tiny(data, local, **options)  # 8 images of 2x2 tiles: 16 samples, 8 shards
    metas = []  # with no mix buffer the shards hold the images' tiles in the build's order
    for shard in load_manifest(local).split("train").shards:
        with tarfile.open(shard) as tar:
            metas += [
                json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")
            ]
    second = next(m for m in metas if m["image"] != metas[0]["image"])
    assert [m["image"] for m in metas[:4]] == [metas[0]["image"]] * 4 and metas[4] == second
    Path(second["mask"]).write_bytes(b"not a png")  # the build's 2nd image fails
    with pytest.raises(UserError, match=Path(second["mask"]).name):
        build_tiny(data, "s3://shards/streamed", **options)
    # the first image's two shards went up as each was complete; no manifest
    uploaded = _objects("s3://shards/streamed")
    assert set(uploaded) == {"train-000000.tar", "train-000001.tar"}
    assert all(uploaded[name] == (local / name).read_bytes() for name in uploaded)
    with pytest.raises(ManifestError, match=r"s3://shards/streamed/dataset\.json"):
        load_manifest("s3://shards/streamed")


def test_two_ranks_train_from_s3_in_lockstep(synthetic_shards, tmp_path, s3_endpoint):
    fs = filesystem("s3://shards")
    for file in sorted(synthetic_shards.iterdir()):
        fs.put_file(str(file), f"s3://shards/synthetic/{file.name}")
    run_dir = tmp_path / "run"
    command = accelerate_command(
        "tests/probes/train_fingerprint.py",
        "launch/configs/tiny-cpu.yaml",
        str(run_dir),
        *tiny_args("s3://shards/synthetic", "data.num_workers=1"),
    )
    env = cpu_env(**s3_endpoint, PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((run_dir / f"fingerprint-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 8


def test_s3_missing_key_is_not_found_at_once(s3_endpoint, fast_retries, tmp_path, monkeypatch):
    from engine.data.shards.store import read_bytes, tar_members

    url = "s3://shards/absent/train-000000.tar"
    with pytest.raises(ShardStoreError, match=rf"^{url}: not found$"):
        read_bytes(url)
    monkeypatch.setenv("TERRASEG_SHARD_CACHE", str(tmp_path / "cache"))  # the size lookup
    with pytest.raises(ShardStoreError, match=rf"^{url}: not found$"):
        list(tar_members(url))


def test_s3_object_replaced_mid_read_fails_on_the_conditional_reopen(s3_endpoint, fast_retries):
    from engine.data.shards.store import RetryingReader, ShardReadError

    fs = filesystem("s3://shards")
    url = "s3://shards/changing/train-000000.tar"
    fs.pipe_file(url, bytes(range(256)) * 64)
    with RetryingReader(url) as reader:
        assert reader.read(1000) == bytes(range(256)) * 3 + bytes(range(232))
        first = reader.version.etag
        fs.pipe_file(url, bytes(range(256))[::-1] * 64)  # same size, new ETag
        reader._close_stream()  # as a dropped connection: the next read re-opens at byte 1000
        with pytest.raises(ShardReadError, match=rf"^{url}: the object changed while it was "
                           rf"read \(ETag {first} no longer matches\)$"):  # fmt: skip
            reader.read(1000)
