"""The experiment configs and classes files that ship with terraseg, found by name.

A leaf module (it imports nothing from ``engine``): the YAML files beside it are package
data, installed with the wheel, so ``--config resunet34`` works from any folder.
``launch/configs`` in a clone is a link to this folder. A config is named by its path
below this folder without ``.yaml`` (``unet``, ``dubai/unet-cpu``).
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def list_configs() -> list[str]:
    """The names of the shipped files (``tiny-cpu``, ``dubai/classes``, ...), sorted."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in _files())


def _files() -> list[Path]:
    return [p for p in CONFIG_DIR.rglob("*.yaml") if p.is_file()]


def shipped_config(name: str) -> Path | None:
    """The shipped file called ``name`` (with or without ``.yaml``), or None.

    Only names from :func:`list_configs` match: a name is never joined onto the folder,
    so ``../x`` or an absolute path never leaves it.
    """
    key = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return CONFIG_DIR / f"{key}.yaml" if key in list_configs() else None


def resolve_config(text: str | Path) -> Path:
    """The config a user meant: an existing file, else a shipped config of that name.

    Args:
        text: a path (``my.yaml``, ``launch/configs/unet.yaml``) or a shipped name
            (``unet``, ``resunet34``, ``dubai/unet-cpu``).

    Returns:
        The path to read. A path that exists wins over a shipped name; when neither
        exists, the path as given (the caller's reader names it as missing).
    """
    path = Path(text)
    if path.exists():
        return path
    return shipped_config(str(text)) or path
