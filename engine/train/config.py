"""Experiment configuration: one YAML per experiment, every field overridable by ``--set``.

Loading merges, in order: the dataclass defaults (:mod:`engine.train.config_types`), the
YAML file, then each ``key.path=value`` override (values parsed as YAML, so ``3e-4``,
``true``, ``[1, 2]`` work). An unknown key anywhere is an error that names it, so a typo
never silently does nothing.
YAML is read with the YAML 1.2 booleans (only ``true``/``false``): ``mixed_precision: no``
is the string ``"no"``, and a boolean field refuses ``yes``/``maybe``. Types and ranges are
checked by :mod:`engine.train.config_check`; every problem is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from engine.configs import resolve_config
from engine.train.config_check import ConfigError, Yaml12Loader, coerce, fit_loss_to_arch, validate
from engine.train.config_types import Config

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config", "save_config", "validate"]


def _field_hint(dotted: str) -> str | None:
    """The type hint of a ``Config`` field named by a dotted path (None: not a plain field)."""
    target: Any = Config()
    hint = None
    for key in dotted.split("."):
        if not dataclasses.is_dataclass(target):
            return None
        fields = {f.name: f for f in dataclasses.fields(target)}
        if key not in fields:
            return None
        hint, target = str(fields[key].type), getattr(target, key)
    return hint


def _merge(target: Any, values: dict, path: tuple[str, ...], source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {'.'.join(path) or 'the config'} must be a mapping")
    known = {f.name: f for f in dataclasses.fields(target)}
    for key, value in values.items():
        where = ".".join((*path, key))
        if key not in known:
            raise ConfigError(f"{source}: unknown key {where!r} (known: {sorted(known)})")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, (*path, key), source)
        elif isinstance(current, dict) and isinstance(value, dict):
            setattr(target, key, {**current, **value})  # free-form mappings merge key by key
        else:
            setattr(target, key, coerce(value, str(known[key].type), where, source))


def _set_path(config: Config, dotted: str, value: Any, source: str) -> None:
    *parents, last = dotted.split(".")
    nested: dict = {last: value}
    for key in reversed(parents):
        nested = {key: nested}
    _merge(config, nested, (), source)


def _override_value(key: str, raw: str, source: str) -> Any:
    """The value of ``--set key=raw``: YAML, except that a string field takes the text as is."""
    if _field_hint(key) == "str" and not raw.startswith(("'", '"')):
        return raw  # data.shards=001 stays "001", mixed_precision=no stays "no"
    try:
        return yaml.load(raw, Loader=Yaml12Loader) if raw else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: cannot parse value: {error}".splitlines()[0]) from error


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config file and apply ``key.path=value`` overrides.

    Args:
        path: YAML file, or the name of a shipped config (``unet``, ``tiny-cpu``: see
            :func:`engine.configs.list_configs`); ``None``: defaults only.
        overrides: Strings like ``"optim.lr=3e-4"``.

    Raises:
        ConfigError: naming the file or override and the bad key or value.
    """
    config = Config()
    if path is not None:
        path = resolve_config(path)
        try:
            data = yaml.load(Path(path).read_text(), Loader=Yaml12Loader) or {}
        except FileNotFoundError as error:
            raise ConfigError(
                f"{path}: config file not found, nor a shipped config ('terraseg configs')"
            ) from error
        except yaml.YAMLError as error:
            message = " ".join(str(error).split())
            raise ConfigError(f"{path}: not valid YAML: {message}") from error
        _merge(config, data, (), str(path))
    overridden = set()
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: expected key.path=value")
        key, raw = (part.strip() for part in override.split("=", 1))
        source = f"--set {override!r}"
        _set_path(config, key, _override_value(key, raw, source), source)
        overridden.add(key)
    validate(config)
    if "model.arch" in overridden and "loss.spec" not in overridden:
        fit_loss_to_arch(config)
    return config


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. a saved run)."""
    config = Config()
    _merge(config, data, (), "saved config")
    validate(config)
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (to a temporary name, then renamed)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(temporary, path)
