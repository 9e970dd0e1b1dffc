"""The original project's data path, as the baseline: a folder of files read with PIL.

Each sample: open the JPEG image and the PNG mask with PIL, take a random crop and random
horizontal/vertical flips in numpy on the CPU, convert to a float tensor and normalise,
all inside ``torch.utils.data.DataLoader`` workers. Batches leave the loader as float32
``[B, 3, c, c]`` images and int64 ``[B, c, c]`` masks, four times the bytes of the shard
loader's uint8 tiles per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler


class FolderDataset(Dataset):
    """Random crops with flips from ``(image, mask)`` files, decoded by PIL on every read.

    Args:
        pairs: ``(image path, class-index mask path)``.
        crop_size: Edge of the random crop.
        mean: Per-channel mean, 0-1 scale.
        std: Per-channel std, 0-1 scale.
        seed: Base seed; each worker and sample draws from its own generator.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
    ) -> None:
        self.pairs = list(pairs)
        self.crop_size = crop_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.seed = seed
        self.draws = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[index]
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = np.asarray(Image.open(mask_path))
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng((self.seed, worker, self.draws))
        self.draws += 1
        c = self.crop_size
        top = int(rng.integers(0, image.shape[0] - c + 1))
        left = int(rng.integers(0, image.shape[1] - c + 1))
        image = image[top : top + c, left : left + c]
        mask = mask[top : top + c, left : left + c]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        x = (x - self.mean) / self.std
        return x, torch.from_numpy(np.ascontiguousarray(mask)).long()


def folder_batches(
    dataset: FolderDataset,
    batch_size: int,
    num_workers: int,
    pin_memory: bool = False,
    seed: int = 0,
) -> DataLoader:
    """An endless loader of shuffled batches (sampling with replacement), like the shards'.

    Endless, so that the workers keep prefetching until the consumer stops, exactly as the
    shard loader's workers do; take batches with ``next``.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(dataset, replacement=True, num_samples=2**40, generator=generator)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=True,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
