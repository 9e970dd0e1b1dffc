"""Choosing bands by number or name, one rule for every option and function that does.

``--bands`` and ``--rgb-bands`` of the builder, show's ``--band``/``--rgb`` and
``display_rgb`` all resolve through :func:`band_positions`.

A band is given by its 1-based number (as GDAL and rasterio count; a digit string from a
command line is a number unless a band carries that name) or by its name, matched exactly,
else case-insensitively when only one band matches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.errors import UserError

BandSpec = int | str


def parse_band_list(text: str | None) -> tuple[BandSpec, ...] | None:
    """``"4,3,2"`` or ``"B4,B3,B2"`` (a CLI value) → ``(4, 3, 2)`` / ``("B4", "B3", "B2")``."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",")]
    return tuple(int(item) if item.isdigit() else item for item in items)


def band_positions(
    wanted: Sequence[BandSpec] | BandSpec,
    names: Sequence[str],
    where: str,
    *,
    numbers: Sequence[int] | None = None,
    distinct: bool = True,
    error: type[UserError] = UserError,
) -> list[int]:
    """0-based positions among ``names`` of the bands ``wanted``, in the order asked.

    Args:
        wanted: Band numbers and/or names (one, or a sequence).
        names: The bands' names, in order.
        where: What the selection is for (the file, or the option), for messages.
        numbers: The bands' 1-based numbers (default ``1..len(names)``: every band of a
            file, a band tagged alpha included, is numbered and named as the file has it).
        distinct: Refuse a band chosen twice (a read selection); a picture may repeat one.
        error: The error type to raise (the caller's stage error).

    Raises:
        UserError: (of type ``error``) naming ``where``, the band asked for and the bands
            there are.
    """
    if isinstance(wanted, (str, int, np.integer)):
        wanted = [wanted]
    names = [str(name) for name in names]
    numbers = list(numbers) if numbers is not None else list(range(1, len(names) + 1))
    available = ", ".join(f"{n}:{b}" for n, b in zip(numbers, names))
    chosen: list[int] = []
    for band in wanted:
        if isinstance(band, str) and band.strip().isdigit() and band.strip() not in names:
            band = int(band)
        if isinstance(band, (int, np.integer)) and not isinstance(band, bool):
            if int(band) not in numbers:
                raise error(f"{where}: no band {band} (bands are 1-based; available: {available})")
            position = numbers.index(int(band))
        else:
            text = str(band)
            matches = [i for i, name in enumerate(names) if name == text]
            if not matches:
                matches = [i for i, name in enumerate(names) if name.lower() == text.lower()]
            if len(matches) != 1:
                problem = "no band named" if not matches else "several bands named"
                raise error(f"{where}: {problem} {text!r} (available: {available})")
            position = matches[0]
        if distinct and position in chosen:
            raise error(f"{where}: band {band!r} selected twice")
        chosen.append(position)
    if not chosen:
        raise error(f"{where}: empty band selection")
    return chosen
