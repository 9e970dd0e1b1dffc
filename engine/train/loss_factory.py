"""Losses by name: ``loss.spec`` strings, weighted combinations, and class weights.

:func:`build_loss` turns a config's ``loss.spec`` (``"ce"``, ``"dice"``, ``"tanimoto"``,
``"multitask"``, a mapping with options, or a list of weighted terms) into a loss module of
:mod:`engine.train.losses`. Terms are registered like architectures (:func:`register_loss`:
name, aliases, accepted options, whether it takes the multitask heads), and
:func:`is_multitask_spec` is the one rule for "this spec is the multitask loss".
:func:`class_weights_from_pixels` turns a manifest's class pixel counts into per-class
weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.train.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    MultitaskLoss,
    TanimotoLoss,
)


@dataclass(frozen=True)
class LossEntry:
    """One registered loss term.

    Attributes:
        name: The canonical name used in ``loss.spec``.
        build: ``build(num_classes, ignore_index, class_weights, **options) -> nn.Module``.
        options: The options the term accepts.
        aliases: Other names for it in ``loss.spec``.
        multitask: Whether it takes the four multitask heads (it must then stand alone).
    """

    name: str
    build: Callable[..., nn.Module]
    options: frozenset[str]
    aliases: tuple[str, ...] = ()
    multitask: bool = False


_LOSSES: dict[str, LossEntry] = {}


def register_loss(
    name: str, options: Sequence[str] = (), aliases: Sequence[str] = (), multitask: bool = False
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a loss term builder under ``name`` (and its aliases), like the model registry.

    Raises:
        ValueError: The name or an alias is already registered.
    """

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        entry = LossEntry(name, build, frozenset(options), tuple(aliases), multitask)
        for key in (name, *aliases):
            if key in _LOSSES:
                raise ValueError(f"loss {key!r} is already registered")
            _LOSSES[key] = entry
        return build

    return decorate


def list_losses() -> list[str]:
    """The canonical names of the registered loss terms, sorted."""
    return sorted({entry.name for entry in _LOSSES.values()})


def loss_entry(name: str) -> LossEntry:
    """The registered term called ``name`` (any case, surrounding spaces ignored).

    Raises:
        ValueError: Unknown name; the message lists the known ones.
    """
    key = name.strip().lower()
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(_LOSSES)}")
    return _LOSSES[key]


@register_loss(
    "ce", options=("label_smoothing", "class_weighted"), aliases=("cross_entropy", "crossentropy")
)
def _cross_entropy(
    num_classes: int,
    ignore_index: int,
    class_weights: torch.Tensor | Sequence[float] | None,
    class_weighted: bool = True,
    label_smoothing: float = 0.0,
) -> nn.Module:
    return CrossEntropyLoss(
        weight=class_weights if class_weighted else None,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
    )


@register_loss("dice", options=("smooth",))
def _dice(num_classes: int, ignore_index: int, class_weights: Any, **options: Any) -> nn.Module:
    return DiceLoss(num_classes, ignore_index, **options)


@register_loss("tanimoto", options=("eps",))
def _tanimoto(num_classes: int, ignore_index: int, class_weights: Any, **options: Any) -> nn.Module:
    return TanimotoLoss(num_classes, ignore_index, **options)


@register_loss("multitask", options=("eps",), multitask=True)
def _multitask(
    num_classes: int, ignore_index: int, class_weights: Any, **options: Any
) -> nn.Module:
    return MultitaskLoss(num_classes, ignore_index, **options)


def is_multitask_spec(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``spec`` is the multitask loss: the one rule (raises when it does not parse)."""
    return any(loss_entry(name).multitask for name, _, _ in _parse_spec(spec))


def build_loss(
    spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    num_classes: int,
    ignore_index: int = 255,
    class_weights: torch.Tensor | Sequence[float] | None = None,
) -> CombinedLoss | MultitaskLoss:
    """Build a loss from its configuration.

    Accepted forms:

    * ``"ce+dice"``: ``+``-joined term names, each with weight 1;
    * ``{"name": "ce+dice", "weights": {"ce": 1.0, "dice": 0.5}, "label_smoothing": 0.1}``:
      options apply to the terms that take them;
    * ``{"terms": [...]}`` or a list of terms, each ``{"name": "ce", "weight": 1.0, **options}``.

    Terms: ``ce`` (alias ``cross_entropy``; options ``label_smoothing``, ``class_weighted``,
    default True, which applies ``class_weights``), ``dice`` (``smooth``), ``tanimoto``
    (``eps``) and ``multitask`` (``eps``; must be alone, returns :class:`MultitaskLoss`).

    Args:
        spec: The configuration.
        num_classes: Number of classes ``N``.
        ignore_index: Target value of ignored pixels.
        class_weights: Optional per-class weights for cross-entropy, e.g. from
            :func:`class_weights_from_pixels`.

    Returns:
        :class:`CombinedLoss` or :class:`MultitaskLoss`.

    Raises:
        ValueError: On an unknown term or option, or ``multitask`` combined with others.
    """
    entries = [(loss_entry(name), weight, options) for name, weight, options in _parse_spec(spec)]
    if any(entry.multitask for entry, _, _ in entries) and len(entries) != 1:
        raise ValueError("the 'multitask' loss cannot be combined with other terms")
    modules: dict[str, tuple[float, nn.Module]] = {}
    for entry, weight, options in entries:
        if entry.name in modules:
            raise ValueError(f"loss term {entry.name!r} given twice")
        unknown = set(options) - entry.options
        if unknown:
            raise ValueError(f"unknown options for loss {entry.name!r}: {sorted(unknown)}")
        built = entry.build(num_classes, ignore_index, class_weights, **options)
        modules[entry.name] = (weight, built)
    if entries[0][0].multitask:
        multitask = modules[entries[0][0].name][1]
        assert isinstance(multitask, MultitaskLoss)  # what the multitask entry builds
        return multitask
    return CombinedLoss(modules)


def _parse_spec(spec: Any) -> list[tuple[str, float, dict[str, Any]]]:
    if isinstance(spec, str):
        return [(name.strip(), 1.0, {}) for name in spec.split("+")]
    if isinstance(spec, Mapping):
        if "terms" in spec:
            extra = set(spec) - {"terms"}
            if extra:
                raise ValueError(f"unexpected loss keys next to 'terms': {sorted(extra)}")
            return _parse_spec(spec["terms"])
        if "name" not in spec:
            raise ValueError(f"loss spec needs a 'name' or 'terms': {dict(spec)}")
        options = {k: v for k, v in spec.items() if k not in ("name", "weights")}
        names = [name.strip() for name in str(spec["name"]).split("+")]
        weights = dict(spec.get("weights") or {})
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"weights given for terms not in {spec['name']!r}: {sorted(unknown)}")
        accepted = {name: loss_entry(name).options for name in names}
        unused = set(options) - set().union(*accepted.values())
        if unused:
            raise ValueError(f"unknown loss options for {spec['name']!r}: {sorted(unused)}")
        out = []
        for name in names:
            term_options = {k: v for k, v in options.items() if k in accepted[name]}
            out.append((name, float(weights.get(name, 1.0)), term_options))
        return out
    if isinstance(spec, Sequence):
        out = []
        for term in spec:
            if not isinstance(term, Mapping) or "name" not in term:
                raise ValueError(f"each loss term needs a 'name': {term!r}")
            options = {k: v for k, v in term.items() if k not in ("name", "weight")}
            out.append((str(term["name"]), float(term.get("weight", 1.0)), options))
        if not out:
            raise ValueError("empty list of loss terms")
        return out
    raise ValueError(f"unsupported loss spec: {spec!r}")


def class_weights_from_pixels(
    class_pixels: Sequence[float] | Mapping[str, float] | torch.Tensor,
    scheme: str = "inverse_sqrt",
) -> torch.Tensor:
    """Per-class loss weights from class pixel counts (e.g. a manifest's ``class_pixels``).

    With frequencies ``f_c = n_c / sum n``: ``inverse`` gives ``1 / f_c`` and
    ``inverse_sqrt`` ``1 / sqrt(f_c)``, both rescaled to mean 1 over the present classes;
    ``median_freq`` gives ``median(f) / f_c`` (Eigen & Fergus), the median over present
    classes. Classes with no pixels get weight 0 (they never occur as a target).

    Args:
        class_pixels: Pixel count per class, in class order (a mapping keeps its order).
        scheme: ``"inverse_sqrt"``, ``"inverse"`` or ``"median_freq"``.

    Returns:
        float32 ``[N]``.

    Raises:
        ValueError: On an unknown scheme, negative counts, or no pixels at all.
    """
    if isinstance(class_pixels, Mapping):
        class_pixels = list(class_pixels.values())
    counts = torch.as_tensor(class_pixels, dtype=torch.float64).flatten()
    if (counts < 0).any():
        raise ValueError("class pixel counts must be non-negative")
    present = counts > 0
    if not present.any():
        raise ValueError("no class has any pixel")
    freq = counts / counts.sum()
    safe = torch.where(present, freq, 1.0)
    if scheme == "inverse":
        weights = 1.0 / safe
    elif scheme == "inverse_sqrt":
        weights = safe.rsqrt()
    elif scheme == "median_freq":
        weights = freq[present].quantile(0.5) / safe
    else:
        raise ValueError(f"unknown class weight scheme {scheme!r}")
    weights = torch.where(present, weights, 0.0)
    if scheme != "median_freq":
        weights = weights / weights[present].mean()
    return weights.float()
