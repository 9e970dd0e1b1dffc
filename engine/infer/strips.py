"""The machinery of sliding-window prediction: settings, one image's pass, band sums.

:class:`WindowPass` reads an image's windows strip by strip and runs the model over them;
:class:`BandSums` blends a column band's windows and hands on its finished rows. The public
names (:class:`SlidingOptions`, :class:`InferenceError`, :func:`resolve_device`, ...) are
those of :mod:`engine.infer.sliding`, whose notes describe the streaming.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from archs import segmentation_logits
from engine.data.shards.normalize import Normalization
from engine.data.sources.raster_base import RasterReader
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


class ProbabilityModel:
    """A prediction backend that is not a torch network (an ONNX session, say).

    It takes the native bands, float32 ``[B, C, T, T]`` on the CPU (its own graph selects
    bands, handles nodata and normalises), and returns float32 probabilities
    ``[B, N, T, T]``. :class:`WindowPass` runs it on the CPU, with the same windows, TTA
    and blending as a torch network.
    """

    training = False

    def __call__(self, bands: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of native bands."""
        raise NotImplementedError


def memory_format_of(model: torch.nn.Module) -> torch.memory_format:
    """``channels_last`` when the model's first 4-D weight is stored so, else contiguous."""
    for parameter in model.parameters():
        if parameter.ndim == 4:
            if parameter.is_contiguous() or not parameter.is_contiguous(
                memory_format=torch.channels_last
            ):
                return torch.contiguous_format
            return torch.channels_last
    return torch.contiguous_format


def check_bands(reader: RasterReader, normalization: Normalization) -> None:
    """Refuse a reader without the model's number of bands (naming both)."""
    channels = reader.shape[2]
    if channels != normalization.in_channels:
        names = getattr(reader, "band_names", None) or []
        has = f" ({', '.join(names)})" if names else ""
        raise InferenceError(
            f"{getattr(reader, 'path', None) or '<array>'}: {channels} band(s){has}, but the "
            f"model takes {normalization.in_channels} ({', '.join(normalization.names)})"
        )


@dataclass(frozen=True)
class SlidingOptions:
    """How the windows are laid out and run (see :mod:`engine.infer.sliding`).

    Attributes:
        tile: Window edge ``T`` in pixels.
        overlap: Fraction of ``T`` shared by neighbouring windows, in ``[0, 1)``.
        batch_size: Tiles per forward pass.
        tta: ``"none"``, ``"flip"`` (3 passes) or ``"d4"`` (8 passes).
        weighting: ``"gaussian"`` or ``"uniform"`` blending of overlapping windows.
        band_width: Columns finalised per column band; ``None``: one band whatever the width.
        device: Where the model runs; ``None`` = where the model is, ``"auto"`` = CUDA if
            available.
        amp_dtype: ``None``/``"bf16"``/``"fp16"`` (or a torch dtype) for autocast; the
            softmax and the blending stay float32.
        rows_per_block: The most rows per block of finished probabilities handed on.
        channels_last: Run a PyTorch network with channels-last weights and inputs (the
            tiles, read HWC, mostly arrive so; oneDNN and tensor cores prefer the layout:
            ResUNet-34's forward ~5 % faster on the 2-core Xeon, 1.3× against fully NCHW
            tensors); the model's memory format is put back afterwards.
    """

    tile: int = 1024
    overlap: float = 0.25
    batch_size: int = 4
    tta: str = "none"
    weighting: str = "gaussian"
    band_width: int | None = 16384
    device: str | torch.device | None = None
    amp_dtype: str | torch.dtype | None = None
    rows_per_block: int = 128
    channels_last: bool = True

    def stride(self) -> int:
        """The stride between windows, after checking the settings.

        Raises:
            InferenceError: for a tile, overlap, batch size or band width out of range.
        """
        if self.tile < 1:
            raise InferenceError(f"tile must be >= 1, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise InferenceError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.band_width is not None and self.band_width < 1:
            raise InferenceError(f"band_width must be >= 1 or None, got {self.band_width}")
        return window_stride(self.tile, self.overlap)


Block = tuple[int, int, np.ndarray]  # (row0, col0, float32 [N, rows, cols] probabilities)


class WindowPass:
    """One image's windows: their layout, reads and forward passes.

    Construction checks the settings and the bands, moves the model to the device and
    puts it in eval mode (:meth:`restore` puts back its previous mode).
    """

    def __init__(
        self,
        model: torch.nn.Module | ProbabilityModel,
        reader: RasterReader,
        num_classes: int,
        normalization: Normalization,
        options: SlidingOptions,
    ) -> None:
        stride = options.stride()
        if num_classes < 1:
            raise InferenceError(f"num_classes must be >= 1, got {num_classes}")
        check_bands(reader, normalization)
        self.model, self.reader, self.num_classes = model, reader, num_classes
        self.normalization, self.tile = normalization, options.tile
        self.height, self.width = reader.shape[:2]
        self.transforms = tta_transforms(options.tta)
        self.amp = resolve_amp(options.amp_dtype)
        self.native = isinstance(model, ProbabilityModel)
        self.memory_format = torch.channels_last if options.channels_last else None
        self.was_training = model.training
        if self.native:
            if self.amp is not None:
                raise InferenceError("amp applies to PyTorch models, not to an ONNX model")
            self.device = torch.device("cpu")
        else:
            assert isinstance(model, torch.nn.Module)
            self.device = resolve_device(options.device, model)
            model.to(self.device)
            model.eval()
            self.previous_format = memory_format_of(model)
            if self.memory_format is not None:
                model.to(memory_format=self.memory_format)
        self.rows = plan_axis(self.height, options.tile, stride)
        self.cols = plan_axis(self.width, options.tile, stride)
        # Real columns, in padded coordinates; bands that finalise only padding are skipped.
        self.real0, self.real1 = self.cols.pad_before, self.cols.pad_before + self.width
        bands = column_bands(self.cols, stride, options.band_width)
        self.bands = [b for b in bands if b.own0 < self.real1 and b.own1 > self.real0]
        # The windows form a full grid and the weights are separable, so the summed weight
        # at (y, x) is row_cover[y] * col_cover[x]: no 2-D weight accumulator is needed.
        g = axis_weights(options.tile, options.weighting)
        self.weights = torch.outer(g, g).to(self.device)
        self.row_cover = coverage(self.rows, g)
        self.col_cover = (1.0 / coverage(self.cols, g)).float().to(self.device)

    @property
    def window_count(self) -> int:
        """Windows computed, those of neighbouring bands counted twice."""
        return len(self.rows.starts) * sum(b.stop - b.first for b in self.bands)

    def restore(self) -> None:
        """Put the model back as it was: its memory format, and training mode if it was in it."""
        if not isinstance(self.model, torch.nn.Module):
            return
        if self.memory_format is not None and self.previous_format != self.memory_format:
            self.model.to(memory_format=self.previous_format)
        if self.was_training:
            self.model.train()

    def tiles(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """Yield ``(band number, window row, column in the band, HxWxC tile)``."""
        cols, tile = self.cols, self.tile
        for number, band in enumerate(self.bands):
            left = cols.starts[band.first]
            col_index = cols.source_index(left, cols.starts[band.stop - 1] + tile)
            src0, src1 = int(col_index.min()), int(col_index.max()) + 1
            for k, y in enumerate(self.rows.starts):
                index = self.rows.source_index(y, y + tile)
                low, high = int(index.min()), int(index.max()) + 1
                block = self.reader.read(low, high, src0, src1)
                strip = take_padded(block, index - low, col_index - src0)
                del block
                for x in cols.starts[band.first : band.stop]:
                    yield number, k, x - left, strip[:, x - left : x - left + tile]

    @torch.no_grad()
    def forward(self, batch: np.ndarray) -> torch.Tensor:
        """Probabilities ``[B, N, T, T]`` of a batch of native ``[B, T, T, C]`` tiles."""
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2)
        if self.native:
            return self._forward_native(x.float())
        if x.dtype == torch.uint16:  # few kernels take uint16: widen on the device
            x = x.to(torch.int32)
        x = self.normalization(x)  # native bands -> (x - mean) / std, nodata -> 0
        shape = tuple(x.shape)
        total: torch.Tensor | None = None
        amp, kind = self.amp, self.device.type
        for number, (fwd, inv) in enumerate(self.transforms):
            inputs = fwd(x)
            if self.memory_format is not None:
                inputs = inputs.contiguous(memory_format=self.memory_format)
            if number == len(self.transforms) - 1:
                del x  # free the batch before the softmax (peak memory)
            with torch.autocast(kind, dtype=amp or torch.float32, enabled=amp is not None):
                output = self.model(inputs)
            del inputs
            logits = segmentation_logits(output)
            del output
            self._check_logits(logits, shape)
            probs = inv(_softmax_(logits.float().contiguous()))
            del logits
            total = probs if total is None else total.add_(probs)
            del probs
        assert total is not None
        return total.div_(len(self.transforms)) if len(self.transforms) > 1 else total

    def _forward_native(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities from a :class:`ProbabilityModel`: the same TTA mean."""
        total: torch.Tensor | None = None
        for fwd, inv in self.transforms:
            probs = self.model(fwd(x))
            self._check_logits(probs, tuple(x.shape))
            probs = inv(probs)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        return total.div_(len(self.transforms)) if len(self.transforms) > 1 else total

    def _check_logits(self, logits: torch.Tensor, shape: tuple[int, ...]) -> None:
        n, tile = self.num_classes, self.tile
        if logits.shape[1] != n or tuple(logits.shape[-2:]) != shape[-2:]:
            raise InferenceError(
                f"model returned logits {tuple(logits.shape)} for a tile batch "
                f"{shape}; expected [B, {n}, {tile}, {tile}] "
                "(is the tile a multiple of the model's stride?)"
            )


class BandSums:
    """One column band's ``[N, T, band columns]`` sums; buffer row 0 is padded row ``top``."""

    def __init__(self, run: WindowPass, band: ColumnBand, rows_per_block: int) -> None:
        self.run, self.rows_per_block = run, rows_per_block
        cols, tile = run.cols, run.tile
        self.left = cols.starts[band.first]
        right = cols.starts[band.stop - 1] + tile
        self.acc = torch.zeros(run.num_classes, tile, right - self.left, device=run.device)
        # The real columns this band finalises, in padded coordinates.
        self.col0, self.col1 = max(band.own0, run.real0), min(band.own1, run.real1)
        self.current = 0  # window row whose top is buffer row 0

    def add(self, x: int, probs: torch.Tensor) -> None:
        """Add one window's probabilities, weighted, at band column ``x``."""
        self.acc[:, :, x : x + self.run.tile].addcmul_(probs, self.run.weights)

    def emit(self, count: int) -> Iterator[Block]:
        """Yield buffer rows ``[0, count)`` that hold real rows."""
        run, rows = self.run, self.run.rows
        top = rows.starts[self.current]
        first = max(0, rows.pad_before - top)
        last = min(count, rows.pad_before + run.height - top)
        c0, c1 = self.col0 - self.left, self.col1 - self.left
        for a in range(first, last, self.rows_per_block):
            b = min(last, a + self.rows_per_block)
            inverse = (1.0 / run.row_cover[top + a : top + b]).float().to(run.device)
            probs = self.acc[:, a:b, c0:c1] * run.col_cover[self.col0 : self.col1]
            probs.mul_(inverse[:, None])
            yield top + a - rows.pad_before, self.col0 - run.real0, probs.cpu().numpy()

    def advance_to(self, k: int) -> Iterator[Block]:
        """Finalise the rows no window row from ``k`` on touches; make ``k`` current."""
        starts, tile = self.run.rows.starts, self.run.tile
        while self.current < k:
            step = starts[self.current + 1] - starts[self.current]
            yield from self.emit(step)
            keep = tile - step
            if keep > 0:  # shift up in chunks whose source and destination do not overlap
                chunk = min(step, keep)
                for r in range(0, keep, chunk):
                    n = min(chunk, keep - r)
                    self.acc[:, r : r + n].copy_(self.acc[:, r + step : r + step + n])
            self.acc[:, max(keep, 0) :].zero_()
            self.current += 1

    def finish(self) -> Iterator[Block]:
        """Yield every row still held."""
        yield from self.emit(self.run.tile)


def batches(run: WindowPass, batch_size: int) -> Iterator[list[tuple[int, int, int, np.ndarray]]]:
    """The tiles of ``run`` in batches of ``batch_size`` (the last may be short)."""
    pending: list[tuple[int, int, int, np.ndarray]] = []
    for item in run.tiles():
        pending.append(item)
        if len(pending) == batch_size:
            yield pending
            pending = []
    if pending:
        yield pending
