"""The model registry: ``register_model``, ``create_model``, ``list_models``.

Each architecture module defines small entrypoint functions
``name(num_classes, in_channels=3, *, option=default, ...) -> nn.Module`` decorated with
``@register_model(TABLE)``; the function name is the registered model name, the options are
the keyword-only parameters, and ``TABLE`` declares each one's type and range
(:class:`archs.Option`). :func:`create_model` checks every value, and the size of the network
on the ``meta`` device, before a byte of it is allocated.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from .options import (
    ModelSpecError,
    ModelSpecTypeError,
    Option,
    check_declaration,
    check_size,
    short_repr,
)

EntryPoint = TypeVar("EntryPoint", bound=Callable[..., nn.Module])

NUM_CLASSES_RANGE = (1, 255)  # class values are uint8 with 255 the ignore index
IN_CHANNELS_RANGE = (1, 1024)
#: Parameters + buffers of any model (4 GB of float32): d7, the largest default, has 183 M.
MAX_VALUES = 1_000_000_000
#: Options that only choose the initial weights; they do not change the network's shape.
WEIGHT_OPTIONS = ("pretrained", "weights")

_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, dict[str, Option]] = {}


def register_model(options: dict[str, Option]) -> Callable[[EntryPoint], EntryPoint]:
    """Register a model entrypoint under its function name, with its option declarations.

    Args:
        options: ``{option: Option(...)}`` for exactly the entrypoint's keyword-only
            parameters; each default must satisfy its declaration.

    Returns:
        The decorator; it returns the entrypoint unchanged.

    Raises:
        ValueError: The name is already registered, or the table does not declare exactly
            the entrypoint's options.
    """

    def decorate(fn: EntryPoint) -> EntryPoint:
        name = fn.__name__
        if name in _ENTRYPOINTS:
            raise ValueError(f"model {name!r} is already registered")
        check_declaration(name, options, _defaults(fn))
        _ENTRYPOINTS[name] = fn
        _OPTIONS[name] = dict(options)
        return fn

    return decorate


def _defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    sig = inspect.signature(fn)
    return {p.name: p.default for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY}


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_ENTRYPOINTS)


def is_model(name: object) -> bool:
    """Tell whether ``name`` is a registered model."""
    return isinstance(name, str) and name in _ENTRYPOINTS


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """Return the entrypoint function registered as ``name``.

    Raises:
        ModelSpecError: Unknown name (a ``ValueError``); the message lists the valid names.
    """
    if not is_model(name):
        raise ModelSpecError(
            f"unknown architecture {str(name)[:60]!r}; valid names: {', '.join(list_models())}"
        )
    return _ENTRYPOINTS[name]


def model_options(name: str) -> dict[str, Any]:
    """Return the options (keyword-only parameters) of a model and their defaults.

    Args:
        name: A registered model name.

    Returns:
        ``{option: default}`` in declaration order.
    """
    return _defaults(model_entrypoint(name))


def option_table(name: str) -> dict[str, Option]:
    """Return ``{option: Option}``: the declared type and range of each option of a model."""
    model_entrypoint(name)
    return dict(_OPTIONS[name])


def check_options(name: str, options: dict[str, Any]) -> None:
    """Check option names, types and ranges against the model's declarations.

    Raises:
        ModelSpecTypeError: an option the model does not have (the message lists the valid
            ones), or a value of the wrong type.
        ModelSpecError: a value outside its range; e.g. ``option base_width=4096 of unet is
            outside 1..512``.
    """
    table = option_table(name)
    unknown = sorted(str(k)[:60] for k in set(options) - set(table))
    if unknown:
        raise ModelSpecTypeError(
            f"model {name!r} does not accept option(s) {unknown}; valid options: {list(table)}"
        )
    for key, value in options.items():
        table[key].check(name, key, value)


def check_model_args(name: str, num_classes: Any, in_channels: Any, options: dict) -> None:
    """Check everything :func:`create_model` takes, building nothing.

    Raises:
        ModelSpecError: (or its ``TypeError`` subclass) naming the value and the model.
    """
    model_entrypoint(name)
    check_size(name, "num_classes", num_classes, *NUM_CLASSES_RANGE)
    check_size(name, "in_channels", in_channels, *IN_CHANNELS_RANGE)
    check_options(name, options)


def _check_weights_available(name: str, options: dict) -> None:
    """Fail fast (before timm is imported) when requested initial weights cannot be had."""
    if not (options.get("pretrained") or options.get("weights") is not None):
        return
    from .weights import timm_weight_kwargs

    defaults = model_options(name)
    for key, declared in option_table(name).items():
        if declared.timm_model:
            timm_weight_kwargs(
                options.get(key, defaults[key]),
                pretrained=bool(options.get("pretrained")),
                weights=options.get("weights"),
            )


def _meta_model(name: str, num_classes: int, in_channels: int, options: dict) -> nn.Module:
    """The network on the ``meta`` device (no memory), its size checked."""
    shape_options = {k: v for k, v in options.items() if k not in WEIGHT_OPTIONS}
    try:
        with torch.device("meta"):
            model = _ENTRYPOINTS[name](num_classes, in_channels, **shape_options)
    except ModelSpecError:
        raise
    except (ValueError, TypeError, RuntimeError) as error:  # a constructor's own checks, timm
        problem = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ModelSpecError(f"{name} {short_repr(shape_options)}: {problem}") from error
    values = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if values > MAX_VALUES:
        raise ModelSpecError(
            f"{name} {short_repr(shape_options)} would hold {values / 1e6:,.0f} M parameters, "
            f"over the limit of {MAX_VALUES / 1e6:,.0f} M"
        )
    return model


def create_model(name: str, num_classes: int, in_channels: int = 3, **options: Any) -> nn.Module:
    """Build a registered model.

    Every value is checked against the model's declarations first; requested initial weights
    must be obtainable (fails fast offline); then the network is built on the ``meta`` device
    (no memory) and its size checked (:data:`MAX_VALUES`), and only then built for real.
    Under ``with torch.device("meta")`` that meta network is returned, without the
    ``pretrained``/``weights`` options (there are no values to load into it).

    Args:
        name: Registered name (see :func:`list_models`).
        num_classes: Number of output classes ``N`` (1..255).
        in_channels: Number of input image channels (1..1024).
        **options: Architecture options (keyword-only parameters of the entrypoint, see
            ``docs/archs.md``), e.g. ``base_width=8`` or ``weights="vgg16.safetensors"``.

    Returns:
        The model (in training mode), returning logits.

    Raises:
        ModelSpecError: Unknown name, a size or option out of range, a model too large
            (``ValueError``).
        ModelSpecTypeError: An option the model does not accept (the message lists the
            valid ones) or a value of the wrong type (``TypeError`` and ``ValueError``).
    """
    check_model_args(name, num_classes, in_channels, options)
    if torch.get_default_device().type == "meta":
        return _meta_model(name, num_classes, in_channels, options)
    _check_weights_available(name, options)
    _meta_model(name, num_classes, in_channels, options)
    return _ENTRYPOINTS[name](num_classes, in_channels, **options)
