"""predict.py's limits and exits: pixel limit, free disk, signals and a full disk.

Real files and processes: GeoTIFFs written by rasterio, a VRT whose header claims
2,000,000² pixels, ``launch/predict.py`` started as a process and stopped by SIGTERM and
SIGINT while it writes, and a kernel ``ENOSPC`` from ``/dev/full`` under GDAL's writes.
The model is a tiny untrained UNet export; what it predicts does not matter.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import RGB_MANIFEST as MANIFEST

from engine.infer.limits import disk_need
from engine.infer.outputs import OutputSpec, output_paths, temporary_paths

REPO = Path(__file__).resolve().parents[1]
HUGE_VRT = """<VRTDataset rasterXSize="{size}" rasterYSize="{size}">
  <VRTRasterBand dataType="Byte" band="1"/>
  <VRTRasterBand dataType="Byte" band="2"/>
  <VRTRasterBand dataType="Byte" band="3"/>
</VRTDataset>
"""


def predict_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("launch_predict", REPO / "launch/predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    import archs
    from engine.train.export import save_exported

    torch.manual_seed(0)
    model = archs.create_model("unet", 3, 3, base_width=4, depth=2)
    spec = {"arch": "unet", "num_classes": 3, "in_channels": 3}
    spec["options"] = {"base_width": 4, "depth": 2}
    folder = tmp_path_factory.mktemp("model")
    return save_exported(folder / "run" / "best", model, spec, {}, MANIFEST)


def write_tif(path: Path, height: int, width: int, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8)
    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8")
    profile["transform"] = rasterio.Affine(10, 0, 500000, 0, -10, 4000000)
    with rasterio.open(path, "w", **profile, tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(data)
    return path


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_huge_header_is_refused_before_anything_is_written(tmp_path, export, capsys):
    small = write_tif(tmp_path / "a.tif", 40, 50)
    huge = tmp_path / "huge.vrt"
    huge.write_text(HUGE_VRT.format(size=2_000_000))
    out = tmp_path / "out"
    base = ["--model", str(export), "--out", str(out), "--device", "cpu", "--no-progress"]
    # The small input comes first: every header is checked before the first is predicted.
    assert predict_main(base + ["--input", str(small), str(huge)]) == 2
    err = one_line_error(capsys)
    assert f"{huge}: header claims 2000000x2000000 (WxH) = 4,000,000,000,000 pixels" in err
    assert "the limit of 1,500,000,000" in err
    assert not out.exists()
    # The environment setting and --max-pixels both set the limit.
    os.environ["TERRASEG_MAX_PIXELS"] = "1999"
    try:
        assert predict_main(base + ["--input", str(small)]) == 2
    finally:
        del os.environ["TERRASEG_MAX_PIXELS"]
    assert "= 2,000 pixels, over the limit of 1,999" in one_line_error(capsys)
    assert predict_main(base + ["--input", str(small), "--max-pixels", "1999"]) == 2
    assert "over the limit of 1,999" in one_line_error(capsys)
    assert not out.exists()
    assert predict_main(base + ["--input", str(small), "--max-pixels", "2000"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_color.tif", "a_mask.tif"]


def test_too_little_disk_is_refused_before_writing_and_user_files_stay(tmp_path, export, capsys):
    huge = tmp_path / "huge.vrt"
    huge.write_text(HUGE_VRT.format(size=2_000_000))
    base = ["--model", str(export), "--input", str(huge), "--device", "cpu", "--no-progress"]
    base += ["--max-pixels", str(10**13)]
    created = tmp_path / "new" / "out"
    assert predict_main(base + ["--out", str(created)]) == 2
    err = one_line_error(capsys)
    # 4e12 pixels: a 1-byte mask and a 3-byte colour rendering, uncompressed, in column
    # bands (staged beside them): 2 x 16e12 bytes, plus 4e12 bytes of validity flags.
    assert f"error: {created}: needs ~36000.0 GB for {huge}, " in err and " GB free" in err
    assert not (tmp_path / "new").exists(), "the folders the run made are removed again"
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's")
    assert predict_main(base + ["--out", str(existing)]) == 2
    assert "needs ~" in one_line_error(capsys)
    assert listing(existing) == {"notes.txt": b"the user's"}


def test_the_disk_estimate_bounds_what_is_written(tmp_path, export, capsys):
    image = write_tif(tmp_path / "b.tif", 300, 700)
    out = tmp_path / "out"
    argv = ["--model", str(export), "--input", str(image), "--out", str(out), "--tile", "64"]
    argv += ["--device", "cpu", "--no-progress", "--format", "cog", "--probabilities"]
    argv += ["--confidence", "--overlay", "--band-width", "256"]
    assert predict_main(argv) == 0
    kinds = ["mask", "color", "confidence", "probabilities", "overlay"]
    # Bytes per pixel: 1 + 3 + 1 + 3 x 4 + 3 = 20 per output set; staged once more, plus
    # one byte of validity flags; the COG copies (4/3) and one overview file (1/3 of the
    # largest, the 12-byte probabilities).
    pixels = 300 * 700
    need = disk_need(300, 700, "cog", kinds, num_classes=3, banded=True)
    total = 20 * pixels
    assert need.out_bytes == total + (total + pixels) + total * 4 // 3 + 12 * pixels // 3
    written = sum(p.stat().st_size for p in out.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted(f"b_{k}.tif" for k in kinds)
    assert written < need.out_bytes
    assert disk_need(300, 700, "tif", ["mask"], num_classes=3).out_bytes == pixels


def test_a_full_disk_says_so_and_leaves_nothing(tmp_path, export, capsys):
    """A real ENOSPC: the output's temporary name is a link to /dev/full (the kernel's
    always-full device), so GDAL's and PIL's own writes fail as on a full disk."""
    images = tmp_path / "in"
    images.mkdir()
    first = write_tif(images / "a.tif", 64, 64)
    second = write_tif(images / "b.tif", 200, 300, seed=1)
    from PIL import Image

    picture = images / "c.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(picture)
    before = listing(images)
    out = tmp_path / "out"
    out.mkdir()
    base = ["--model", str(export), "--out", str(out), "--tile", "64", "--device", "cpu"]
    base += ["--no-progress", "--confidence"]
    (out / "b_color.tif.partial").symlink_to("/dev/full")
    assert predict_main(base + ["--input", str(first), str(second)]) == 2
    assert one_line_error(capsys) == f"error: {out}/b_color.tif: no space left on device"
    assert sorted(p.name for p in out.iterdir()) == ["a_color.tif", "a_confidence.tif",
                                                     "a_mask.tif"]  # fmt: skip
    (out / "c_mask.png.partial").symlink_to("/dev/full")
    assert predict_main(base + ["--input", str(picture)]) == 2
    assert one_line_error(capsys) == f"error: {out}/c_mask.png: no space left on device"
    assert not any(p.name.startswith("c_") for p in out.iterdir())
    assert listing(images) == before


def test_temporary_names_cover_what_the_writer_stages(tmp_path):
    from engine.infer.writer import PredictionWriter

    palette = [(0, 0, 0), (9, 9, 9)]
    spec = OutputSpec("cog", confidence=True)
    writer = PredictionWriter(tmp_path, "s", 8, 8, palette, spec)
    probs = np.full((2, 8, 4), 0.5, np.float32)
    writer.write(0, probs, 0)  # a column block: staged
    made = {p.name for p in tmp_path.iterdir()}
    writer.abort()
    outputs = output_paths(tmp_path, "s", spec)
    assert made <= {p.name for p in temporary_paths(outputs, "s")}
    assert {"s_mask.tif.partial", "s_mask.tif.bands", "s_valid.bands"} <= made
    assert not list(tmp_path.iterdir())


def start_predict(export: Path, inputs: list[Path], out: Path, *options: str):
    command = [sys.executable, str(REPO / "launch/predict.py"), "--model", str(export)]
    command += ["--input", *map(str, inputs), "--out", str(out), "--device", "cpu"]
    command += ["--no-progress", *options]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} first: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code", "banded"),
    [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)],
    ids=["sigterm-while-staging", "sigint-while-streaming"],
)
def test_a_signal_mid_run_removes_what_the_run_made(tmp_path, export, signum, code, banded):
    images = tmp_path / "in"
    images.mkdir()
    done = write_tif(images / "a.tif", 64, 64)
    busy = write_tif(images / "b.tif", 1536, 1536, seed=1)
    before = listing(images)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    options = ["--tile", "128", "--tta", "d4", "--confidence", "--probabilities"]
    options += ["--band-width", "512" if banded else "0"]
    process = start_predict(export, [done, busy], out, *options)
    # Staging files appear with the first column block; streamed .partial files at once.
    wait_for(out / ("b_probabilities.tif.bands" if banded else "b_mask.tif.partial"), process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == code, stderr
    assert stderr.strip() == f"error: interrupted by {name}; the unfinished outputs were removed"
    assert "[1/2]" in stdout and "[2/2]" not in stdout
    kept = ["a_color.tif", "a_confidence.tif", "a_mask.tif", "a_probabilities.tif", "notes.txt"]
    assert sorted(p.name for p in out.iterdir()) == kept
    assert listing(images) == before
