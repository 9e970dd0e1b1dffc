"""Matching a dataset's band names to a weight card's bands.

Names are compared case-insensitively after mapping each to a canonical key:

* STAC ``eo:common_name`` values stand for themselves: ``coastal``, ``blue``, ``green``,
  ``red``, ``rededge1``..``rededge3``, ``nir``, ``nir08``, ``nir09``, ``cirrus``,
  ``swir16``, ``swir22`` (and ``rgb`` cards' ``red``/``green``/``blue``).
* For a Sentinel-2 card, Sentinel-2 band ids with or without the zero (``B4`` ≡ ``B04``)
  map to their common names (``B04`` → ``red``, ``B08`` → ``nir``, ``B8A`` → ``nir08``).
  Other cards do not read band ids: ``B4`` is red on Sentinel-2 but not on Landsat 5.
* Any other name must equal a card band's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .cards import WeightCard

#: Sentinel-2 band id (two digits, or 8A) → STAC common name.
S2_COMMON_NAMES = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
    "B10": "cirrus", "B11": "swir16", "B12": "swir22",
}  # fmt: skip
_S2_ID = re.compile(r"b(0?[1-9]|1[0-2]|0?8a)")


def _s2_id(name: str) -> str | None:
    """``B04`` for ``b4``/``B04``/``b04``; None when ``name`` is not a Sentinel-2 band id."""
    text = name.strip().lower()
    if not _S2_ID.fullmatch(text):
        return None
    number = text[1:].lstrip("0").upper()
    return "B8A" if number == "8A" else f"B{int(number):02d}"


def band_key(name: str, sensor: str) -> str:
    """The canonical key of a band name for a card of ``sensor`` (see module docs)."""
    text = name.strip().lower()
    if sensor == "sentinel-2":
        band_id = _s2_id(text)
        if band_id is not None:
            return S2_COMMON_NAMES[band_id]
    return text


@dataclass(frozen=True)
class BandMatch:
    """How a dataset's bands map to a card's.

    Attributes:
        card: The card's name.
        names: The dataset's band names, in channel order.
        source: Per dataset band, the index of the card band it takes its filters and
            scaling from, or ``None`` (a band the weights lack).
        card_bands: The card's band names.
    """

    card: str
    names: tuple[str, ...]
    source: tuple[int | None, ...]
    card_bands: tuple[str, ...]

    @property
    def matched(self) -> list[str]:
        """``dataset name=card name`` of the matched bands (``=card`` left out when equal)."""
        out = []
        for name, index in zip(self.names, self.source):
            if index is not None:
                card_name = self.card_bands[index]
                out.append(name if name == card_name else f"{name}={card_name}")
        return out

    @property
    def new(self) -> list[str]:
        """The dataset bands the weights lack."""
        return [n for n, i in zip(self.names, self.source) if i is None]

    @property
    def dropped(self) -> list[str]:
        """The card bands the dataset lacks."""
        used = {i for i in self.source if i is not None}
        return [b for i, b in enumerate(self.card_bands) if i not in used]

    def report(self) -> str:
        """One line: which bands copy pretrained filters, which start new, which are dropped."""

        def listed(items: list[str]) -> str:
            return ", ".join(items) if items else "none"

        return (
            f"weight card {self.card}: {len(self.matched)} of {len(self.names)} bands matched "
            f"({listed(self.matched)}); new, from the mean filter: {listed(self.new)}; "
            f"card bands dropped: {listed(self.dropped)}"
        )


def match_bands(card: WeightCard, names: list[str] | tuple[str, ...]) -> BandMatch:
    """Match dataset band names to a card's bands by name (see module docs).

    Raises:
        ValueError: two dataset bands match the same card band, or none matches any.
    """
    keys = {band_key(b, card.sensor): i for i, b in enumerate(card.bands)}
    source: list[int | None] = []
    taken: dict[int, str] = {}
    for name in names:
        index = keys.get(band_key(name, card.sensor))
        if index is not None and index in taken:
            raise ValueError(
                f"bands {taken[index]!r} and {name!r} both match band {card.bands[index]} of "
                f"weight card {card.name}"
            )
        if index is not None:
            taken[index] = name
        source.append(index)
    if not taken:
        raise ValueError(
            f"none of the bands {', '.join(names)} matches a band of weight card {card.name} "
            f"({', '.join(card.bands)}); rename them (manifest band names, common names such "
            "as red/nir, or Sentinel-2 ids) or use another card"
        )
    return BandMatch(card.name, tuple(names), tuple(source), card.bands)
