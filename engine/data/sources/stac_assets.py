"""Which assets of a STAC item are read: ``--assets`` by asset key or band name, and labels.

A selection entry (``--assets red,green,B08`` or a model's band names) names, in this order
of preference:

1. an **asset key** (exactly, else case-insensitively when one key matches): every band of
   that asset (one band for single-band assets, the usual STAC layout of one COG per band);
2. a **band name** or **common name** of the item's bands (``eo:bands`` of STAC 1.0 on the
   asset or the item, ``bands`` with ``name``/``eo:common_name`` of STAC 1.1), exactly,
   else case-insensitively: that one band of its asset. When several assets hold a band of
   that name, single-band assets win over composites (Sentinel-2's ``visual`` also holds
   ``red``); still several is an error.

The band's name in what is read (and in the shards' manifest) is the entry as given.

Labels come from ``--label-asset KEY`` (a raster asset) or, without it, from the STAC label
extension: an item with ``label:type`` ``raster`` or ``vector`` reads the asset whose roles
include ``labels`` (else the asset keyed ``labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.data.sources.stac import StacError


@dataclass(frozen=True)
class AssetBand:
    """One band to read: its asset, its 1-based number there (``None``: every band), name.

    Attributes:
        key: The asset key.
        href: The asset's absolute location (a local path or URL).
        band: The 1-based band number in the asset, or ``None`` for all its bands.
        name: The name the band is read under.
    """

    key: str
    href: str
    band: int | None
    name: str


def asset_bands(item: Any, asset: Any) -> list[dict]:
    """The band descriptions of an asset (``name``, ``common_name``), possibly empty."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands")
    if bands is None:
        bands = fields.get("bands")
    if bands is None:
        bands = []
    if not isinstance(bands, list):
        return []
    described = []
    for band in bands:
        if isinstance(band, int):  # STAC 0.x: indexes into the item's eo:bands
            every = item.properties.get("eo:bands")
            band = every[band] if isinstance(every, list) and 0 <= band < len(every) else {}
        if not isinstance(band, dict):
            band = {}
        common = band.get("common_name", band.get("eo:common_name"))
        described.append({"name": band.get("name"), "common_name": common})
    return described


def _by_key(item: Any, wanted: str) -> str | None:
    keys = list(item.assets)
    if wanted in keys:
        return wanted
    folded = [k for k in keys if k.lower() == wanted.lower()]
    return folded[0] if len(folded) == 1 else None


def _band_matches(item: Any, wanted: str) -> list[tuple[str, int, int]]:
    """``(asset key, band number, bands in the asset)`` of the bands named ``wanted``."""
    exact, folded = [], []
    for key, asset in item.assets.items():
        bands = asset_bands(item, asset)
        for number, band in enumerate(bands, 1):
            names = [n for n in (band["name"], band["common_name"]) if isinstance(n, str)]
            if wanted in names:
                exact.append((key, number, len(bands)))
            elif wanted.lower() in [n.lower() for n in names]:
                folded.append((key, number, len(bands)))
    return exact or folded


def _available(item: Any) -> str:
    names = []
    for key, asset in item.assets.items():
        bands = [b["common_name"] or b["name"] for b in asset_bands(item, asset)]
        described = [b for b in bands if b]
        names.append(f"{key} ({'/'.join(described)})" if described else key)
    return ", ".join(names) or "none"


def select_assets(item: Any, wanted: list[str]) -> list[AssetBand]:
    """The bands of ``item`` named by ``wanted`` (asset keys or band names; module notes).

    Raises:
        StacError: naming the item and the entry that names no asset or band, or several.
    """
    if not wanted:
        raise StacError(f"item {item.id!r}: no assets selected")
    chosen: list[AssetBand] = []
    for entry in wanted:
        entry = str(entry).strip()
        key = _by_key(item, entry)
        if key is not None:
            bands = asset_bands(item, item.assets[key])
            band = 1 if len(bands) == 1 else None  # None: as many as the file holds
            chosen.append(AssetBand(key, item.assets[key].href, band, entry))
            continue
        matches = _band_matches(item, entry)
        if len(matches) > 1:
            single = [m for m in matches if m[2] == 1]
            matches = single if single else matches
        if not matches:
            raise StacError(
                f"item {item.id!r}: no asset or band named {entry!r} (assets: {_available(item)})"
            )
        if len(matches) > 1:
            where = ", ".join(f"{k} band {n}" for k, n, _ in matches)
            raise StacError(f"item {item.id!r}: several bands named {entry!r} ({where})")
        key, number, _ = matches[0]
        chosen.append(AssetBand(key, item.assets[key].href, number, entry))
    names = [c.name for c in chosen]
    if len(set(names)) != len(names):
        raise StacError(f"item {item.id!r}: a band selected twice in {names}")
    return chosen


def label_extension_kind(item: Any) -> str | None:
    """The item's ``label:type`` (``raster`` or ``vector``), or ``None`` without one."""
    kind = item.properties.get("label:type")
    return kind if kind in ("raster", "vector") else None


def label_asset(item: Any, key: str | None) -> tuple[AssetBand, str]:
    """The item's label asset and its kind (``raster`` or ``vector``).

    Args:
        item: The STAC item.
        key: ``--label-asset`` (a raster asset), or ``None`` for the label extension.

    Raises:
        StacError: naming the item when the asset is missing, or when neither ``key`` nor
            the label extension names one.
    """
    if key is not None:
        found = _by_key(item, key)
        if found is None:
            raise StacError(
                f"item {item.id!r}: label asset {key!r} missing (assets: {_available(item)})"
            )
        return AssetBand(found, item.assets[found].href, 1, "label"), "raster"
    kind = label_extension_kind(item)
    if kind is None:
        raise StacError(
            f"item {item.id!r}: no label asset (give --label-asset KEY or --vector FILE, or "
            "use the STAC label extension: label:type and a 'labels' asset)"
        )
    keys = [k for k, a in item.assets.items() if "labels" in (a.roles or [])]
    keys = keys or [k for k in item.assets if k == "labels"]
    if len(keys) != 1:
        raise StacError(
            f"item {item.id!r}: label:type {kind} but {len(keys)} assets with role 'labels' "
            f"(need one; assets: {_available(item)})"
        )
    return AssetBand(keys[0], item.assets[keys[0]].href, 1, "label"), kind
