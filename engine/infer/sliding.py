"""Sliding-window prediction over images of any size, streamed in row strips.

The window layout, blending weights, TTA and column bands are in :mod:`engine.infer.windows`.

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
from typing import Any

import numpy as np
import torch

from archs import segmentation_logits
from engine.data.shards.normalize import Normalization
from engine.data.sources.raster_base import ArrayReader, RasterReader
from engine.errors import UserError
from engine.infer.windows import (
    ColumnBand,
    axis_weights,
    column_bands,
    coverage,
    plan_axis,
    take_padded,
    tta_transforms,
    window_stride,
)

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class InferenceError(UserError):
    """Bad prediction settings, or a model whose output does not match its classes."""


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None):
    """Turn ``"auto"``/``None``/a name into a :class:`torch.device`.

    ``None`` means the device of the model's parameters (CPU for a parameterless model);
    ``"auto"`` means CUDA when available, else CPU.
    """
    if device is None and model is not None:
        parameter = next(iter(model.parameters()), None)
        return parameter.device if parameter is not None else torch.device("cpu")
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise InferenceError(f"device {device!r}: not a device name ({error})") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r}: CUDA is not available on this machine")
    return resolved


def resolve_amp(amp_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Accept ``None``/``"none"``/``"bf16"``/``"fp16"`` or a torch dtype."""
    if amp_dtype is None or isinstance(amp_dtype, torch.dtype):
        return amp_dtype
    if amp_dtype not in AMP_DTYPES:
        raise InferenceError(f"amp dtype must be one of {sorted(AMP_DTYPES)}, not {amp_dtype!r}")
    return AMP_DTYPES[amp_dtype]


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1, in place (the logits are not needed afterwards)."""
    logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
    return logits.div_(logits.sum(dim=1, keepdim=True))


def _as_reader(image: Any) -> RasterReader:
    """A reader as it is; an ``HxWxC`` array or tensor (native band values) wrapped."""
    if isinstance(image, RasterReader) or (hasattr(image, "read") and hasattr(image, "shape")):
        return image
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    return ArrayReader(np.asarray(image))


def resolve_normalization(
    normalization: Normalization | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> Normalization:
    """The input normalisation: ``normalization``, or 3 uint8 RGB bands from 0–1 mean/std.

    ``mean``/``std`` (a version 2 ``dataset.json``'s values) are kept for RGB callers.
    """
    if normalization is not None:
        return normalization
    if mean is None or std is None:
        raise InferenceError("give normalization (or the 0-1 mean and std of 3 uint8 bands)")
    if len(mean) != 3 or len(std) != 3:
        raise InferenceError(f"mean and std need 3 values, got {list(mean)} and {list(std)}")
    return Normalization.from_manifest({"mean": list(mean), "std": list(std)})


def _check_bands(reader: RasterReader, normalization: Normalization) -> None:
    channels = reader.shape[2]
    if channels != normalization.in_channels:
        names = getattr(reader, "band_names", None) or []
        has = f" ({', '.join(names)})" if names else ""
        raise InferenceError(
            f"{getattr(reader, 'path', None) or '<array>'}: {channels} band(s){has}, but the "
            f"model takes {normalization.in_channels} ({', '.join(normalization.names)})"
        )


def _check_options(tile: int, overlap: float, batch_size: int, num_classes: int) -> int:
    if tile < 1:
        raise InferenceError(f"tile must be >= 1, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise InferenceError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
    if num_classes < 1:
        raise InferenceError(f"num_classes must be >= 1, got {num_classes}")
    return window_stride(tile, overlap)


def iter_probability_blocks(
    model: torch.nn.Module,
    image: Any,
    *,
    num_classes: int,
    normalization: Normalization | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile: int = 1024,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: str = "none",
    device: str | torch.device | None = None,
    amp_dtype: str | torch.dtype | None = None,
    weighting: str = "gaussian",
    band_width: int | None = 16384,
    rows_per_block: int = 128,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(row0, col0, probs)`` blocks of final probabilities.

    Arguments are those of :func:`predict_probabilities`, plus ``rows_per_block`` (the most
    rows per yielded block). Blocks cover the image exactly once: column band by column
    band (see :func:`column_bands`), top to bottom within a band. With one band (images
    no wider than ``band_width`` plus padding) every block spans the full width, so rows
    arrive in order.

    Yields:
        ``row0``, ``col0`` and float32 ``[N, rows, cols]`` probabilities (sum 1 over ``N``).
    """
    stride = _check_options(tile, overlap, batch_size, num_classes)
    if band_width is not None and band_width < 1:
        raise InferenceError(f"band_width must be >= 1 or None, got {band_width}")
    normalization = resolve_normalization(normalization, mean, std)
    reader = _as_reader(image)
    _check_bands(reader, normalization)
    height, width = reader.shape[:2]
    transforms = tta_transforms(tta)
    amp = resolve_amp(amp_dtype)
    device = resolve_device(device, model)
    model.to(device)
    was_training = model.training
    model.eval()

    rows, cols = plan_axis(height, tile, stride), plan_axis(width, tile, stride)
    real0, real1 = cols.pad_before, cols.pad_before + width  # real columns, padded coordinates
    # Bands that finalise only padding are skipped.
    bands = [b for b in column_bands(cols, stride, band_width) if b.own0 < real1 and b.own1 > real0]
    # The windows form a full grid and the weights are separable, so the summed weight at
    # (y, x) is row_cover[y] * col_cover[x]: no 2-D weight accumulator is needed.
    g = axis_weights(tile, weighting)
    weights = torch.outer(g, g).to(device)
    row_cover = coverage(rows, g)
    col_cover = (1.0 / coverage(cols, g)).float().to(device)

    def tiles() -> Iterator[tuple[int, int, int, np.ndarray]]:
        for number, band in enumerate(bands):
            left = cols.starts[band.first]
            col_index = cols.source_index(left, cols.starts[band.stop - 1] + tile)
            src0, src1 = int(col_index.min()), int(col_index.max()) + 1
            for k, y in enumerate(rows.starts):
                index = rows.source_index(y, y + tile)
                low, high = int(index.min()), int(index.max()) + 1
                block = reader.read(low, high, src0, src1)
                strip = take_padded(block, index - low, col_index - src0)
                del block
                for x in cols.starts[band.first : band.stop]:
                    yield number, k, x - left, strip[:, x - left : x - left + tile]

    @torch.no_grad()
    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
        if x.dtype == torch.uint16:  # few kernels take uint16: widen on the device
            x = x.to(torch.int32)
        x = normalization(x)  # native bands -> (x - mean) / std, nodata -> 0
        shape = tuple(x.shape)
        total: torch.Tensor | None = None
        for number, (fwd, inv) in enumerate(transforms):
            inputs = fwd(x)
            if number == len(transforms) - 1:
                del x  # free the batch before the softmax (peak memory)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                output = model(inputs)
            del inputs
            logits = segmentation_logits(output)
            del output
            if logits.shape[1] != num_classes or tuple(logits.shape[-2:]) != shape[-2:]:
                raise InferenceError(
                    f"model returned logits {tuple(logits.shape)} for a tile batch "
                    f"{shape}; expected [B, {num_classes}, {tile}, {tile}] "
                    "(is the tile a multiple of the model's stride?)"
                )
            probs = inv(_softmax_(logits.float().contiguous()))
            del logits
            total = probs if total is None else total.add_(probs)
            del probs
        assert total is not None
        return total.div_(len(transforms)) if len(transforms) > 1 else total

    class Accumulator:
        """One band's ``[N, T, band columns]`` sums; buffer row 0 is padded row ``top``."""

        def __init__(self, band: ColumnBand) -> None:
            self.left = cols.starts[band.first]
            right = cols.starts[band.stop - 1] + tile
            self.acc = torch.zeros(num_classes, tile, right - self.left, device=device)
            # The real columns this band finalises, in padded coordinates.
            self.col0, self.col1 = max(band.own0, real0), min(band.own1, real1)
            self.current = 0  # window row whose top is buffer row 0

        def emit(self, count: int) -> Iterator[tuple[int, int, np.ndarray]]:
            """Yield buffer rows ``[0, count)`` that hold real rows."""
            top = rows.starts[self.current]
            first = max(0, rows.pad_before - top)
            last = min(count, rows.pad_before + height - top)
            c0, c1 = self.col0 - self.left, self.col1 - self.left
            for a in range(first, last, rows_per_block):
                b = min(last, a + rows_per_block)
                inverse = (1.0 / row_cover[top + a : top + b]).float().to(device)
                probs = self.acc[:, a:b, c0:c1] * col_cover[self.col0 : self.col1]
                probs.mul_(inverse[:, None])
                yield top + a - rows.pad_before, self.col0 - real0, probs.cpu().numpy()

        def advance_to(self, k: int) -> Iterator[tuple[int, int, np.ndarray]]:
            """Finalise the rows no window row from ``k`` on touches; make ``k`` current."""
            while self.current < k:
                step = rows.starts[self.current + 1] - rows.starts[self.current]
                yield from self.emit(step)
                keep = tile - step
                if keep > 0:  # shift up in chunks whose source and destination do not overlap
                    chunk = min(step, keep)
                    for r in range(0, keep, chunk):
                        n = min(chunk, keep - r)
                        self.acc[:, r : r + n].copy_(self.acc[:, r + step : r + step + n])
                self.acc[:, max(keep, 0) :].zero_()
                self.current += 1

        def finish(self) -> Iterator[tuple[int, int, np.ndarray]]:
            yield from self.emit(tile)

    from tqdm.auto import tqdm

    total_windows = len(rows.starts) * sum(b.stop - b.first for b in bands)
    bar = tqdm(total=total_windows, unit="win", desc=desc, disable=not progress, leave=False)
    band_number, state = -1, None
    try:
        pending: list[tuple[int, int, int, np.ndarray]] = []
        source = tiles()
        while True:
            pending.clear()
            for item in source:
                pending.append(item)
                if len(pending) == batch_size:
                    break
            if not pending:
                break
            probs = forward(np.stack([t for *_, t in pending]))
            for (number, k, x, _), p in zip(pending, probs):
                if number != band_number:
                    if state is not None:
                        yield from state.finish()
                    state = None  # free the finished band's sums before allocating the next
                    band_number, state = number, Accumulator(bands[number])
                assert state is not None
                yield from state.advance_to(k)
                state.acc[:, :, x : x + tile].addcmul_(p, weights)
            del probs, p  # before the next batch's forward pass (peak memory)
            bar.update(len(pending))
        if state is not None:
            yield from state.finish()
    finally:
        bar.close()
        if was_training:
            model.train()


def predict_probabilities(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor | RasterReader,
    *,
    num_classes: int,
    normalization: Normalization | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile: int = 1024,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: str = "none",
    device: str | torch.device | None = None,
    amp_dtype: str | torch.dtype | None = None,
    weighting: str = "gaussian",
    band_width: int | None = 16384,
    progress: bool = False,
) -> np.ndarray:
    """Predict class probabilities of a whole image by blended sliding windows.

    Args:
        model: Returns logits ``[B, N, T, T]`` (or an object with ``.segmentation``) for a
            normalised float batch ``[B, C, T, T]``. Put in eval mode for the call (its
            previous mode is restored) and moved to ``device``.
        image: ``HxWxC`` array or tensor of native band values, or a window reader
            (:func:`engine.data.sources.rasters.open_raster`); the output is held in memory, so use
            :func:`predict_raster` for rasters too large for that.
        num_classes: ``N``.
        normalization: The model's input contract
            (:meth:`engine.data.shards.normalize.Normalization.from_manifest` of the export's
            ``dataset.json``): ``C`` bands, ``(x - mean) / std`` per band, nodata -> 0,
            applied on the device.
        mean: Without ``normalization``: per-channel mean of 3 uint8 bands, 0–1 scale.
        std: Without ``normalization``: per-channel std of 3 uint8 bands, 0–1 scale.
        tile: Window edge ``T`` in pixels.
        overlap: Fraction of ``T`` shared by neighbouring windows, in ``[0, 1)``.
        batch_size: Tiles per forward pass.
        tta: ``"none"``, ``"flip"`` (3 passes) or ``"d4"`` (8 passes).
        device: Where the model runs; ``None`` = where the model is, ``"auto"`` = CUDA if
            available.
        amp_dtype: ``None``/``"bf16"``/``"fp16"`` (or a torch dtype) for autocast; the
            softmax and the blending stay float32.
        weighting: ``"gaussian"`` or ``"uniform"`` (see the module notes).
        band_width: Columns finalised per column band (see the module notes); ``None``:
            one band whatever the width.
        progress: Show a tqdm bar over windows.

    Returns:
        float32 ``[N, H, W]`` probabilities.
    """
    reader = _as_reader(image)
    height, width = reader.shape[:2]
    out = np.empty((num_classes, height, width), np.float32)
    for row0, col0, probs in iter_probability_blocks(
        model,
        reader,
        num_classes=num_classes,
        normalization=normalization,
        mean=mean,
        std=std,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        device=device,
        amp_dtype=amp_dtype,
        weighting=weighting,
        band_width=band_width,
        progress=progress,
        rows_per_block=max(tile, 256),
    ):
        out[:, row0 : row0 + probs.shape[1], col0 : col0 + probs.shape[2]] = probs
    return out


def predict_mask(model: torch.nn.Module, image: Any, **options: Any) -> np.ndarray:
    """Class-index ``HxW`` uint8 mask: the argmax of :func:`predict_probabilities`."""
    return predict_probabilities(model, image, **options).argmax(axis=0).astype(np.uint8)


def predict_raster(
    model: torch.nn.Module,
    reader: RasterReader,
    writer: Any,
    *,
    num_classes: int,
    normalization: Normalization | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    tile: int = 1024,
    overlap: float = 0.25,
    batch_size: int = 4,
    tta: str = "none",
    device: str | torch.device | None = None,
    amp_dtype: str | torch.dtype | None = None,
    weighting: str = "gaussian",
    band_width: int | None = 16384,
    rows_per_block: int = 128,
    progress: bool = True,
    desc: str | None = None,
) -> None:
    """Predict a raster of any size, handing finished blocks to a writer.

    Only the pixels a strip of windows needs are read, and each block of finished pixels
    is passed to ``writer.write(row0, probs, col0)`` (float32 ``[N, rows, cols]``) as soon as
    no later window touches it, so peak memory is bounded by ``band_width x tile x N``
    whatever the raster size (see the module notes). With one band (rasters up to
    ``band_width`` wide) blocks are full rows, in order, without gaps. The writer is not
    closed here (use :class:`engine.infer.writer.PredictionWriter` as a context manager).
    Arguments are those of :func:`predict_probabilities`; ``progress`` shows a tqdm bar
    over windows, labelled ``desc``.
    """
    for row0, col0, probs in iter_probability_blocks(
        model,
        reader,
        num_classes=num_classes,
        normalization=normalization,
        mean=mean,
        std=std,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        device=device,
        amp_dtype=amp_dtype,
        weighting=weighting,
        band_width=band_width,
        rows_per_block=rows_per_block,
        progress=progress,
        desc=desc,
    ):
        writer.write(row0, probs, col0)
        del probs  # do not hold the block through the next forward pass
