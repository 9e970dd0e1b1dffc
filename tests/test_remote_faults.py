"""Remote reads that fail: nothing runs a shell, every request ends, statuses are reported as
they are, an object never changes mid-read unnoticed, digests and the cache hold.

Servers are :class:`servers_faulty.FaultyServer` on 127.0.0.1 (threads, they stop by
themselves); deadlines and backoffs are tiny so each test takes a second or two.
"""

import ast
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from servers_faulty import FaultyServer

from engine.data.shards import remote_stream
from engine.data.shards.loader import eval_batches, read_split, train_batches
from engine.data.shards.manifest import Manifest, load_manifest
from engine.data.shards.store import (
    RetryingReader,
    ShardDigest,
    ShardReadError,
    ShardStoreError,
    ShardUrl,
    cached_copy,
    open_shard_stream,
    read_bytes,
    tar_members,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = {
    "TERRASEG_SHARD_RETRIES": "2",
    "TERRASEG_SHARD_BACKOFF": "0.05",
    "TERRASEG_SHARD_DEADLINE": "0.5",
}
BLOB = bytes(range(256)) * 16  # 4096 bytes


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TERRASEG_SHARD_CACHE", raising=False)


# -- pipe: no shell ---------------------------------------------------------------------


def test_a_pipe_name_with_shell_syntax_is_one_argument_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where `touch M` would create its marker
    root = ShardUrl(f"pipe:cat {tmp_path}/{{}}")
    (tmp_path / "a b; touch M").write_bytes(b"the file's bytes")
    assert read_bytes(root / "a b; touch M") == b"the file's bytes"
    with pytest.raises(ShardStoreError) as failed:
        read_bytes(root / "x; touch M $(touch M) `touch M`")
    message = str(failed.value)
    assert "\n" not in message and "command exited with status 1" in message
    assert not (tmp_path / "M").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b; touch M"]
    # no {}: the name is appended to the last argument, as documented
    assert read_bytes(ShardUrl(f"pipe:cat {tmp_path}/") / "a b; touch M") == b"the file's bytes"


def _shell_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            shell_off = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            if keyword.arg == "shell" and not shell_off:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        name = ast.unparse(node.func)
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_nothing_runs_a_shell():
    files = [
        p
        for folder in ("engine", "archs", "launch", "bench")
        for p in (ROOT / folder).rglob("*.py")
    ]
    assert len(files) > 50
    assert [hit for path in files for hit in _shell_calls(path)] == []


# -- every request ends -----------------------------------------------------------------


def test_a_trickling_server_times_out_after_the_retries_not_never(monkeypatch):
    monkeypatch.setenv("TERRASEG_SHARD_DEADLINE", "0.3")
    with FaultyServer({"/d/dataset.json": BLOB, "/d/train-000000.tar": BLOB}) as server:
        server.trickle = (1, 0.02)  # 50 bytes/s: BLOB would take 80 s
        for name, per in (("dataset.json", "file"), ("train-000000.tar", "8 MiB chunk")):
            start = time.monotonic()
            with pytest.raises(ShardStoreError) as failed:
                if per == "file":
                    read_bytes(f"{server.url}/d/{name}")  # a metadata file: whole, one deadline
                else:
                    list(tar_members(f"{server.url}/d/{name}"))
            assert time.monotonic() - start < 4
            assert str(failed.value) == (
                f"{server.url}/d/{name}: timed out after 3 tries (deadline 0.3s per {per})"
            )
            gets = server.gets(f"/d/{name}")
            assert len(gets) == 3
            # each re-open resumes where the last one stopped (no byte read twice)
            resumed = [int(h["Range"][len("bytes=") : -1]) for h in gets[1:]]
            assert 0 < resumed[0] < resumed[1] < 200
            etag = server.validators(f"/d/{name}")["ETag"]
            assert all(h["If-Range"] == etag for h in gets[1:])


def test_the_deadline_is_per_chunk_and_only_a_chunk_that_arrived_resets_the_retries(monkeypatch):
    monkeypatch.setattr(remote_stream, "CHUNK", 500)
    monkeypatch.setenv("TERRASEG_SHARD_DEADLINE", "0.4")
    with FaultyServer({"/blob": BLOB * 2}) as server:  # 8192 bytes
        server.trickle = (200, 0.02)  # 10 kB/s: a chunk in 0.05 s, the whole in ~0.8 s
        start = time.monotonic()
        with open_shard_stream(f"{server.url}/blob") as stream:
            assert stream.read() == BLOB * 2
        assert time.monotonic() - start > 0.4  # longer than one deadline, but never late
        assert len(server.gets("/blob")) == 1
    # a connection dropped every 100 bytes: a 500-byte chunk needs 5 tries, more than 1 + 2
    with FaultyServer({"/blob": BLOB}) as server:
        server.drop_after = (100, 1000)
        with pytest.raises(ShardStoreError, match=r"/blob: failed after 3 tries at byte 300:"):
            read_bytes_streamed(f"{server.url}/blob")
    # dropped every 300 bytes: each chunk arrives on its 2nd try, the count starts afresh
    with FaultyServer({"/blob": BLOB[:2000]}) as server:
        server.drop_after = (300, 1000)
        reader = RetryingReader(f"{server.url}/blob")
        assert read_all(reader) == BLOB[:2000] and reader.reopened == 6


def read_all(reader: RetryingReader) -> bytes:
    with reader:
        return b"".join(iter(lambda: reader.read(1 << 16), b""))


def read_bytes_streamed(url: str) -> bytes:
    return read_all(RetryingReader(url))


# -- statuses as they are ---------------------------------------------------------------


@pytest.mark.parametrize("via", ["stream", "cache-lookup"])
@pytest.mark.parametrize(
    ("status", "message", "tries"),
    [
        (500, "server error (HTTP 500) after 3 tries", 3),
        (503, "server error (HTTP 503) after 3 tries", 3),
        (429, "too many requests (HTTP 429) after 3 tries", 3),
        (403, "forbidden (HTTP 403)", 1),
        (404, "not found", 1),
    ],
)
def test_http_statuses_are_reported_as_they_are(tmp_path, monkeypatch, via, status, message, tries):
    if via == "cache-lookup":  # fsspec's size lookup turns every failure into "not found"
        monkeypatch.setenv("TERRASEG_SHARD_CACHE", str(tmp_path / "cache"))
    with FaultyServer({"/d/train-000000.tar": BLOB}) as server:
        server.status["/d/train-000000.tar"] = status
        url = f"{server.url}/d/train-000000.tar"
        with pytest.raises(ShardStoreError) as failed:
            list(tar_members(url))
        assert str(failed.value) == f"{url}: {message}"
        methods = {"stream": ["GET"], "cache-lookup": ["HEAD", "GET"]}[via]  # fsspec tries both
        assert [m for m, _, _ in server.requests] == methods * tries
    assert not list(tmp_path.rglob("*.tar"))


# -- no silent splice -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("validators", "ranges", "change"),
    [
        ({"etag": True}, True, r"ETag \"[0-9a-f]{16}\" → \"[0-9a-f]{16}\""),
        ({"etag": False}, True, r"Last-Modified .* GMT → .* GMT"),
        ({"etag": True}, False, r"ETag \"[0-9a-f]{16}\" → \"[0-9a-f]{16}\""),
        ({"etag": False, "modified": False}, True, r"size 4096 → 4097"),
    ],
    ids=["etag", "last-modified", "range-ignored", "size-only"],
)
def test_an_object_that_changes_mid_read_fails_never_spliced(validators, ranges, change):
    with FaultyServer({"/o": BLOB}, ranges=ranges, **validators) as server:
        sent = next(iter(server.validators("/o").values()), None)  # the first version's
        server.drop_after = (1000, 1)
        server.next_versions["/o"] = [BLOB[::-1] + (b"!" if "size" in change else b"")]
        with pytest.raises(ShardReadError, match=rf"^{server.url}/o: the object changed while "
                           rf"it was read \({change}\)$"):  # fmt: skip
            read_bytes_streamed(f"{server.url}/o")
        first, again = server.gets("/o")
        assert "Range" not in first and again["Range"] == "bytes=1000-"
        assert again.get("If-Range") == sent


@pytest.mark.parametrize("etag", [True, False], ids=["if-range-etag", "if-range-date"])
def test_an_unchanged_object_resumes_with_if_range(etag):
    with FaultyServer({"/o": BLOB}, etag=etag) as server:
        server.drop_after = (1000, 1)
        assert read_bytes_streamed(f"{server.url}/o") == BLOB
        first, again = server.gets("/o")
        validator = server.validators("/o")["ETag" if etag else "Last-Modified"]
        assert again["Range"] == "bytes=1000-" and again["If-Range"] == validator


# -- streaming integrity and the cache --------------------------------------------------


@pytest.fixture
def served_shards(synthetic_shards):
    objects = {f"/s/{p.name}": p.read_bytes() for p in synthetic_shards.iterdir()}
    with FaultyServer(objects) as server:
        yield server, f"{server.url}/s"


def _digest(data: bytes) -> ShardDigest:
    return ShardDigest(hashlib.sha256(data).hexdigest(), len(data))


def test_a_remote_shard_is_checked_against_its_digest_as_it_streams(served_shards):
    server, root = served_shards
    url = f"{root}/val-000000.tar"
    data = server.objects["/s/val-000000.tar"]
    good = list(tar_members(url, _digest(data)))
    assert good == list(tar_members(url)) and len(good) > 3
    wrong = _digest(data + b"x")
    with pytest.raises(ShardReadError) as failed:
        list(tar_members(url, wrong))
    message = str(failed.value)
    assert message.startswith(f"{url}: does not match the manifest (sha256 {wrong.sha256}, ")
    assert f"read sha256 {hashlib.sha256(data).hexdigest()}, {len(data)} bytes" in message
    with pytest.raises(ShardReadError, match="does not match the manifest"):
        list(tar_members(url, ShardDigest(wrong.sha256, len(data))))


@dataclasses.dataclass(frozen=True)
class _WithDigests(Manifest):
    """A manifest whose splits carry shard digests (as a manifest with ``shard_sha256`` does)."""

    digests: dict = dataclasses.field(default_factory=dict)

    def split(self, name):
        info = super().split(name)
        found = [self.digests.get(Path(str(s)).name) for s in info.shards]
        return dataclasses.replace(
            info,
            shard_sha256=tuple(d.sha256 if d else None for d in found),
            shard_bytes=tuple(d.size if d else None for d in found),
        )


def test_the_loader_checks_each_remote_shards_digest_on_train_and_eval(served_shards):
    server, root = served_shards
    plain = load_manifest(root)
    digests = {p[len("/s/") :]: _digest(d) for p, d in server.objects.items()}
    right = _WithDigests(plain.root, plain.data, digests)
    assert [s.key for s in read_split(right, "val")] == [s.key for s in read_split(plain, "val")]
    bad = dict(digests, **{"val-000000.tar": _digest(b"not this shard")})
    bad["train-000000.tar"] = _digest(b"nor this one")
    wrong = _WithDigests(plain.root, plain.data, bad)
    for read in (
        lambda: list(read_split(wrong, "val")),
        lambda: list(eval_batches(wrong, "val", 4, num_workers=0)),
        lambda: list(
            train_batches(wrong, 2, 40, seed=0, rank=0, epoch=0, num_workers=0, shuffle_buffer=1)
        ),  # fmt: skip
    ):
        with pytest.raises(ShardReadError, match=r"-000000\.tar: does not match the manifest"):
            read()


def test_the_cache_keys_by_content_with_a_digest_and_keeps_nothing_that_mismatches(
    served_shards, tmp_path, monkeypatch
):
    server, root = served_shards
    cache = tmp_path / "cache"
    monkeypatch.setenv("TERRASEG_SHARD_CACHE", str(cache))
    data = server.objects["/s/val-000000.tar"]
    digest = _digest(data)
    with pytest.raises(ShardReadError, match="does not match the manifest"):
        list(tar_members(f"{root}/val-000000.tar", _digest(b"other")))
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    members = list(tar_members(f"{root}/val-000000.tar", digest))
    path = cache / "sha256" / f"{digest.sha256}.tar"
    assert path.read_bytes() == data and len(members) > 3
    before = len(server.requests)
    server.objects["/s/copy.tar"] = data  # the same content under another URL
    assert list(tar_members(f"{root}/copy.tar", digest)) == [
        dict(m, __url__=f"{root}/copy.tar") if m else m for m in members
    ]
    assert len(server.requests) == before  # served from the cache: no request at all


def test_the_cache_without_etags_fetches_a_same_size_rebuild_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TERRASEG_SHARD_CACHE", str(tmp_path / "cache"))
    with FaultyServer({"/o": BLOB}, etag=False) as server:
        first = cached_copy(f"{server.url}/o")
        assert first.read_bytes() == BLOB
        assert cached_copy(f"{server.url}/o") == first  # unchanged: the same copy
        server.replace("/o", BLOB[::-1])  # same size, a later Last-Modified
        second = cached_copy(f"{server.url}/o")
        assert second != first and second.read_bytes() == BLOB[::-1]
