"""The optional ONNX packages, imported when used (``pip install terraseg[onnx]``)."""

from __future__ import annotations

import importlib
from types import ModuleType

from engine.errors import UserError

#: Packages of the ``onnx`` extra.
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


class MissingExtraError(UserError):
    """An optional package of the ``onnx`` extra is not installed."""


def optional_module(name: str) -> ModuleType:
    """Import ``name`` (one of :data:`ONNX_PACKAGES`), or a one-line error naming the extra.

    Raises:
        MissingExtraError: when the package is not installed.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise MissingExtraError(
            f"ONNX export and prediction need the '{name}' package: pip install terraseg[onnx]"
        ) from error
