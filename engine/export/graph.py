"""The network that goes into an ONNX file: native bands in, class probabilities out.

:class:`NativeBandsModel` wraps a trained network with everything terraseg does around it
at prediction time, so the file needs nothing outside itself:

1. optional band selection: the input may hold more bands than the model (all 13 bands of
   a Sentinel-2 layer); the model's bands are gathered by index, in the model's order;
2. integer bands are rounded to whole numbers (a no-op on native integer values; it undoes
   the last-bit error of a host that scales the input and back, as QGIS's Deepness does:
   see :mod:`engine.export.metadata`), so that nodata values compare exactly;
3. :class:`engine.data.shards.normalize.Normalization` itself, the same torch code as
   training and prediction: ``(x - mean) / std`` per band, a band's nodata value → 0;
4. the network, its segmentation logits (multitask models: the main output);
5. softmax over the classes (``probabilities``) or their argmax (``labels``, int64).

:func:`static_adaptive_pooling` lets the exporters trace adaptive max pooling to an output
that is no divisor of the input (ResUNet-a's PSP pooling of a small crop: 2² cells to a
4² grid), which neither ONNX exporter supports: during the export only, for the fixed input
size, it is the same bins' maxima taken by slices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from archs import segmentation_logits, unwrap_model
from engine.data.shards.normalize import Normalization

#: What the graph returns: probabilities ``[B, N, H, W]`` or labels ``[B, H, W]`` (int64).
OUTPUTS = ("probabilities", "labels")

#: Band pixel types whose values are whole numbers.
INTEGER_DTYPES = ("uint8", "uint16", "int16")


class NativeBandsModel(nn.Module):
    """A trained network behind its own input contract (see the module notes).

    Args:
        model: The network (returns logits, or a multitask output).
        normalization: The model's bands, statistics and nodata (channel order).
        gather: For each model band, its index in the input; ``None``: the input is
            exactly the model's bands.
        output: One of :data:`OUTPUTS`.
    """

    def __init__(
        self,
        model: nn.Module,
        normalization: Normalization,
        gather: Sequence[int] | None = None,
        output: str = "probabilities",
    ) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        self.model = unwrap_model(model)
        self.normalization = normalization
        self.output = output
        index = torch.tensor(list(gather), dtype=torch.int64) if gather is not None else None
        self.register_buffer("gather", index, persistent=False)
        integer = [b.dtype in INTEGER_DTYPES for b in normalization.bands]
        self.round_bands = any(integer)
        flags = torch.tensor(integer, dtype=torch.bool).view(1, -1, 1, 1)
        self.register_buffer("integer", flags, persistent=False)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        """Native float32 bands ``[B, C_in, H, W]`` → probabilities or labels."""
        gather: torch.Tensor | None = self.gather  # type: ignore[assignment]
        integer: torch.Tensor = self.integer  # type: ignore[assignment]
        x = bands if gather is None else bands.index_select(1, gather)
        if self.round_bands:
            x = torch.where(integer, torch.round(x), x)
        x = self.normalization(x)
        logits = segmentation_logits(self.model(x)).float()
        if self.output == "labels":
            return logits.argmax(dim=1)
        return torch.softmax(logits, dim=1)


def _bin_max(x: torch.Tensor, cells: int, dim: int) -> torch.Tensor:
    """Max over ``cells`` adaptive-pooling bins along ``dim`` (PyTorch's bin bounds)."""
    size = int(x.shape[dim])
    parts = [
        x.narrow(
            dim, (i * size) // cells, -(-((i + 1) * size) // cells) - (i * size) // cells
        ).amax(dim=dim, keepdim=True)
        for i in range(cells)
    ]
    return torch.cat(parts, dim=dim)


def _adaptive_max_pool2d_by_slices(x: torch.Tensor, output_size, return_indices=False):
    if return_indices:
        raise NotImplementedError("adaptive max pooling indices are not exported")
    rows, cols = (output_size, output_size) if isinstance(output_size, int) else output_size
    return _bin_max(_bin_max(x, int(rows), -2), int(cols), -1)


@contextlib.contextmanager
def static_adaptive_pooling() -> Iterator[None]:
    """Within the block, ``F.adaptive_max_pool2d`` is computed by slices (see the notes)."""
    original = F.adaptive_max_pool2d
    F.adaptive_max_pool2d = _adaptive_max_pool2d_by_slices  # type: ignore[assignment]
    try:
        yield
    finally:
        F.adaptive_max_pool2d = original
