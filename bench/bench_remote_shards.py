"""Where shards live: tiles/s and CPU per tile reading one split from a folder, HTTP and S3.

Servers run on 127.0.0.1 as separate processes (``python -m http.server`` and moto's
``moto_server``), so the reader's CPU time is its own; the server's is reported apart (a
real object store spends it elsewhere). Each contender reads and decodes every train
sample with :func:`engine.data.shards.loader.read_split` in this process (no workers), rounds
interleaved; the median round is reported.

    python bench/bench_remote_shards.py            # 24 scenes of 512², tile 256, npy
    python bench/bench_remote_shards.py --codec webp --rounds 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.data.build.builder import BuildOptions, build_shards  # noqa: E402
from engine.data.shards.loader import read_split  # noqa: E402
from engine.data.shards.manifest import load_manifest  # noqa: E402
from engine.data.shards.store import filesystem  # noqa: E402
from engine.data.sources.classes import load_classes  # noqa: E402
from engine.data.sources.pairing import pair_by_glob  # noqa: E402
from engine.data.synthetic.scenes import write_dataset  # noqa: E402


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str) -> None:
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback only
            return
        except OSError as error:
            if getattr(error, "code", None):  # an HTTP error: the server is up
                return
            time.sleep(0.1)
    raise RuntimeError(f"{url}: server did not start")


def _round(location: str, server: psutil.Process | None) -> tuple[int, float, float, float]:
    manifest = load_manifest(location)
    server_cpu = sum(server.cpu_times()[:2]) if server else 0.0
    wall, cpu = time.perf_counter(), time.process_time()
    tiles = sum(1 for _ in read_split(manifest, "train"))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_cpu = sum(server.cpu_times()[:2]) - server_cpu if server else 0.0
    return tiles, wall, cpu, server_cpu


def main() -> int:
    """Build, serve, read, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--codec", default="npy")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="terraseg-remote-bench-"))
    scenes = work / "scenes"
    write_dataset(scenes, num_groups=args.scenes // 2, scenes_per_group=2,
                  size=(args.size, args.size), seed=0)  # fmt: skip
    pairs = pair_by_glob(str(scenes / "*/images/*"), str(scenes / "*/masks/*.png"))
    shards = work / "shards"
    options = BuildOptions(tile=args.tile, val=0.1, test=0.0, image_codec=args.codec)
    build_shards(pairs, load_classes(scenes / "classes.yaml"), shards, options, warn=lambda m: 0)
    http_port, s3_port = _port(), _port()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
    )
    os.environ.update(env)
    bindir = Path(sys.executable).parent
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(http_port)],
            cwd=shards, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        ),
    ]  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{http_port}/dataset.json")
        _wait(f"http://127.0.0.1:{s3_port}/")
        fs = filesystem("s3://bench")
        fs.mkdir("s3://bench")
        for file in sorted(shards.iterdir()):
            fs.put_file(str(file), f"s3://bench/shards/{file.name}")
        contenders = {
            "local folder": (str(shards), None),
            "HTTP (http.server)": (f"http://127.0.0.1:{http_port}", psutil.Process(servers[0].pid)),
            "S3 (moto_server)": ("s3://bench/shards", psutil.Process(servers[1].pid)),
        }
        results: dict[str, list] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, (location, server) in contenders.items():
                results[name].append(_round(location, server))
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    size = sum(p.stat().st_size for p in shards.glob("train-*.tar"))
    print(f"{psutil.cpu_count()} CPUs, {args.codec} {args.tile}² tiles, "
          f"{size / 2**20:.1f} MiB of train shards, median of {args.rounds} rounds\n")  # fmt: skip
    print("| where | tiles/s | reader CPU ms/tile | server CPU ms/tile | MiB/s |")
    print("|---|---|---|---|---|")
    for name, rounds in results.items():
        tiles, wall, cpu, server_cpu = sorted(rounds, key=lambda r: r[1])[len(rounds) // 2]
        print(f"| {name} | {tiles / wall:.0f} | {1e3 * cpu / tiles:.2f} | "
              f"{1e3 * server_cpu / tiles:.2f} | {size / 2**20 / wall:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
