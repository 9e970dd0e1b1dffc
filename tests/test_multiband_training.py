"""Training on N-band shards at native precision (format version 3), written by hand here.

The shards follow shards/README.md and engine/data/shards/manifest.py without the builder: tars of
``KEY.image.npy`` (``tile x tile x C`` in the band dtype), ``KEY.mask.npy`` (uint8, 255 =
ignore) and ``KEY.meta.json``, and a version 3 ``dataset.json`` with per-band records.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from engine.errors import UserError
from engine.train.export import load_exported
from engine.train.loop import train

TILE = 32
CLASSES = [{"name": "water", "color": "#1E64E6"}, {"name": "land", "color": "#A88C64"}]


def _tile(rng: np.random.Generator, dtype: str, bands: int, nodata: float | None):
    """A tile whose class is told by band 0 (high = land) plus noise in every band."""
    mask = np.zeros((TILE, TILE), np.uint8)
    row, col = rng.integers(4, TILE - 12, 2)
    mask[row : row + 12, col : col + 10] = 1
    base = {"uint16": 3000.0, "int16": 1500.0, "float32": -12.0}[dtype]
    spread = {"uint16": 800.0, "int16": 600.0, "float32": 4.0}[dtype]
    image = base + spread * rng.standard_normal((TILE, TILE, bands))
    image[..., 0] += 2 * spread * mask
    image = image.astype(dtype)
    if nodata is not None:
        edge = rng.integers(2, 6)
        image[:, :edge] = nodata  # a no-data strip in every band: ignored in the mask
        mask[:, :edge] = 255
    return np.ascontiguousarray(image), mask


def _member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    tar.addfile(info, io.BytesIO(payload))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_v3_shards(
    folder: Path,
    dtype: str,
    bands: int = 5,
    *,
    nodata: float | None = None,
    rgb_bands: list[int] | None = None,
    counts: dict[str, int] | None = None,
) -> Path:
    """A shard folder of ``bands``-band ``dtype`` tiles: one tar per split and a v3 manifest.

    Band statistics are exact over the valid pixels of the train split (float64), as the
    builder computes them; display ranges are their 2nd and 98th percentiles.
    """
    counts = counts or {"train": 8, "val": 2}
    rng = np.random.default_rng(14)
    folder.mkdir(parents=True)
    splits, class_pixels, ignore_pixels, train_pixels = {}, {}, {}, []
    for split, count in counts.items():
        name = f"{split}-000000.tar"
        pixels = np.zeros(len(CLASSES), np.int64)
        ignored = 0
        with tarfile.open(folder / name, "w", format=tarfile.GNU_FORMAT) as tar:
            for index in range(count):
                image, mask = _tile(rng, dtype, bands, nodata)
                key = f"scene_{split}/r{index * TILE:05d}_c00000"
                meta = {
                    "key": key,
                    "image": f"scene_{split}.tif",
                    "mask": f"scene_{split}_mask.tif",
                    "group": f"scene_{split}",
                    "split": split,
                    "window": {"row": index * TILE, "col": 0, "height": TILE, "width": TILE},
                    "source_size": {"height": count * TILE, "width": TILE},
                }
                _member(tar, f"{key}.image.npy", _npy(image))
                _member(tar, f"{key}.mask.npy", _npy(mask))
                _member(tar, f"{key}.meta.json", json.dumps(meta).encode())
                pixels += np.bincount(mask[mask != 255], minlength=len(CLASSES))
                ignored += int((mask == 255).sum())
                if split == "train":
                    train_pixels.append(image[mask != 255])
        splits[split] = {
            "shards": [name],
            "shard_samples": [count],
            "num_samples": count,
            "groups": [f"scene_{split}"],
        }
        class_pixels[split] = pixels.tolist()
        ignore_pixels[split] = ignored
    valid = np.concatenate(train_pixels).astype(np.float64)  # [pixels, bands]
    records = [
        {
            "name": f"B{b + 1}",
            "dtype": dtype,
            "mean": float(valid[:, b].mean()),
            "std": float(valid[:, b].std()),
            "display": [float(v) for v in np.percentile(valid[:, b], [2, 98])],
            "nodata": "nan" if nodata is not None and math.isnan(nodata) else nodata,
        }
        for b in range(bands)
    ]
    manifest = {
        "format": "terraseg-shards",
        "version": 3,
        "classes": CLASSES,
        "num_classes": len(CLASSES),
        "ignore_index": 255,
        "tile_size": TILE,
        "image_codec": "npy",
        "mask_codec": "npy",
        "bands": records,
        "rgb_bands": rgb_bands,
        "seed": 0,
        "class_pixels": class_pixels,
        "ignore_pixels": ignore_pixels,
        "splits": splits,
    }
    (folder / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _config(shards: Path, *overrides: str):
    return tiny_config(
        shards,
        "data.crop_size=32",
        "data.jitter=0.2",
        "train.epochs=1",
        "train.steps_per_epoch=3",
        "train.log_every=1",
        "schedule.warmup_steps=1",
        *overrides,
    )


def _train_losses(run: Path) -> list[float]:
    with open(run / "history.csv", newline="") as handle:
        return [float(r["loss"]) for r in csv.DictReader(handle) if r["split"] == "train"]


def test_five_band_uint16_trains_and_the_export_records_the_bands(tmp_path):
    shards = write_v3_shards(tmp_path / "shards", "uint16", rgb_bands=[2, 1, 0])
    result = train(_config(shards), tmp_path / "run")
    first_conv = next(p for p in result.model.parameters() if p.dim() == 4)
    assert first_conv.shape[1] == 5  # the model was built for the 5 bands
    losses = _train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    spec = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    manifest = json.loads((shards / "dataset.json").read_text())
    assert spec["in_channels"] == 5 and spec["rgb_bands"] == [2, 1, 0]
    assert spec["bands"] == manifest["bands"]  # names, order, dtype, stats, nodata
    exported = load_exported(tmp_path / "run")
    assert exported.normalization.names == ["B1", "B2", "B3", "B4", "B5"]
    with torch.no_grad():
        logits = exported.model(exported.normalization(torch.zeros(1, 5, 32, 32).to(torch.uint16)))
    assert logits.shape == (1, 2, 32, 32) and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "dtype, nodata, recorded", [("int16", -9999, -9999), ("float32", math.nan, "nan")]
)
def test_nodata_bands_train(tmp_path, dtype, nodata, recorded):
    """int16 reflectance with -9999 and float32 (SAR dB) with NaN no-data strips."""
    shards = write_v3_shards(tmp_path / "shards", dtype, 4, nodata=nodata)
    train(_config(shards), tmp_path / "run")
    losses = _train_losses(tmp_path / "run")
    assert losses and all(math.isfinite(v) for v in losses)
    spec = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    assert spec["in_channels"] == 4 and spec["rgb_bands"] is None
    assert {b["dtype"] for b in spec["bands"]} == {dtype}
    assert {b["nodata"] for b in spec["bands"]} == {recorded}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["split"] == "val" and math.isfinite(metrics["miou"])


def test_multitask_model_takes_its_colour_target_from_the_rgb_bands(tmp_path):
    shards = write_v3_shards(tmp_path / "shards", "uint16", 4, rgb_bands=[2, 1, 0])
    config = _config(shards, "model.arch=resuneta_d6_mtsk", "data.batch_size=2")
    train(config, tmp_path / "run")
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    assert rows and all(math.isfinite(float(r["loss/colour"])) for r in rows)
    assert json.loads((tmp_path / "run" / "best" / "model.json").read_text())["in_channels"] == 4


def test_multitask_model_without_rgb_bands_is_a_one_line_error(tmp_path):
    shards = write_v3_shards(tmp_path / "shards", "float32", 2, counts={"train": 2})
    config = _config(shards, "model.arch=resuneta_d6_mtsk")
    with pytest.raises(UserError) as info:
        train(config, tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message
    assert str(shards / "dataset.json") in message and "rgb_bands: null" in message
    assert "resuneta_d6_mtsk" in message and "red, green and blue" in message
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_model_of_other_bands_is_refused_by_evaluation(tmp_path):
    import archs
    from engine.data.shards.manifest import load_manifest
    from engine.evaluate.shard_eval import BandCountError, EvalSettings, evaluate_split

    shards = write_v3_shards(tmp_path / "shards", "uint16", 5, counts={"train": 1, "val": 1})
    rgb_model = archs.create_model("unet", 2, 3, base_width=4, depth=2)
    with pytest.raises(BandCountError) as info:
        evaluate_split(rgb_model, load_manifest(shards), "val", EvalSettings(batch_size=1))
    message = str(info.value)
    assert "takes 3 input bands" in message and "has 5 (B1, B2, B3, B4, B5)" in message
    assert str(shards / "dataset.json") in message and "\n" not in message


def test_panel_pictures_show_the_rgb_bands_stretched(tmp_path):
    """Validation panels draw each kept tile with engine.render.colors.display_rgb."""
    from engine.data.shards.normalize import BandStats, Normalization
    from engine.render.colors import display_rgb

    bands = tuple(
        BandStats(name, "uint16", 2000.0, 500.0, (1000.0, 3000.0), 0.0) for name in "bgrn"
    )
    image = torch.full((4, 2, 3), 2000, dtype=torch.uint16)
    image[2, 0, 0] = 3500  # red above the display high: full red
    image[1, 0, 1] = 1000  # green at the display low: no green
    image[:, 1, 2] = 0  # nodata: black
    picture = display_rgb(image, Normalization(bands, (2, 1, 0)))
    assert picture.dtype == np.uint8 and picture.shape == (2, 3, 3)
    assert picture[0, 0].tolist() == [255, 128, 128]
    assert picture[0, 1].tolist() == [128, 0, 128]
    assert picture[1, 2].tolist() == [0, 0, 0]
