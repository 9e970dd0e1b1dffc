"""TorchGeo's side of ``bench_peers``: its datasets, samplers, loader and grid prediction.

Written as TorchGeo 0.10's documentation has it: one :class:`RasterDataset` subclass for
the images and one for the masks (``is_image = False``), joined with ``image & mask`` (an
:class:`IntersectionDataset`); a random patch sampler for training
(:class:`RandomPatchSampler`, which 0.10 recommends over the deprecated
``RandomGeoSampler``/``RandomBatchGeoSampler``; the latter is tried too) and a
:class:`GriddedPatchSampler` (0.10's successor of ``GridGeoSampler``) for prediction; a
``DataLoader`` with ``collate_fn=stack_samples``; file handles cached (``cache=True``).
Normalisation and flips are kornia's, on the batch, as TorchGeo's datamodules do.

TorchGeo is imported only inside these functions: ``bench_peers`` checks for it first
(:func:`require`) and names the ``peers`` extra when it is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

MISSING = (
    "bench_peers needs TorchGeo >= 0.10 (Python >= 3.12): "
    "pip install -e '.[bench,peers]' (the 'peers' extra; never part of the main install)"
)


def require() -> str | None:
    """TorchGeo's version, or None when it cannot be imported."""
    try:
        import torchgeo
    except ImportError:
        return None
    return str(torchgeo.__version__)


def datasets(folder: Path, cache: bool = True):
    """``image & mask`` over ``folder/images/*.tif`` and ``folder/masks/*.tif``."""
    from torchgeo.datasets import RasterDataset

    class Images(RasterDataset):
        filename_glob = "*.tif"
        is_image = True

    class Masks(RasterDataset):
        filename_glob = "*.tif"
        is_image = False

    return Images(paths=str(folder / "images"), cache=cache) & Masks(
        paths=str(folder / "masks"), cache=cache
    )


def loader(dataset, *, crop: int, batch: int, length: int, workers: int, sampler: str,
           seed: int) -> torch.utils.data.DataLoader:  # fmt: skip
    """A DataLoader of ``length`` random ``crop``² patches (``sampler``: ``patch`` or
    ``batch``, the deprecated ``RandomBatchGeoSampler``: each batch from one file)."""
    import warnings

    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import RandomPatchSampler

    common = {"num_workers": workers, "collate_fn": stack_samples,
              "persistent_workers": False, "prefetch_factor": 2 if workers else None}  # fmt: skip
    if sampler == "batch":
        from torchgeo.samplers import RandomBatchGeoSampler

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            generator = torch.Generator().manual_seed(seed)
            batches = RandomBatchGeoSampler(dataset, size=crop, batch_size=batch,
                                            length=length, generator=generator)  # fmt: skip
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **common)
    patches = RandomPatchSampler(dataset, size=crop, length=length, generator=seed)
    return torch.utils.data.DataLoader(dataset, sampler=patches, batch_size=batch, **common)


def augmenter(mean: list[float], std: list[float]) -> Callable:
    """kornia Normalize on the image, then the same random h/v flips on image and mask."""
    import kornia.augmentation as K

    normalize = K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std))
    flips = K.AugmentationSequential(
        K.RandomHorizontalFlip(), K.RandomVerticalFlip(), data_keys=["input", "mask"]
    )

    def augment(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        image = normalize(batch["image"].float())
        mask = batch["mask"].long()
        image, flipped = flips(image, mask[:, None].float())
        return image, flipped[:, 0].round().long()

    return augment


def batches(data: torch.utils.data.DataLoader, augment: Callable, device) -> Iterator:
    """(image, mask) on ``device``, augmented: what a training step consumes."""
    for batch in data:
        image, mask = augment(batch)
        yield image.to(device), mask.to(device)


def network(in_channels: int, num_classes: int, seed: int) -> torch.nn.Module:
    """``smp.Unet("resnet34")`` as SemanticSegmentationTask builds it (no pretrained weights)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    return smp.Unet("resnet34", encoder_weights=None, in_channels=in_channels,
                    classes=num_classes)  # fmt: skip


def _paste(grid: dict, chip: torch.Tensor, xmin: float, ymax: float) -> None:
    """Add a chip's probabilities into the scene's sums at its pixel position (clipped)."""
    col = int(round((xmin - grid["left"]) / grid["res"]))
    row = int(round((grid["top"] - ymax) / grid["res"]))
    size_h, size_w = chip.shape[-2:]
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + size_h, grid["height"]), min(col + size_w, grid["width"])
    if r1 <= r0 or c1 <= c0:
        return
    grid["sum"][:, r0:r1, c0:c1] += chip[:, r0 - row : r1 - row, c0 - col : c1 - col].numpy()
    grid["count"][r0:r1, c0:c1] += 1


def predict_scene(model: torch.nn.Module, scene: Path, *, tile: int, overlap: float,
                  batch: int, mean: list[float], std: list[float], num_classes: int,
                  out: Path, workers: int = 0, device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Predict one GeoTIFF: GriddedPatchSampler chips, averaged probabilities, arg-max, write.

    Returns:
        Seconds, pixels, chips and the written label map's path.
    """
    import rasterio
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GriddedPatchSampler

    class Scene(RasterDataset):
        filename_glob = scene.name
        is_image = True

    start = time.perf_counter()
    dataset = Scene(paths=str(scene.parent), cache=True)
    stride = max(1, int(round(tile * (1 - overlap))))
    sampler = GriddedPatchSampler(dataset, size=tile, stride=stride)
    data = torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch,
                                       num_workers=workers, collate_fn=stack_samples)  # fmt: skip
    with rasterio.open(scene) as src:
        height, width, profile = src.height, src.width, src.profile
        left, top, res = src.bounds.left, src.bounds.top, src.res[0]
    grid = {"left": left, "top": top, "res": res, "height": height, "width": width,
            "sum": np.zeros((num_classes, height, width), np.float32),
            "count": np.zeros((height, width), np.float32)}  # fmt: skip
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    model.to(device).eval()
    chips = 0
    with torch.inference_mode():
        for sample in data:
            image = sample["image"].to(device)
            probabilities = model((image - mean_t) / std_t).softmax(1).cpu()
            for chip, bounds in zip(probabilities, sample["bounds"]):
                _paste(grid, chip, float(bounds[0]), float(bounds[4]))  # xmin, ymax
                chips += 1
    labels = grid["sum"].argmax(0).astype(np.uint8)
    profile.update(count=1, dtype="uint8", nodata=None, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(labels[None])
    return {"seconds": time.perf_counter() - start, "pixels": height * width, "chips": chips,
            "uncovered": int((grid["count"] == 0).sum()), "labels": str(out)}  # fmt: skip
