"""Declared model options: each option's type and range, checked before a model is built.

Every entrypoint registers a table ``{option: Option(...)}`` with :func:`archs.register_model`;
:func:`archs.create_model` checks each value against it before anything is allocated, so a
``model.json`` or config asking for ``base_width: 4096`` is a one-line error, not a process
the kernel kills. ``bool`` is never an ``int``; ``float`` options accept ints.

    Option(int, 1, 512)                   # an int in 1..512
    Option(float, 0.0, 1.0)               # a finite number in [0, 1]
    Option(bool)                          # True or False
    Option(int, choices=(1, 3))           # one of the listed values
    Option(str, 1, 64)                    # a name (letters, digits, ``_.-:/@``) of 1..64 chars
    Option(Path, optional=True)           # a file path (str or os.PathLike), or None
    Option(int, 1, 2048, lengths=((5, 5),))            # a list of exactly 5 ints in 1..2048
    Option(int, 1, 128, lengths=((6, 6), (1, 8)))      # 6 lists of 1..8 ints in 1..128

The errors are ``ValueError``/``TypeError`` subclasses (``archs`` imports nothing from the
engine); the engine names the file or setting in front of their message.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAME = re.compile(r"[A-Za-z0-9_.:/@-]+")
MAX_PATH_CHARS = 4096


class ModelSpecError(ValueError):
    """An architecture name, size or option value the registry refuses (one line)."""


class ModelSpecTypeError(ModelSpecError, TypeError):
    """A value of the wrong type, or an option the architecture does not have."""


@dataclass(frozen=True)
class Option:
    """The type and range of one model option.

    Attributes:
        type: ``int``, ``float``, ``bool``, ``str`` (a name) or ``Path`` (a file path).
        low: Smallest value (``int``/``float``), or shortest length (``str``).
        high: Largest value (``int``/``float``), or longest length (``str``).
        choices: The only values allowed, when given.
        optional: ``None`` is allowed.
        lengths: For list options: ``(min, max)`` item counts per nesting level, outermost
            first; the innermost items are checked as ``type``.
        timm_model: This option names the timm model whose weights the ``pretrained`` and
            ``weights`` options load (checked before the network is built, to fail fast).
    """

    type: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    lengths: tuple[tuple[int, int], ...] = ()
    timm_model: bool = False

    def __post_init__(self) -> None:
        ranged = self.type in (int, float, str) and self.choices is None
        if ranged and (self.low is None or self.high is None):
            raise ValueError(f"Option({self.type.__name__}) needs low and high (or choices)")

    def _bounds(self) -> tuple[float, float]:
        assert self.low is not None and self.high is not None  # checked in __post_init__
        return self.low, self.high

    def describe(self) -> str:
        """The declaration as a short text (for docs and ``launch/summary.py --options``)."""
        if self.choices is not None:
            text = " or ".join(repr(c) for c in self.choices)
        elif self.type is str:
            text = f"name of {self._range()} chars"
        elif self.type is Path:
            text = "file path"
        elif self.type is bool:
            text = "bool"
        else:
            text = f"{self.type.__name__} {self._range()}"
        for low, high in reversed(self.lengths):
            count = str(low) if low == high else f"{low}..{high}"
            text = f"list of {count} × ({text})"
        return f"{text} or None" if self.optional else text

    def _range(self) -> str:
        return f"{self.low}..{self.high}"

    def check(self, model: str, name: str, value: Any) -> None:
        """Check one value.

        Raises:
            ModelSpecTypeError: the value has the wrong type.
            ModelSpecError: the value is outside the range or not among the choices.
        """
        where = f"option {name}={short_repr(value)} of {model}"
        if value is None and self.optional:
            return
        self._check_nested(where, value, self.lengths)

    def _check_nested(self, where: str, value: Any, lengths: tuple[tuple[int, int], ...]) -> None:
        if not lengths:
            self._check_item(where, value)
            return
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ModelSpecTypeError(f"{where} must be a list, got {type(value).__name__}")
        low, high = lengths[0]
        if not low <= len(value) <= high:
            count = str(low) if low == high else f"{low}..{high}"
            raise ModelSpecError(f"{where} must have {count} items, got {len(value)}")
        for item in value:
            self._check_nested(where, item, lengths[1:])

    def _check_item(self, where: str, value: Any) -> None:
        if self.type is Path:
            _check_path(where, value)
            return
        if not _is_type(value, self.type):
            raise ModelSpecTypeError(
                f"{where} must be {_article(self.type)}, got {type(value).__name__}"
            )
        if self.choices is not None:
            if value not in self.choices:
                allowed = ", ".join(repr(c) for c in self.choices)
                raise ModelSpecError(f"{where} is not one of {allowed}")
            return
        if self.type is str:
            low, high = self._bounds()
            if not low <= len(value) <= high or not _NAME.fullmatch(value):
                raise ModelSpecError(
                    f"{where} must be a name of {self._range()} letters, digits or _.-:/@"
                )
            return
        if self.type in (int, float):
            low, high = self._bounds()
            if not math.isfinite(value) or not low <= value <= high:
                raise ModelSpecError(f"{where} is outside {self._range()}")


def _is_type(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check_path(where: str, value: Any) -> None:
    if not isinstance(value, (str, os.PathLike)):
        raise ModelSpecTypeError(f"{where} must be a file path, got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATH_CHARS or "\0" in text:
        raise ModelSpecError(f"{where} must be a file path of 1..{MAX_PATH_CHARS} characters")


def _article(kind: type) -> str:
    name = kind.__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` cut to one short line (the value may be a megabyte of JSON)."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_declaration(model: str, table: dict[str, Option], defaults: dict[str, Any]) -> None:
    """An entrypoint's table must declare exactly its options, and each default must pass.

    Raises:
        ValueError: naming the model and the option (a bug in the architecture module).
    """
    if set(table) != set(defaults):
        missing = sorted(set(defaults) - set(table))
        extra = sorted(set(table) - set(defaults))
        raise ValueError(f"model {model!r}: options undeclared {missing}, unknown {extra}")
    for name, option in table.items():
        if not isinstance(option, Option):
            raise ValueError(f"model {model!r}: option {name!r} is not declared with Option")
        option.check(model, name, defaults[name])


def check_size(model: str, what: str, value: Any, low: int, high: int) -> None:
    """``num_classes``/``in_channels``: an int (not a bool) in ``low..high``.

    Raises:
        ModelSpecTypeError, ModelSpecError: naming ``what`` and ``model``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelSpecTypeError(
            f"{what}={short_repr(value)} of {model} must be an int, got {type(value).__name__}"
        )
    if not low <= value <= high:
        raise ModelSpecError(f"{what}={value} of {model} is outside {low}..{high}")
