"""The model's input contract: per-band statistics and the normalisation built from them.

One rule for every band count and pixel type: a pixel value ``x`` of band ``b`` (in the
band's native units: uint8 0–255, reflectance ×10000, dB, ...) enters the model as
``(x - mean[b]) / std[b]``, and a pixel equal to the band's ``nodata`` value enters as 0
(the band's mean). The statistics come from the train split (``dataset.json``; an export
carries the same record), so training, evaluation and prediction see the same numbers.

Photometric augmentation works on a *unit* scale per band, ``(x - lo) / (hi - lo)``: for
uint8 bands ``lo, hi = 0, 255`` (the 0–1 scale RGB tools use), for other types the band's
display percentiles (``display``, the 2nd and 98th of the train split). Standardising the
unit-scale image with the mean and std expressed on that scale gives exactly the same
result as standardising the raw image.

Manifests of shard format version 2 (RGB uint8, ``mean``/``std`` on the 0–1 scale) read
as three uint8 bands ``red``, ``green``, ``blue`` with ``rgb_bands = (0, 1, 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are used: the shard builder needs none
    import torch

#: Pixel types an image band may have in shards (stored as they are, never rescaled).
BAND_DTYPES = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class BandStats:
    """One image band as the model sees it.

    Attributes:
        name: Band name (the raster's band description, a ``--bands`` name, ``band3``...).
        dtype: Pixel type in the shards (one of :data:`BAND_DTYPES`).
        mean: Mean over valid pixels of the train split, native units.
        std: Population standard deviation over the same pixels, native units.
        display: ``(low, high)`` display range (2nd and 98th percentiles; ``(0, 255)`` for
            uint8 bands of version 2 manifests).
        nodata: The band's no-data value (``nan`` allowed for float bands), or ``None``.
    """

    name: str
    dtype: str
    mean: float
    std: float
    display: tuple[float, float]
    nodata: float | None = None

    @property
    def unit_range(self) -> tuple[float, float]:
        """``(lo, hi)`` of the unit scale used by photometric augmentation."""
        if self.dtype == "uint8":
            return 0.0, 255.0
        low, high = self.display
        return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)

    def record(self) -> dict[str, Any]:
        """The band's ``dataset.json`` record (NaN nodata is written as the string ``"nan"``)."""
        nodata: float | str | None = self.nodata
        if self.nodata is not None and math.isnan(self.nodata):
            nodata = "nan"
        return {
            "name": self.name,
            "dtype": self.dtype,
            "mean": float(self.mean),
            "std": float(self.std),
            "display": [float(self.display[0]), float(self.display[1])],
            "nodata": nodata,
        }


def _nodata(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() == "nan":
            return math.nan
        raise ValueError(f"nodata {value!r} is not a number or 'nan'")
    return float(value)


def band_from_record(record: Mapping[str, Any]) -> BandStats:
    """Read one ``bands[i]`` record of a version 3 manifest (or an export)."""
    low, high = record["display"]
    return BandStats(
        name=str(record["name"]),
        dtype=str(record["dtype"]),
        mean=float(record["mean"]),
        std=float(record["std"]),
        display=(float(low), float(high)),
        nodata=_nodata(record.get("nodata")),
    )


def _rgb_indices(rgb: Any, count: int) -> tuple[int, int, int]:
    """``rgb_bands`` of a record: three indices of its ``count`` bands (ValueError if not)."""
    indices = [int(i) for i in rgb]
    if len(indices) != 3 or not all(0 <= i < count for i in indices):
        raise ValueError(f"rgb_bands {rgb!r} must be 3 band indices below {count}")
    red, green, blue = indices
    return red, green, blue


@dataclass(frozen=True)
class Normalization:
    """Per-band statistics of a dataset and the input transform they define.

    Attributes:
        bands: One :class:`BandStats` per model input channel, in channel order.
        rgb_bands: Indices of the bands that make a true-colour view (red, green, blue),
            or ``None`` when the data has no such bands.
    """

    bands: tuple[BandStats, ...]
    rgb_bands: tuple[int, int, int] | None = (0, 1, 2)

    @classmethod
    def from_manifest(cls, data: Mapping[str, Any]) -> Normalization:
        """Build from a ``dataset.json`` mapping of version 2 or 3 (or an export's copy)."""
        if "bands" in data:
            bands = tuple(band_from_record(b) for b in data["bands"])
            rgb = data.get("rgb_bands")
            return cls(bands, None if rgb is None else _rgb_indices(rgb, len(bands)))
        names = ("red", "green", "blue")
        bands = tuple(
            BandStats(name, "uint8", float(m) * 255.0, float(s) * 255.0, (0.0, 255.0))
            for name, m, s in zip(names, data["mean"], data["std"], strict=True)
        )
        return cls(bands, (0, 1, 2))

    @property
    def in_channels(self) -> int:
        """Number of model input channels (= bands)."""
        return len(self.bands)

    @property
    def names(self) -> list[str]:
        """Band names in channel order."""
        return [b.name for b in self.bands]

    def _column(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)

    def unit_scale(self) -> tuple[list[float], list[float]]:
        """``(lo, span)`` per band: the unit scale is ``(x - lo) / span``."""
        ranges = [b.unit_range for b in self.bands]
        return [lo for lo, _ in ranges], [hi - lo for lo, hi in ranges]

    def unit_mean_std(self) -> tuple[list[float], list[float]]:
        """Mean and std of each band on its unit scale."""
        lo, span = self.unit_scale()
        mean = [(b.mean - low) / s for b, low, s in zip(self.bands, lo, span)]
        std = [max(b.std, 1e-12) / s for b, s in zip(self.bands, span)]
        return mean, std

    def nodata_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        """``[B, C, H, W]`` bool, True where a band equals its nodata value (None: no nodata)."""
        if all(b.nodata is None for b in self.bands):
            return None
        import torch

        flags = []
        for channel, band in enumerate(self.bands):
            x = images[:, channel]
            if band.nodata is None:
                flags.append(torch.zeros_like(x, dtype=torch.bool))
            elif math.isnan(band.nodata):
                flags.append(
                    torch.isnan(x)
                    if x.is_floating_point()
                    else torch.zeros_like(x, dtype=torch.bool)
                )
            else:  # compared in float32 (exact for 8/16-bit values; CUDA lacks uint16 ==)
                flags.append(x.float() == band.nodata)
        return torch.stack(flags, 1)

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Native ``[B, C, H, W]`` images (any band dtype) to float32 on the unit scale.

        Pixels equal to a band's nodata value take the band's mean (0 once standardised).
        """
        import torch

        self._check(images)
        lo, span = self.unit_scale()
        mean, _ = self.unit_mean_std()
        nodata = self.nodata_mask(images)
        # In place on a fresh float32 copy: the same operations in the same order (the same
        # bits) without two more full-size temporaries.
        unit = images.float() if images.dtype != torch.float32 else images.clone()
        unit.sub_(self._column(lo, images)).div_(self._column(span, images))
        if nodata is not None:
            unit = torch.where(nodata, self._column(mean, images).expand_as(unit), unit)
        return unit

    def standardize_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Unit-scale float images to the model's input (``(unit - mean_u) / std_u``)."""
        mean, std = self.unit_mean_std()
        return (unit - self._column(mean, unit)).div_(self._column(std, unit))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Native images ``[B, C, H, W]`` to the model's float32 input (evaluation path).

        ``standardize_unit(to_unit(images))`` computed in one float32 buffer (a 13-band
        batch of 4 x 1024² is 218 MB per float32 copy): the same operations in the same
        order, so the same bits; nodata pixels are 0.
        """
        import torch

        self._check(images)
        lo, span = self.unit_scale()
        mean, std = self.unit_mean_std()
        x = images.float() if images.dtype != torch.float32 else images.clone()
        x.sub_(self._column(lo, x)).div_(self._column(span, x))
        x.sub_(self._column(mean, x)).div_(self._column(std, x))
        nodata = self.nodata_mask(images)
        if nodata is not None:
            x.masked_fill_(nodata, 0.0)
        return x

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images [B, {self.in_channels}, H, W] ({', '.join(self.names)}), "
                f"got {list(images.shape)}"
            )

    def records(self) -> dict[str, Any]:
        """The ``bands`` and ``rgb_bands`` fields of a version 3 manifest."""
        return {
            "bands": [b.record() for b in self.bands],
            "rgb_bands": list(self.rgb_bands) if self.rgb_bands is not None else None,
        }


def normalize(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """Native ``[B, C, H, W]`` images to the model's input (see :class:`Normalization`)."""
    return normalization(images)
