"""The data and the scoring of ``bench_peers``: what both sides share, no TorchGeo needed.

* :func:`make_scenes`: generated 13-band uint16 scenes with a label raster each,
  georeferenced side by side (no two overlap, so TorchGeo's index holds one file per place);
  the classes are learnable (each class shifts the bands by its own spectrum).
* :func:`split_chip`: the multispectral set's Sentinel-2 chip cut into a train and a val
  part (rows), written as image and label GeoTIFFs (label -1 = no data -> 255).
* :func:`write_pairs`: decoded images and masks (the Dubai set) written as GeoTIFF pairs.
* :func:`confusion_miou` and :func:`label_agreement`: the scores, identical for both sides.
* :func:`summary`: the result keys issue #27 asks for (:data:`REQUIRED_KEYS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = 255
REQUIRED_KEYS = (
    "train_samples_per_s_ratio",
    "host_cpu_per_sample_ratio",
    "miou_terraseg",
    "miou_torchgeo",
    "predict_pixels_per_s_ratio",
    "predict_peak_memory_ratio",
    "label_agreement",
)
SCENE_CRS = "EPSG:32633"
SCENE_RES = 10.0


def _smooth_field(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """A smooth random field in [0, 1): coarse noise upsampled by repetition and blurred."""
    coarse = rng.random((size // cell + 2, size // cell + 2), dtype=np.float32)
    field = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:size, :size]
    kernel = max(1, cell // 2)
    cumsum = np.cumsum(np.pad(field, ((kernel, kernel), (0, 0)), mode="edge"), 0)
    field = (cumsum[2 * kernel :] - cumsum[: -2 * kernel]) / (2 * kernel)
    cumsum = np.cumsum(np.pad(field, ((0, 0), (kernel, kernel)), mode="edge"), 1)
    return (cumsum[:, 2 * kernel :] - cumsum[:, : -2 * kernel]) / (2 * kernel)


def scene_arrays(size: int, bands: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One generated scene: a ``bands x size x size`` uint16 image and its uint8 labels.

    The label is the arg-max of ``classes`` smooth fields (regions of ~``size / 16`` px);
    every class adds its own spectrum to a base level, plus per-pixel noise in every band.
    """
    rng = np.random.default_rng(seed)
    cell = max(8, size // 16)
    label = np.argmax(np.stack([_smooth_field(rng, size, cell) for _ in range(classes)]), 0)
    label = label.astype(np.uint8)
    spectra = rng.uniform(500, 3000, size=(classes, bands)).astype(np.float32)
    image = np.empty((bands, size, size), np.uint16)
    for band in range(bands):
        values = spectra[label, band] + rng.normal(1000, 600, size=(size, size)).astype(np.float32)
        image[band] = np.clip(values, 1, 65535).astype(np.uint16)
    return image, label


def _profile(bands: int, size: tuple[int, int], dtype: str, transform: Any, crs: Any) -> dict:
    height, width = size
    tiled = height >= 256 and width >= 256
    return {
        "driver": "GTiff", "count": bands, "height": height, "width": width, "dtype": dtype,
        "transform": transform, "crs": crs, "compress": "deflate", "tiled": tiled,
        **({"blockxsize": 256, "blockysize": 256} if tiled else {}),
    }  # fmt: skip


def write_raster(path: Path, array: np.ndarray, transform: Any, crs: Any = SCENE_CRS) -> Path:
    """Write a ``bands x H x W`` (or ``H x W``) array as a deflate GeoTIFF (tiled when large)."""
    import rasterio

    data = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = _profile(data.shape[0], data.shape[1:], str(data.dtype), transform, crs)
    temporary = path.with_name(f".{path.name}.tmp")
    with rasterio.open(temporary, "w", **profile) as dst:
        dst.write(data)
    temporary.replace(path)
    return path


def make_scenes(
    folder: Path, count: int, size: int, *, bands: int = 13, classes: int = 4, seed: int = 0
) -> list[str]:
    """``folder/images/scene_i.tif`` and ``folder/masks/scene_i.tif``, side by side in x.

    Returns:
        The scene names (reused when the folder holds them already).
    """
    from rasterio.transform import from_origin

    names = [f"scene_{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        image_path, mask_path = folder / "images" / f"{name}.tif", folder / "masks" / f"{name}.tif"
        if image_path.is_file() and mask_path.is_file():
            continue
        image, label = scene_arrays(size, bands, classes, seed + i)
        transform = from_origin(500_000 + i * (size + 64) * SCENE_RES, 4_000_000, SCENE_RES,
                                SCENE_RES)  # fmt: skip
        write_raster(mask_path, label, transform)
        write_raster(image_path, image, transform)
    return names


def split_chip(image_path: Path, label_path: Path, out: Path, val_rows: int) -> dict[str, Path]:
    """Cut a chip into ``out/{train,val}/{images,masks}/chip.tif`` (val: its last rows).

    Labels become uint8: their -1 (no data) becomes :data:`IGNORE`, 0 and 1 stay.
    """
    import rasterio
    from rasterio.windows import Window

    folders = {}
    with rasterio.open(image_path) as image, rasterio.open(label_path) as label:
        height, width = image.height, image.width
        parts = {"train": (0, height - val_rows), "val": (height - val_rows, val_rows)}
        for split, (row, rows) in parts.items():
            window = Window(0, row, width, rows)
            transform = image.window_transform(window)
            values = label.read(1, window=window)
            mask = np.where(values < 0, IGNORE, values).astype(np.uint8)
            write_raster(out / split / "masks" / "chip.tif", mask, transform, image.crs)
            write_raster(out / split / "images" / "chip.tif", image.read(window=window),
                         transform, image.crs)  # fmt: skip
            folders[split] = out / split
    return folders


def write_pairs(folder: Path, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Path:
    """Write HWC images and class-index masks as GeoTIFF pairs placed apart (1 m pixels)."""
    from rasterio.transform import from_origin

    x = 0.0
    for i, (image, mask) in enumerate(zip(images, masks)):
        transform = from_origin(x, 0.0, 1.0, 1.0)
        x += image.shape[1] + 64
        write_raster(folder / "masks" / f"part_{i:03d}.tif", mask.astype(np.uint8), transform,
                     "EPSG:3857")  # fmt: skip
        write_raster(
            folder / "images" / f"part_{i:03d}.tif",
            np.ascontiguousarray(image.transpose(2, 0, 1)),
            transform,
            "EPSG:3857",
        )
    return folder


def write_classes(path: Path, names: Sequence[str]) -> Path:
    """A terraseg classes file for index masks: value ``i`` is ``names[i]``, 255 ignored."""
    lines = ["encoding: index", "classes:"]
    lines += [f"  - {{name: {name}, value: {i}}}" for i, name in enumerate(names)]
    lines.append(f"  - {{name: no-data, value: {IGNORE}, ignore: true}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_split(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The ``images/*.tif`` (bands x H x W) and ``masks/*.tif`` (H x W) of a folder, sorted."""
    import rasterio

    images, masks = [], []
    for path in sorted((folder / "images").glob("*.tif")):
        with rasterio.open(path) as src:
            images.append(src.read())
        with rasterio.open(folder / "masks" / path.name) as src:
            masks.append(src.read(1))
    return images, masks


def band_statistics(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict:
    """Per-band mean and std over the labelled pixels (float64), for TorchGeo's Normalize."""
    total = count = squares = 0.0
    for image, mask in zip(images, masks):
        pixels = image[:, mask != IGNORE].astype(np.float64)
        total = total + pixels.sum(1)
        squares = squares + (pixels**2).sum(1)
        count += pixels.shape[1]
    mean = np.asarray(total) / count
    std = np.sqrt(np.maximum(np.asarray(squares) / count - mean**2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist()}


def confusion_miou(
    truths: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int
) -> dict[str, Any]:
    """mIoU, OA and per-class IoU from scikit-learn's confusion matrix over labelled pixels.

    A class absent from both truth and prediction scores IoU 0 (as ``jaccard_score`` with
    ``zero_division=0``); pixels labelled :data:`IGNORE` are left out.
    """
    from sklearn.metrics import confusion_matrix

    truth = np.concatenate([t.ravel() for t in truths])
    pred = np.concatenate([p.ravel() for p in preds])
    keep = truth != IGNORE
    matrix = confusion_matrix(truth[keep], pred[keep], labels=list(range(num_classes)))
    hits = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - hits
    iou = np.divide(hits, union, out=np.zeros_like(hits), where=union > 0)
    return {
        "miou": float(iou.mean()),
        "oa": float(hits.sum() / max(1, matrix.sum())),
        "iou": iou.tolist(),
    }


def label_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Fraction of pixels where two label maps of the same shape agree."""
    if first.shape != second.shape:
        raise ValueError(f"label maps differ in shape: {first.shape} and {second.shape}")
    return float(np.mean(first == second))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def summary(train: Mapping, learning: Mapping, predict: Mapping) -> dict[str, float]:
    """The headline keys (terraseg / TorchGeo ratios) from the three parts' raw numbers.

    Args:
        train: ``{"terraseg": {...}, "torchgeo": {...}}`` with ``samples_per_s`` and
            ``cpu_s_per_sample`` per side.
        learning: Per side ``miou_mean`` (over datasets and seeds).
        predict: Per side ``pixels_per_s`` and ``peak_rss_mb``, and ``label_agreement``.
    """
    ours, theirs = train["terraseg"], train["torchgeo"]
    return {
        "train_samples_per_s_ratio": _ratio(ours["samples_per_s"], theirs["samples_per_s"]),
        "host_cpu_per_sample_ratio": _ratio(ours["cpu_s_per_sample"],
                                            theirs["cpu_s_per_sample"]),
        "miou_terraseg": float(learning["terraseg"]["miou_mean"]),
        "miou_torchgeo": float(learning["torchgeo"]["miou_mean"]),
        "predict_pixels_per_s_ratio": _ratio(predict["terraseg"]["pixels_per_s"],
                                             predict["torchgeo"]["pixels_per_s"]),
        "predict_peak_memory_ratio": _ratio(predict["terraseg"]["peak_rss_mb"],
                                            predict["torchgeo"]["peak_rss_mb"]),
        "label_agreement": float(predict["label_agreement"]),
    }  # fmt: skip


def check_summary(values: Mapping[str, Any]) -> None:
    """Raise ``KeyError`` naming any :data:`REQUIRED_KEYS` missing from ``values``."""
    missing = [key for key in REQUIRED_KEYS if key not in values]
    if missing:
        raise KeyError(f"results miss {', '.join(missing)}")
