"""Weight cards: what a pretrained encoder file holds and what input its weights expect.

A card describes one published weight format: the timm architecture the file's state dict
belongs to, the bands its first convolution was trained on (in channel order), the input
scaling the weights expect, the licence, and where the weights come from (documentation
only: terraseg never downloads them; the user passes a local file). The tensor names and
shapes a file must hold are derived from timm itself: ``timm.create_model(timm_name,
in_chans=len(bands))``'s state dict (:func:`card_layout`), of which the classifier head
(``head_prefixes``) may be present, with any shape, or absent, and BatchNorm's
``num_batches_tracked`` counters may be absent.

The expected input of band ``b`` is ``(x - offset[b]) / divisor[b]`` with ``x`` in the
card's native units (``units``): ImageNet weights take uint8 values as
``(x / 255 - mean) / std`` (offset ``255 * mean``, divisor ``255 * std``); the SSL4EO-S12
Sentinel-2 weights take Level-1C digital numbers divided by 10,000, as TorchGeo's
``ResNet18_Weights.SENTINEL2_ALL_MOCO`` transforms (``Normalize(mean=0, std=10000)``).

>>> import archs
>>> archs.get_card("ssl4eo_s12_s2_resnet18_moco").bands[:3]
('B01', 'B02', 'B03')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: Sentinel-2 bands in the order of SSL4EO-S12 and TorchGeo's ``_sentinel2_toa_bands``.
S2_ALL_BANDS = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnknownCardError(ValueError):
    """A weight card name that is not registered (the message lists the known ones)."""


@dataclass(frozen=True)
class WeightCard:
    """One published pretrained-weight format.

    Attributes:
        name: Card name (``model.weights.card`` in a config).
        arch: Architecture in words (``ResNet-18``).
        timm_name: timm model whose state dict the file holds (``resnet18``).
        bands: Band names in the first convolution's channel order.
        sensor: ``sentinel-2`` (band ids ``B04`` ≡ ``B4`` ≡ ``red`` match) or ``rgb``.
        offset: Per band, subtracted from the native value.
        divisor: Per band, divides the result: the weights expect ``(x - offset) / divisor``.
        units: The native units ``x`` is in.
        scaling: The scaling in words (for docs and reports).
        licence: The weights' licence (SPDX identifier).
        source: Where the weights are published (documentation only; never fetched).
        method: How they were trained (``supervised``, ``moco``, ``dino``).
        head_prefixes: State-dict prefixes of the classifier head, which the file may hold
            (any shape; never loaded) or lack.
        first_conv: State-dict key of the first convolution's weight (adapted to the bands).
    """

    name: str
    arch: str
    timm_name: str
    bands: tuple[str, ...]
    sensor: str
    offset: tuple[float, ...]
    divisor: tuple[float, ...]
    units: str
    scaling: str
    licence: str
    source: str
    method: str
    head_prefixes: tuple[str, ...] = ("fc.",)
    first_conv: str = "conv1.weight"

    def __post_init__(self) -> None:
        count = len(self.bands)
        if len(self.offset) != count or len(self.divisor) != count:
            raise ValueError(f"card {self.name}: offset and divisor need one value per band")
        if any(d == 0 for d in self.divisor):
            raise ValueError(f"card {self.name}: a divisor is 0")


def _imagenet(depth: int) -> WeightCard:
    return WeightCard(
        name=f"imagenet_resnet{depth}",
        arch=f"ResNet-{depth}",
        timm_name=f"resnet{depth}",
        bands=("red", "green", "blue"),
        sensor="rgb",
        offset=tuple(255.0 * m for m in IMAGENET_MEAN),
        divisor=tuple(255.0 * s for s in IMAGENET_STD),
        units="uint8 0-255",
        scaling="(x/255 - ImageNet mean) / ImageNet std",
        licence="Apache-2.0",
        source=f"https://huggingface.co/timm/resnet{depth}.a1_in1k",
        method="supervised",
    )


def _ssl4eo(depth: int, method: str, url: str) -> WeightCard:
    count = len(S2_ALL_BANDS)
    return WeightCard(
        name=f"ssl4eo_s12_s2_resnet{depth}_{method}",
        arch=f"ResNet-{depth}",
        timm_name=f"resnet{depth}",
        bands=S2_ALL_BANDS,
        sensor="sentinel-2",
        offset=(0.0,) * count,
        divisor=(10000.0,) * count,
        units="Sentinel-2 L1C digital numbers (reflectance x 10000)",
        scaling="x / 10000",
        licence="CC-BY-4.0",
        source=url,
        method=method,
    )


_HF = "https://hf.co/torchgeo"
_CARDS = {
    card.name: card
    for card in (
        _imagenet(18),
        _imagenet(34),
        _imagenet(50),
        _ssl4eo(18, "moco", f"{_HF}/resnet18_sentinel2_all_moco (TorchGeo SENTINEL2_ALL_MOCO)"),
        _ssl4eo(50, "moco", f"{_HF}/resnet50_sentinel2_all_moco (TorchGeo SENTINEL2_ALL_MOCO)"),
        _ssl4eo(50, "dino", f"{_HF}/resnet50_sentinel2_all_dino (TorchGeo SENTINEL2_ALL_DINO)"),
    )
}


def list_cards() -> list[str]:
    """Return the registered weight card names, sorted."""
    return sorted(_CARDS)


def get_card(name: str) -> WeightCard:
    """Return the card registered as ``name``.

    Raises:
        UnknownCardError: naming the card and listing the known ones (a ``ValueError``).
    """
    card = _CARDS.get(name) if isinstance(name, str) else None
    if card is None:
        raise UnknownCardError(
            f"unknown weight card {str(name)[:60]!r}; known cards: {', '.join(list_cards())}"
        )
    return card


@lru_cache(maxsize=16)
def card_layout(name: str) -> dict[str, tuple[int, ...]]:
    """The state-dict layout of a card's file: ``{key: shape}`` in timm's order.

    Built from ``timm.create_model(timm_name, in_chans=len(bands))`` on the ``meta`` device
    (no memory), so the first convolution has one input channel per card band. It includes
    the head (ImageNet's 1000 classes) and the ``num_batches_tracked`` counters, which a
    file may lack (see :func:`archs.card_weights.check_card_file`).
    """
    import timm
    import torch

    card = get_card(name)
    with torch.device("meta"):
        model = timm.create_model(card.timm_name, in_chans=len(card.bands), pretrained=False)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}
