"""The model registry: ``register_model``, ``create_model``, ``list_models``.

Each architecture module defines small entrypoint functions
``name(num_classes, in_channels=3, *, option=default, ...) -> nn.Module`` decorated with
:func:`register_model`; the function name is the registered model name. Options are the
keyword-only parameters of the entrypoint.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

EntryPoint = TypeVar("EntryPoint", bound=Callable[..., nn.Module])

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: EntryPoint) -> EntryPoint:
    """Register a model entrypoint under its function name.

    Args:
        fn: ``fn(num_classes, in_channels=3, *, **options) -> nn.Module``.

    Returns:
        ``fn`` unchanged.

    Raises:
        ValueError: The name is already registered.
    """
    name = fn.__name__
    if name in _ENTRYPOINTS:
        raise ValueError(f"model {name!r} is already registered")
    _ENTRYPOINTS[name] = fn
    return fn


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_ENTRYPOINTS)


def is_model(name: str) -> bool:
    """Tell whether ``name`` is a registered model."""
    return name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """Return the entrypoint function registered as ``name``.

    Raises:
        ValueError: Unknown name; the message lists the valid names.
    """
    try:
        return _ENTRYPOINTS[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def model_options(name: str) -> dict[str, Any]:
    """Return the options (keyword-only parameters) of a model and their defaults.

    Args:
        name: A registered model name.

    Returns:
        ``{option: default}`` in declaration order.
    """
    sig = inspect.signature(model_entrypoint(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def create_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Registered name (see :func:`list_models`).
        num_classes: Number of output classes ``N``.
        in_channels: Number of input image channels.
        **options: Architecture options (keyword-only parameters of the entrypoint, see
            ``docs/archs.md``), e.g. ``base_width=8`` or ``weights="vgg16.safetensors"``.

    Returns:
        The model (in training mode), returning logits.

    Raises:
        ValueError: Unknown name or invalid sizes.
        TypeError: An option the model does not accept; the message lists the valid ones.
    """
    fn = model_entrypoint(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(
            f"model {name!r} does not accept option(s) {unknown}; valid options: {list(valid)}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    return fn(num_classes, in_channels, **options)
