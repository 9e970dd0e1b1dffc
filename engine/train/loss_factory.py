"""Losses by name: ``loss.spec`` strings, weighted combinations, and class weights.

:func:`build_loss` turns a config's ``loss.spec`` (``"ce"``, ``"dice"``, ``"tanimoto"``,
``"multitask"``, a mapping with options, or a list of weighted terms) into a loss module of
:mod:`engine.train.losses`; :func:`class_weights_from_pixels` turns a manifest's class pixel
counts into per-class weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

_ALIASES = {
    "ce": "ce",
    "cross_entropy": "ce",
    "crossentropy": "ce",
    "dice": "dice",
    "tanimoto": "tanimoto",
    "multitask": "multitask",
}
_OPTIONS = {
    "ce": {"label_smoothing", "class_weighted"},
    "dice": {"smooth"},
    "tanimoto": {"eps"},
    "multitask": {"eps"},
}


def build_loss(
    spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
    num_classes: int,
    ignore_index: int = 255,
    class_weights: torch.Tensor | Sequence[float] | None = None,
) -> nn.Module:
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
    terms = _parse_spec(spec)
    canonical = [(_canonical(name), weight, options) for name, weight, options in terms]
    if any(name == "multitask" for name, _, _ in canonical):
        if len(canonical) != 1:
            raise ValueError("the 'multitask' loss cannot be combined with other terms")
        _check_options("multitask", canonical[0][2])
        return MultitaskLoss(num_classes, ignore_index, **canonical[0][2])

    modules: dict[str, tuple[float, nn.Module]] = {}
    for name, weight, options in canonical:
        if name in modules:
            raise ValueError(f"loss term {name!r} given twice")
        _check_options(name, options)
        if name == "ce":
            weighted = options.get("class_weighted", True)
            modules[name] = (
                weight,
                CrossEntropyLoss(
                    weight=class_weights if weighted else None,
                    ignore_index=ignore_index,
                    label_smoothing=float(options.get("label_smoothing", 0.0)),
                ),
            )
        elif name == "dice":
            modules[name] = (weight, DiceLoss(num_classes, ignore_index, **options))
        else:
            modules[name] = (weight, TanimotoLoss(num_classes, ignore_index, **options))
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
        accepted = {name: _OPTIONS[_canonical(name)] for name in names}
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


def _canonical(name: str) -> str:
    key = name.strip().lower()
    if key not in _ALIASES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(_ALIASES)}")
    return _ALIASES[key]


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    unknown = set(options) - _OPTIONS[name]
    if unknown:
        raise ValueError(f"unknown options for loss {name!r}: {sorted(unknown)}")


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
