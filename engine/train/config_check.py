"""Checking a config: field types, choices, ranges, the architecture and the loss.

Every problem is a one-line :class:`ConfigError` naming the key (and the file or ``--set``
it came from) and what is allowed. :mod:`engine.train.config` applies these while loading.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import yaml

import archs
from engine.errors import UserError
from engine.train.config_types import AUTO
from engine.train.loss_factory import build_loss, is_multitask_spec

if TYPE_CHECKING:
    from engine.train.config_types import Config


class ConfigError(UserError):
    """A config file or override is invalid; the message says which key and why."""


class Yaml12Loader(yaml.SafeLoader):
    """A safe loader with YAML 1.2 booleans: ``no``, ``off``, ``yes`` and ``on`` stay strings."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)

CHOICES = {
    "optim.name": ("adamw", "sgd"),
    "schedule.name": ("poly", "cosine", "step", "constant"),
    "train.mixed_precision": ("no", "bf16", "fp16", "auto"),
    "log.wandb": ("disabled", "offline", "online"),
    "loss.class_weights": ("none", "inverse", "inverse_sqrt", "median_freq"),
}

AT_LEAST_ONE = (
    "data.batch_size", "data.eval_batch_size", "data.crop_size", "data.shuffle_buffer",
    "train.grad_accum", "train.log_every",
    "train.keep_checkpoints", "train.max_bad_steps", "train.dist_timeout_s",
    "schedule.step_size",
)  # fmt: skip
AT_LEAST_ZERO = (
    "seed", "data.num_workers", "data.jitter", "optim.weight_decay", "optim.grad_clip",
    "schedule.warmup_steps", "train.eval_every", "train.checkpoint_every",
    "train.stop_after_steps", "train.panels",
)  # fmt: skip
PLANNED = ("train.epochs", "train.steps_per_epoch")  # a positive integer, or "auto"
ABOVE_ZERO = ("optim.lr", "schedule.power", "schedule.gamma")
UNIT = ("optim.momentum",)  # in [0, 1)
MAX_STEPS = 10**12  # train.epochs × train.steps_per_epoch, and a checkpoint's step
# Upper bounds, checked before anything is allocated: the settings that size memory,
# processes, disk use or a timer. Documented in engine/train/config.py.
AT_MOST = {
    "seed": (2**32 - 1, "NumPy seeds are 32-bit"),
    "data.batch_size": (4096, "samples per device"),
    "data.eval_batch_size": (4096, "tiles per device"),
    "data.crop_size": (8192, "pixels a side"),
    "data.num_workers": (128, "processes per rank"),
    "data.shuffle_buffer": (16384, "samples per worker"),
    "train.grad_accum": (1024, "micro-batches per step"),
    "train.keep_checkpoints": (1000, "checkpoints on disk"),
    "train.panels": (64, "images per evaluation"),
    "train.dist_timeout_s": (7 * 24 * 3600, "one week"),
}


def _describe(kinds: set[str]) -> str:
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a text"}
    return " or ".join(names.get(k, k) for k in sorted(kinds) if k != "None")


def coerce(value: Any, hint: str, where: str, source: str) -> Any:
    """Check a value against its field's type hint and convert YAML scalars to it.

    Booleans are strict (``true``/``false`` only); integers refuse fractions; a boolean
    given to a text field (YAML 1.1 reads ``no`` as false) becomes ``"no"`` where that is
    one of the field's choices and is otherwise refused with the quoting that fixes it.

    Args:
        value: The parsed YAML value.
        hint: The field's annotation as text (``"int"``, ``"bool | None"``, ``"list[float]"``).
        where: The dotted key.
        source: The file or ``--set`` the value came from.

    Returns:
        The value in the field's type.

    Raises:
        ConfigError: naming the source, the key, the expected type and the value.
    """
    if where in PLANNED:
        if value == AUTO:
            return value
        hint = "int"
    kinds = {part.strip() for part in hint.split("|")}
    if "Any" in kinds or (value is None and "None" in kinds):
        return value
    if isinstance(value, dict) and any(kind.startswith("dict") for kind in kinds):
        return value
    problem = f"{source}: {where} must be {_describe(kinds)}, got {value!r}"
    if "bool" in kinds:
        if isinstance(value, bool):
            return value
        raise ConfigError(problem)
    if isinstance(value, bool) and "str" in kinds:
        if value is False and "no" in CHOICES.get(where, ()):
            return "no"
        raise ConfigError(
            f"{source}: {where} = {str(value).lower()} is read as a boolean; it takes a text: "
            f"quote it, e.g. '\"{str(value).lower()}\"'"
        )
    if isinstance(value, bool):
        raise ConfigError(problem)
    if "int" in kinds:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(problem) from None
        if isinstance(value, int):
            return value
        raise ConfigError(problem)
    if "float" in kinds:
        try:
            if isinstance(value, (int, float, str)):
                return float(value)  # YAML reads 3e-4 (no dot) as a string
        except ValueError:
            pass
        raise ConfigError(problem)
    if "str" in kinds:
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, str):
            return value
        raise ConfigError(problem)
    if hint.startswith("list"):
        item = hint[hint.index("[") + 1 : -1]
        if not isinstance(value, list):
            plural = {"float": "numbers", "int": "integers", "str": "texts"}.get(item, item)
            raise ConfigError(f"{source}: {where} must be a list of {plural}, got {value!r}")
        return [coerce(v, item, where, source) for v in value]
    if hint.startswith("dict") and not isinstance(value, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {value!r}")
    return value


def _get(config: Config, dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def validate(config: Config) -> None:
    """Check choices, ranges, the architecture, its options and the loss specification.

    Raises:
        ConfigError: naming the key, the value and what is allowed.
    """
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value not in allowed:
            raise ConfigError(f"{key} = {value!r}; choose from {allowed}")
    for key in AT_LEAST_ONE:
        value = _get(config, key)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key in PLANNED:
        value = _get(config, key)
        if value != AUTO and (not isinstance(value, int) or not 1 <= value <= MAX_STEPS):
            raise ConfigError(
                f"{key} must be a positive integer (at most {MAX_STEPS}) or {AUTO}, got {value!r}"
            )
    checks = [(k, "≥ 0", lambda v: v >= 0) for k in AT_LEAST_ZERO]
    checks += [(k, "> 0", lambda v: v > 0) for k in ABOVE_ZERO]
    checks += [(k, "in [0, 1)", lambda v: 0 <= v < 1) for k in UNIT]
    checks += [("schedule.min_lr_ratio", "in [0, 1]", lambda v: 0 <= v <= 1)]
    for key, rule, ok in checks:
        value = _get(config, key)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            raise ConfigError(f"{key} must be {rule}, got {value!r}")
    for key, (limit, unit) in AT_MOST.items():
        if _get(config, key) > limit:
            raise ConfigError(f"{key} must be at most {limit} ({unit}), got {_get(config, key)}")
    epochs, per_epoch = config.train.epochs, config.train.steps_per_epoch
    if isinstance(epochs, int) and isinstance(per_epoch, int) and epochs * per_epoch > MAX_STEPS:
        raise ConfigError(
            f"train.epochs × train.steps_per_epoch must be at most {MAX_STEPS}, got "
            f"{epochs * per_epoch}"
        )
    betas = config.optim.betas
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas!r}")
    if config.data.crop_size % 32:
        raise ConfigError(f"data.crop_size must be divisible by 32, got {config.data.crop_size}")
    _check_arch(config)
    _check_weight_card(config)
    _loss_is_multitask(config.loss.spec)


def _check_arch(config: Config) -> None:
    arch = config.model.arch
    if not archs.is_model(arch):
        raise ConfigError(f"model.arch = {arch!r} is not known; choose from {archs.list_models()}")


WEIGHT_CARD_KEYS = ("card", "path")


def _check_weight_card(config: Config) -> None:
    """``model.weights`` as a mapping: ``{card: NAME, path: FILE}``, a known card."""
    weights = config.model.weights
    if not isinstance(weights, dict):
        return
    unknown = sorted(str(k)[:40] for k in set(weights) - set(WEIGHT_CARD_KEYS))
    if unknown or "card" not in weights:
        raise ConfigError(
            f"model.weights as a mapping takes {{card: NAME, path: FILE}}, got keys "
            f"{sorted(str(k)[:40] for k in weights)}"
        )
    try:
        archs.get_card(weights["card"])
    except ValueError as error:
        raise ConfigError(f"model.weights.card: {error}") from None
    if not isinstance(weights.get("path", ""), str):
        raise ConfigError(f"model.weights.path must be a text, got {weights['path']!r:.80}")
    if config.model.pretrained:
        raise ConfigError("model.pretrained and a model.weights card exclude each other")


def weight_card(config: Config) -> tuple[str, str] | None:
    """``(card, path)`` when ``model.weights`` names a weight card, else None."""
    weights = config.model.weights
    if not isinstance(weights, dict):
        return None
    return str(weights["card"]), str(weights.get("path", ""))


def _check_card_fits_arch(config: Config, accepted: dict[str, Any]) -> None:
    card = weight_card(config)
    if card is None:
        return
    name, path = card
    arch = config.model.arch
    if "input_card" not in accepted:
        takers = [m for m in archs.list_models() if "input_card" in archs.model_options(m)]
        raise ConfigError(
            f"model.weights names weight card {name} but {arch!r} cannot load one; "
            f"use one of {', '.join(takers)}"
        )
    chosen = config.model.options.get("input_card")
    if chosen is not None and chosen != name:
        raise ConfigError(
            f"model.options.input_card = {chosen!r} differs from model.weights.card = {name!r}"
        )
    if not path:
        raise ConfigError(
            f"model.weights.path is empty: set the {name} weight file with "
            "--set model.weights.path=FILE"
        )


def check_model_options(config: Config) -> None:
    """The architecture must accept ``model.options`` (and ``pretrained``/``weights`` if set).

    Checked when the model is about to be built, not while loading: a script may load a
    recipe, switch the architecture and replace the options before training.

    Raises:
        ConfigError: naming the options the architecture does not take and those it does.
    """
    arch, options = config.model.arch, config.model.options
    accepted = archs.model_options(arch)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model.options {unknown} not accepted by {arch!r}; it takes {sorted(accepted)}"
        )
    _check_card_fits_arch(config, accepted)
    for key in ("pretrained", "weights"):
        if getattr(config.model, key) and key not in accepted:
            raise ConfigError(f"model.{key} is set but {arch!r} has no encoder weights to load")
    try:  # types and ranges, before anything is built: base_width 4096 is one line
        archs.check_options(arch, options)
    except archs.ModelSpecError as error:
        raise ConfigError(f"model.options: {error}") from None


def _loss_is_multitask(spec: Any) -> bool:
    """Whether a loss specification is the multitask loss (checks that it builds)."""
    try:
        build_loss(spec, 2)
        return is_multitask_spec(spec)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"loss.spec = {spec!r}: {error}") from None


def arch_is_multitask(arch: str, options: dict[str, Any]) -> bool | None:
    """Whether an architecture has the multitask head (built on the meta device; no memory).

    Returns:
        True or False, or None when the model cannot be built without real tensors.
    """
    import torch

    try:
        with torch.device("meta"):
            return archs.is_multitask(archs.create_model(arch, 2, 3, **options))
    except Exception:  # the trainer's own check gives the one-line error later
        return None


def fit_loss_to_arch(config: Config) -> None:
    """After ``--set model.arch=...`` without ``--set loss.spec``: pick a loss that fits.

    A multitask model gets ``multitask``; a single-task model switched from a multitask
    config gets ``ce``. A loss set explicitly is never changed (the trainer checks it).
    """
    multitask = arch_is_multitask(config.model.arch, config.model.options)
    if multitask is None or multitask == _loss_is_multitask(config.loss.spec):
        return
    config.loss.spec = "multitask" if multitask else "ce"
