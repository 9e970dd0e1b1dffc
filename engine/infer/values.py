"""The dataset's own label values for predicted masks (``predict.py --values original``).

A trained model predicts class indices ``0..N-1``. ``--values original`` writes instead the
value each class had in the source masks, from the exported ``dataset.json``: each entry of
``classes`` carries its ``value`` (from the classes file): an integer for index-coded masks
(e.g. 10, 20, …, 100 or 0…200; a list of values writes the first), a ``"#RRGGBB"`` colour
for colour-coded masks (the mask is then an RGB image of those colours).

Text values (vector labels read with an ``encoding: text`` classes file, e.g. ``forest``)
cannot be written: a raster holds numbers, and a made-up code per text would be one more
encoding to keep beside the file. :func:`original_values` refuses them in one line that
says so and lists each class index with its text; ``--values index`` writes those indices
(the order of ``dataset.json``'s classes) and ``--polygons`` each polygon's class name.

:func:`class_indices` maps a mask written in original values back to class indices
(``terraseg show --values original``).

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


def _is_color(raw: Any) -> bool:
    try:
        parse_color(raw)
    except ValueError:
        return False
    return True


def _refuse_texts(values: list[tuple[Any, Any]], manifest: dict, where: str) -> None:
    """Refuse text class values (``encoding: text``) in one line: a raster cannot hold them."""
    texts = manifest.get("encoding") == "text" or any(
        isinstance(raw, str) and not _is_color(raw) for _, raw in values
    )
    if not texts:
        return
    listed = [f"{index} = {raw!r}" for index, (_, raw) in enumerate(values)]
    shown = ", ".join(listed[:8]) + (f", … ({len(listed)} in all)" if len(listed) > 8 else "")
    raise ValuesError(
        f"{where}: class values are texts ({shown}), which a raster mask cannot hold, so "
        "--values original cannot be written; use --values index (the mask holds these class "
        "indices) and --polygons for vectors that name each polygon's class"
    )


def original_values(manifest: dict, where: str = "dataset.json") -> np.ndarray:
    """Lookup table from class index to the dataset's own mask value.

    Args:
        manifest: ``dataset.json`` contents; every class needs a ``value``.
        where: The file, for messages.

    Returns:
        ``[256]`` uint8 (values up to 255) or uint16 (up to 65535) for index-coded classes,
        ``[256, 3]`` uint8 for colour-coded ones; entry 255 is the ignore value.

    Raises:
        ValuesError: when a class has no value, the values are texts (see the module
            notes), mix colours and integers, or an integer is outside 0..65535.
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
    _refuse_texts(values, manifest, where)
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


def _codes(mask: np.ndarray, rgb: bool) -> np.ndarray:
    """One integer per pixel: the value, or ``r << 16 | g << 8 | b`` for colours."""
    if not rgb:
        return mask.astype(np.int64)
    mask = mask.astype(np.int64)
    return (mask[..., 0] << 16) | (mask[..., 1] << 8) | mask[..., 2]


def class_indices(mask: np.ndarray, table: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Class indices of a mask written with ``--values original`` (the inverse of ``table``).

    Args:
        mask: ``HxW`` values (``HxWx1`` accepted), or ``HxWx3`` colours for a colour table.
        table: :func:`original_values` of the dataset the mask was written for.
        num_classes: Classes in the table (entries ``0..N-1``).
        where: The mask file, for messages.

    Returns:
        uint8 ``HxW``: class indices, :data:`IGNORE_INDEX` where the mask holds the ignore
        value (a class value that is also the ignore value counts as the class).

    Raises:
        ValuesError: naming ``where`` when the mask's shape does not fit the table or it
            holds values that are no class's.
    """
    table = np.asarray(table)
    rgb = table.ndim == 2
    if mask.ndim == 3 and mask.shape[2] == 1 and not rgb:
        mask = mask[..., 0]
    if mask.ndim != (3 if rgb else 2) or (rgb and mask.shape[2] != 3):
        kind = "RGB colours" if rgb else "one band of values"
        raise ValuesError(
            f"{where}: shape {mask.shape}, but the dataset's original values are {kind}"
        )
    lookup = {code: IGNORE_INDEX for code in _codes(table[IGNORE_INDEX][None], rgb).tolist()}
    lookup |= {int(code): index for index, code in enumerate(_codes(table[:num_classes], rgb))}
    found, inverse = np.unique(_codes(mask, rgb), return_inverse=True)
    indices = np.array([lookup.get(int(code), -1) for code in found], np.int16)
    if (indices < 0).any():
        unknown = found[indices < 0][:10]
        shown = [f"#{c:06X}" for c in unknown.tolist()] if rgb else unknown.tolist()
        raise ValuesError(
            f"{where}: values {shown} are no class's original value; is it a mask of "
            "class indices (show it without --values original) or of another dataset?"
        )
    return indices.astype(np.uint8)[inverse.reshape(mask.shape[:2])]
