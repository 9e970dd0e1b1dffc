"""The dataset's own label values for predicted masks (``predict.py --values original``).

A trained model predicts class indices ``0..N-1``. ``--values original`` writes instead the
value each class had in the source masks, from the exported ``dataset.json``: each entry of
``classes`` carries its ``value`` (from the classes file): an integer for index-coded masks
(e.g. 10, 20, …, 100 or 0…200; a list of values writes the first), a ``"#RRGGBB"`` colour
for colour-coded masks (the mask is then an RGB image of those colours).

Ignored pixels (class index 255) have no class: they are written as the dataset's own ignore
value where ``dataset.json`` names one (``ignore_value``, an integer or ``"#RRGGBB"``), else
as :data:`IGNORE_VALUE_INDEX` (255) for index masks and :data:`IGNORE_VALUE_RGB` (black) for
colour masks. A prediction assigns a class to every pixel, so this value only appears where
a caller writes 255 itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.data.sources.classes import parse_color
from engine.errors import UserError

IGNORE_INDEX = 255
IGNORE_VALUE_INDEX = 255
IGNORE_VALUE_RGB = (0, 0, 0)
VALUE_MODES = ("index", "original")


class ValuesError(UserError):
    """``dataset.json`` cannot say which value each class had; names the file and why."""


def _first(value: Any) -> Any:
    """A class listed with several values writes its first."""
    if isinstance(value, list | tuple):
        return value[0] if value else None
    return value


def _rgb(text: str, where: str) -> tuple[int, int, int]:
    try:
        return parse_color(text)
    except ValueError as error:
        raise ValuesError(f"{where}: {error}") from error


def original_values(manifest: dict, where: str = "dataset.json") -> np.ndarray:
    """Lookup table from class index to the dataset's own mask value.

    Args:
        manifest: ``dataset.json`` contents; every class needs a ``value``.
        where: The file, for messages.

    Returns:
        ``[256]`` uint8 (values up to 255) or uint16 (up to 65535) for index-coded classes,
        ``[256, 3]`` uint8 for colour-coded ones; entry 255 is the ignore value.

    Raises:
        ValuesError: when a class has no value, the values mix colours and integers, or an
            integer is outside 0..65535.
    """
    classes = manifest.get("classes") or []
    if not classes:
        raise ValuesError(f"{where}: no 'classes' entry")
    values = []
    for number, entry in enumerate(classes):
        name = entry.get("name", number) if isinstance(entry, dict) else entry
        raw = _first(entry.get("value")) if isinstance(entry, dict) else None
        if raw is None:
            raise ValuesError(
                f"{where}: class {name!r} has no 'value' (shards built before values were "
                "recorded; rebuild them) so --values original cannot be written"
            )
        values.append((name, raw))
    is_rgb = [isinstance(raw, str) for _, raw in values]
    if any(is_rgb) and not all(is_rgb):
        raise ValuesError(f"{where}: class values mix colours and integers")
    ignore = manifest.get("ignore_value")
    if all(is_rgb):
        rgb_table = np.zeros((256, 3), np.uint8)
        for index, (_, raw) in enumerate(values):
            rgb_table[index] = _rgb(raw, where)
        rgb_table[IGNORE_INDEX] = (
            _rgb(ignore, where) if isinstance(ignore, str) else IGNORE_VALUE_RGB
        )
        return rgb_table
    ints = []
    for name, raw in values:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or int(raw) != raw:
            raise ValuesError(f"{where}: class {name!r} has value {raw!r}, not an integer")
        if not 0 <= int(raw) <= 65535:
            raise ValuesError(f"{where}: class {name!r} value {raw} is outside 0..65535")
        ints.append(int(raw))
    ignore_value = int(ignore) if isinstance(ignore, int) else IGNORE_VALUE_INDEX
    dtype = np.uint8 if max(ints + [ignore_value]) <= 255 else np.uint16
    table = np.zeros(256, dtype)
    table[: len(ints)] = ints
    table[IGNORE_INDEX] = ignore_value
    return table
