"""The classes file: which mask colours or values are which class, and which are ignored.

A classes file is YAML that a user edits (``launch/inspect_masks.py`` writes a draft)::

    encoding: rgb            # rgb: masks hold colours; index: masks hold integer values
    classes:                 # in class-index order
      - {name: Land, value: "#8429F6", color: "#8429F6"}
      - {name: Water, value: ["#E2A929", "#E2A92A"], color: "#E2A929"}   # several values
      - {name: Unlabeled, value: "#9B9B9B", ignore: true}                # -> 255

Entries with ``ignore: true`` are not classes: their pixels become ``IGNORE_INDEX``.
``index`` masks may hold any value in -32768..65535 (signed and 16-bit masks), e.g. a
Sentinel-2 label whose no data is -1: ``{name: nodata, value: -1, ignore: true}``.

``encoding: text`` is for vector labels whose class attribute holds names (``value: forest``;
see :mod:`engine.data.sources.vector_labels`): each distinct text gets an integer code (its order of
first appearance in the file), which is what the rasterised values hold and the lookup maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from engine.errors import UserError

IGNORE_INDEX = 255
ENCODINGS = ("rgb", "index", "text")
#: Values an ``index`` mask may use: int16 (no data is often -1) through uint16.
INDEX_VALUES = (-32768, 65535)

# Colours for classes that come without one (index masks, and drafts of masks whose own
# colours are too alike): colour-blind-safe Okabe–Ito, then Paul Tol's muted and light sets,
# each at least 20 CIELAB ΔE from the others and 32 from the error map's correct green, wrong
# red and ignored grey (engine.render.colors.ERROR_COLORS; tests/test_mask_inspect.py checks
# both), so a prediction panel never looks like an error map. More classes repeat them.
DEFAULT_PALETTE = (
    "#E69F00", "#56B4E9", "#F0E442", "#0072B2", "#CC79A7", "#332288", "#44AA99", "#999933",
    "#882255", "#DDCC77", "#AA4499", "#CC6677", "#EE8866", "#FFAABB", "#DDDDDD", "#997700",
    "#004488", "#666633",
)  # fmt: skip


class ClassesError(UserError):
    """A classes file is malformed; the message names the file and the problem."""


def parse_color(text: str) -> tuple[int, int, int]:
    """Parse ``"#RRGGBB"`` into an (r, g, b) tuple of ints."""
    value = str(text).strip().lstrip("#")
    if len(value) != 6 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError(f"not a #RRGGBB colour: {text!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def format_color(rgb: tuple[int, int, int] | np.ndarray) -> str:
    """Format an (r, g, b) triple as ``"#RRGGBB"``."""
    r, g, b = (int(c) for c in rgb)
    return f"#{r:02X}{g:02X}{b:02X}"


def rgb_code(rgb: tuple[int, int, int]) -> int:
    """Pack a colour into the 24-bit code used to look colours up (``r << 16 | g << 8 | b``)."""
    return (rgb[0] << 16) | (rgb[1] << 8) | rgb[2]


@dataclass(frozen=True)
class ClassSpec:
    """One class: its name, the mask values that mean it, and its display colour."""

    name: str
    values: tuple[int, ...]
    color: str


@dataclass
class ClassesFile:
    """A parsed classes file.

    Attributes:
        encoding: ``"rgb"`` (values are 24-bit colour codes), ``"index"`` or ``"text"``
            (values are codes of the texts in ``texts``).
        classes: The classes in index order.
        ignore_values: Mask values mapped to ``IGNORE_INDEX``.
        path: Where it was read from (for messages).
        texts: For ``"text"``: the text of each code (code = position).
    """

    encoding: str
    classes: list[ClassSpec]
    ignore_values: tuple[int, ...] = ()
    path: str = "<memory>"
    texts: tuple[str, ...] = ()
    _lookup: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        lookup: dict[int, int] = {}
        for index, spec in enumerate(self.classes):
            for value in spec.values:
                if value in lookup:
                    raise ClassesError(f"{self.path}: value {self.describe(value)} is listed twice")
                lookup[value] = index
        for value in self.ignore_values:
            if value in lookup:
                raise ClassesError(f"{self.path}: value {self.describe(value)} is listed twice")
            lookup[value] = IGNORE_INDEX
        if len(self.classes) >= IGNORE_INDEX:
            raise ClassesError(f"{self.path}: at most {IGNORE_INDEX - 1} classes are supported")
        self._lookup = lookup

    @property
    def names(self) -> list[str]:
        """Class names in index order."""
        return [spec.name for spec in self.classes]

    @property
    def lookup(self) -> dict[int, int]:
        """Mask value (colour code or integer) → class index or ``IGNORE_INDEX``."""
        return dict(self._lookup)

    def text_code(self, text: str) -> int | None:
        """The code of an attribute text in a ``"text"`` classes file (None: not listed)."""
        try:
            return self.texts.index(text)
        except ValueError:
            return None

    def describe(self, value: int) -> str:
        """Render a mask value the way the user wrote it (``#RRGGBB``, an integer or a text)."""
        if self.encoding == "text" and 0 <= value < len(self.texts):
            return repr(self.texts[value])
        if self.encoding == "rgb":
            return format_color(((value >> 16) & 255, (value >> 8) & 255, value & 255))
        return str(value)

    def manifest_classes(self) -> list[dict]:
        """The ``classes`` entry of a shard manifest: name, display colour, mask value(s).

        ``value`` is what the class had in the source masks (an int, a ``"#RRGGBB"`` colour
        for rgb masks, or a list when several values merge into one class), so a prediction
        can be written back in the dataset's own values (``predict.py --values original``).
        """
        return [
            {"name": spec.name, "color": spec.color, "value": self._values_out(spec.values)}
            for spec in self.classes
        ]

    def ignore_value(self) -> int | str | None:
        """The first mask value mapped to ignore (written for ignored pixels), if any."""
        return self._value_out(self.ignore_values[0]) if self.ignore_values else None

    def _value_out(self, code: int) -> int | str:
        if self.encoding == "text":
            return self.texts[code]
        if self.encoding == "rgb":
            return format_color(((code >> 16) & 255, (code >> 8) & 255, code & 255))
        return int(code)

    def _values_out(self, codes: tuple[int, ...]) -> int | str | list:
        values = [self._value_out(code) for code in codes]
        return values[0] if len(values) == 1 else values


def _parse_value(raw: object, encoding: str, where: str, texts: dict[str, int]) -> int:
    if encoding == "text":
        if isinstance(raw, bool) or not isinstance(raw, (str, int)) or not str(raw).strip():
            raise ClassesError(f"{where}: bad value {raw!r} for encoding 'text' (a non-empty text)")
        return texts.setdefault(str(raw), len(texts))
    try:
        if encoding == "rgb":
            return rgb_code(parse_color(str(raw)))
        # A mask value is a whole number: never a bool (True is 1) nor 3.5 cut to 3.
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise TypeError(f"not a whole number: {raw!r}")
        value = int(raw)
    except (TypeError, ValueError) as error:
        raise ClassesError(f"{where}: bad value {raw!r} for encoding {encoding!r}") from error
    if not INDEX_VALUES[0] <= value <= INDEX_VALUES[1]:
        raise ClassesError(
            f"{where}: index value {value} is outside {INDEX_VALUES[0]}..{INDEX_VALUES[1]}"
        )
    return value


def classes_from_dict(data: dict, path: str = "<memory>") -> ClassesFile:
    """Build a :class:`ClassesFile` from its parsed YAML mapping.

    Raises:
        ClassesError: naming ``path`` and the offending entry.
    """
    if not isinstance(data, dict) or "classes" not in data:
        raise ClassesError(f"{path}: expected a mapping with 'encoding' and 'classes'")
    unknown = set(data) - {"encoding", "classes"}
    if unknown:
        raise ClassesError(f"{path}: unknown keys {sorted(unknown)}")
    encoding = data.get("encoding", "rgb")
    if not isinstance(encoding, str) or encoding not in ENCODINGS:
        raise ClassesError(f"{path}: encoding must be one of {ENCODINGS}, not {encoding!r}")
    classes: list[ClassSpec] = []
    ignore: list[int] = []
    texts: dict[str, int] = {}  # encoding text: text -> code, in order of first appearance
    if data["classes"] is not None and not isinstance(data["classes"], list):
        raise ClassesError(
            f"{path}: 'classes' must be a list of entries, not {type(data['classes']).__name__}"
        )
    for number, entry in enumerate(data["classes"] or []):
        where = f"{path}: classes[{number}]"
        if not isinstance(entry, dict) or "value" not in entry:
            raise ClassesError(f"{where}: each class needs at least 'name' and 'value'")
        extra = set(entry) - {"name", "value", "color", "ignore"}
        if extra:
            raise ClassesError(f"{where}: unknown keys {sorted(extra)}")
        raw_values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
        values = tuple(_parse_value(raw, encoding, where, texts) for raw in raw_values)
        if entry.get("ignore", False):
            ignore.extend(values)
            continue
        if "name" not in entry:
            raise ClassesError(f"{where}: a class needs a 'name'")
        if not isinstance(entry["name"], (str, int)) or not str(entry["name"]).strip():
            raise ClassesError(f"{where}: 'name' must be a non-empty string")
        if entry.get("color"):
            try:
                color = format_color(parse_color(entry["color"]))
            except ValueError as error:
                raise ClassesError(f"{where}: bad color {entry['color']!r} (#RRGGBB)") from error
        elif encoding == "rgb":
            color = format_color(parse_color(str(raw_values[0])))
        else:
            color = DEFAULT_PALETTE[len(classes) % len(DEFAULT_PALETTE)]
        classes.append(ClassSpec(str(entry["name"]), values, color))
    if not classes:
        raise ClassesError(f"{path}: no classes (every entry is ignored or the list is empty)")
    return ClassesFile(encoding, classes, tuple(ignore), path, tuple(texts))


def load_classes(path: str | Path) -> ClassesFile:
    """Read and validate a classes file.

    Raises:
        ClassesError: when the file is missing or malformed; the message names it.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise ClassesError(f"{path}: classes file not found") from error
    except IsADirectoryError as error:
        raise ClassesError(f"{path}: is a folder, not a classes file") from error
    except UnicodeDecodeError as error:
        raise ClassesError(f"{path}: not a text file ({error.reason})") from error
    except yaml.YAMLError as error:
        message = " ".join(str(error).split())
        raise ClassesError(f"{path}: not valid YAML: {message}") from error
    return classes_from_dict(data, str(path))
