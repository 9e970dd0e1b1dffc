"""Sliding-window prediction over images of any size, streamed in row strips.

The window layout, blending weights, TTA and column bands are in :mod:`engine.infer.windows`;
the settings travel together as :class:`SlidingOptions`, and the pass itself (reads,
forward passes, band sums) is :mod:`engine.infer.strips`.

Streaming: windows are processed row of windows by row of windows (a *strip* of ``T``
input rows, read from the reader with the reflect padding applied on the fly). Tiles are
batched in fixed batches of ``batch_size`` across strip boundaries, so batching does not
depend on the raster size. Accumulators cover one strip (``[N, T, width]`` on the device);
when the next strip starts, the ``S`` rows no later window touches are final, divided by
their weights, cropped to the image and handed on in blocks of at most ``rows_per_block``
rows. Peak memory is therefore independent of the image height.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from engine.data.shards.normalize import Normalization
from engine.data.sources.raster_base import ArrayReader, RasterReader
from engine.infer.strips import (
    AMP_DTYPES,
    BandSums,
    Block,
    InferenceError,
    SlidingOptions,
    WindowPass,
    batches,
    resolve_amp,
    resolve_device,
)

__all__ = [
    "AMP_DTYPES",
    "InferenceError",
    "SlidingOptions",
    "iter_probability_blocks",
    "predict_mask",
    "predict_probabilities",
    "predict_raster",
    "resolve_amp",
    "resolve_device",
    "rgb_normalization",
]


def _as_reader(image: Any) -> RasterReader:
    """A reader as it is; an ``HxWxC`` array or tensor (native band values) wrapped."""
    if isinstance(image, RasterReader) or (hasattr(image, "read") and hasattr(image, "shape")):
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return ArrayReader(np.asarray(image))


def rgb_normalization(mean: Sequence[float], std: Sequence[float]) -> Normalization:
    """The normalisation of 3 uint8 RGB bands from their 0–1 mean and std.

    For RGB callers that hold a version 2 ``dataset.json``'s ``mean``/``std``.
    """
    if len(mean) != 3 or len(std) != 3:
        raise InferenceError(f"mean and std need 3 values, got {list(mean)} and {list(std)}")
    return Normalization.from_manifest({"mean": list(mean), "std": list(std)})


def iter_probability_blocks(
    model: torch.nn.Module,
    image: Any,
    *,
    num_classes: int,
    normalization: Normalization,
    options: SlidingOptions | None = None,
    progress: str | None = None,
) -> Iterator[Block]:
    """Yield ``(row0, col0, probs)`` blocks of final probabilities.

    Arguments are those of :func:`predict_probabilities`. Blocks hold at most
    ``options.rows_per_block`` rows and cover the image exactly once: column band by column
    band (see :func:`column_bands`), top to bottom within a band. With one band (images
    no wider than ``band_width`` plus padding) every block spans the full width, so rows
    arrive in order.

    Yields:
        ``row0``, ``col0`` and float32 ``[N, rows, cols]`` probabilities (sum 1 over ``N``).
    """
    from tqdm.auto import tqdm

    options = options or SlidingOptions()
    run = WindowPass(model, _as_reader(image), num_classes, normalization, options)
    bar = tqdm(total=run.window_count, unit="win", desc=progress, disable=progress is None,
               leave=False)  # fmt: skip
    band_number, sums = -1, None
    try:
        for pending in batches(run, options.batch_size):
            probs = run.forward(np.stack([t for *_, t in pending]))
            for (number, k, x, _), p in zip(pending, probs):
                if number != band_number:
                    if sums is not None:
                        yield from sums.finish()
                    sums = None  # free the finished band's sums before allocating the next
                    band_number = number
                    sums = BandSums(run, run.bands[number], options.rows_per_block)
                assert sums is not None
                yield from sums.advance_to(k)
                sums.add(x, p)
            bar.update(len(pending))
            del probs, p, pending  # before the next batch is read and run (peak memory)
        if sums is not None:
            yield from sums.finish()
    finally:
        bar.close()
        run.restore()


def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor | RasterReader,
    *,
    num_classes: int,
    normalization: Normalization,
    options: SlidingOptions | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Predict class probabilities of a whole image by blended sliding windows.

    Args:
        model: Returns logits ``[B, N, T, T]`` (or an object with ``.segmentation``) for a
            normalised float batch ``[B, C, T, T]``. Put in eval mode for the call (its
            previous mode is restored) and moved to ``options.device``.
        image: ``HxWxC`` array or tensor of native band values, or a window reader
            (:func:`engine.data.sources.rasters.open_raster`); the output is held in
            memory, so use :func:`predict_raster` for rasters too large for that.
        num_classes: ``N``.
        normalization: The model's input contract
            (:meth:`engine.data.shards.normalize.Normalization.from_manifest` of the export's
            ``dataset.json``, or :func:`rgb_normalization`): ``C`` bands, ``(x - mean) / std``
            per band, nodata -> 0, applied on the device.
        options: Window layout and run settings (default :class:`SlidingOptions`); the
            rows per block are raised to at least ``max(tile, 256)`` here.
        progress: Label of a tqdm bar over windows; ``None``: no bar.

    Returns:
        float32 ``[N, H, W]`` probabilities.
    """
    options = options or SlidingOptions()
    options = replace(options, rows_per_block=max(options.tile, 256))
    reader = _as_reader(image)
    height, width = reader.shape[:2]
    out = np.empty((num_classes, height, width), np.float32)
    blocks = iter_probability_blocks(
        model, reader, num_classes=num_classes, normalization=normalization,
        options=options, progress=progress,
    )  # fmt: skip
    for row0, col0, probs in blocks:
        out[:, row0 : row0 + probs.shape[1], col0 : col0 + probs.shape[2]] = probs
    return out


def predict_mask(
    model: torch.nn.Module,
    image: Any,
    *,
    num_classes: int,
    normalization: Normalization,
    options: SlidingOptions | None = None,
) -> np.ndarray:
    """Class-index ``HxW`` uint8 mask: the argmax of :func:`predict_probabilities`."""
    probs = predict_probabilities(
        model, image, num_classes=num_classes, normalization=normalization, options=options
    )
    return probs.argmax(axis=0).astype(np.uint8)


def predict_raster(
    model: torch.nn.Module,
    reader: RasterReader,
    writer: Any,
    *,
    num_classes: int,
    normalization: Normalization,
    options: SlidingOptions | None = None,
    progress: str | None = None,
) -> None:
    """Predict a raster of any size, handing finished blocks to a writer.

    Only the pixels a strip of windows needs are read, and each block of finished pixels
    is passed to ``writer.write(row0, probs, col0)`` (float32 ``[N, rows, cols]``) as soon as
    no later window touches it, so peak memory is bounded by ``band_width x tile x N``
    whatever the raster size (see the module notes). With one band (rasters up to
    ``band_width`` wide) blocks are full rows, in order, without gaps. The writer is not
    closed here (use :class:`engine.infer.writer.PredictionWriter` as a context manager).
    Arguments are those of :func:`predict_probabilities` (``options.rows_per_block`` as
    given).
    """
    blocks = iter_probability_blocks(
        model, reader, num_classes=num_classes, normalization=normalization,
        options=options, progress=progress,
    )  # fmt: skip
    for row0, col0, probs in blocks:
        writer.write(row0, probs, col0)
        del probs  # do not hold the block through the next forward pass
