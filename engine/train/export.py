"""Exported models: ``model.safetensors`` + ``model.json`` + ``config.yaml`` + ``dataset.json``.

An export folder (``RUN/best`` by convention) is everything needed to predict without
accelerate or the training code: the weights (a plain CPU state dict in safetensors), the
model spec ``model.json`` = ``{"arch", "num_classes", "in_channels", "options", "bands",
"rgb_bands"}`` (the architecture that ``archs.create_model`` rebuilds, and the input bands in
channel order with their dtype, statistics and nodata: a version 3 manifest's records, see
:mod:`engine.data.normalize`), the run's config and the shard manifest (classes, palette,
``ignore_index``, the bands again).

Exports written before N-band data have no ``bands`` in ``model.json``; they load as three
uint8 bands red, green, blue with the 0–1 ``mean``/``std`` of their ``dataset.json`` copy.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from archs import unwrap_model
from engine.data.normalize import Normalization
from engine.errors import UserError
from engine.train import state_io

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
CONFIG_NAME = "config.yaml"
MANIFEST_NAME = "dataset.json"
EXPORT_DIR = "best"


class ExportError(UserError, FileNotFoundError):
    """An export is missing a file or is malformed; the message names the file."""


@dataclass
class ExportedModel:
    """A loaded export.

    Attributes:
        model: The network, in eval mode, on the requested device.
        spec: ``model.json``: ``{"arch", "num_classes", "in_channels", "options", "bands",
            "rgb_bands"}`` (``bands``/``rgb_bands`` absent in older exports).
        config: ``config.yaml`` contents.
        manifest: ``dataset.json`` contents (classes, palette, bands or mean/std, ...).
        path: The export folder.
    """

    model: torch.nn.Module
    spec: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def normalization(self) -> Normalization:
        """The model's input bands and normalisation (older exports: 3 uint8 RGB bands)."""
        return export_normalization(self.spec, self.manifest)

    @property
    def in_channels(self) -> int:
        """Input channels of the model (= bands)."""
        return int(self.spec["in_channels"])

    @property
    def train_crop(self) -> int | None:
        """The training crop edge (``config.yaml``'s ``data.crop_size``), None if absent."""
        data = self.config.get("data")
        crop = data.get("crop_size") if isinstance(data, dict) else None
        return crop if isinstance(crop, int) and crop > 0 else None


def export_normalization(spec: dict[str, Any], manifest: dict[str, Any]) -> Normalization:
    """The input bands of an export: ``model.json``'s ``bands``, else its manifest copy's.

    Raises:
        ExportError: when neither records bands nor ``mean``/``std``, or the bands are not
            the model's ``in_channels``.
    """
    if "bands" in spec:
        return Normalization.from_manifest(spec)
    try:
        normalization = Normalization.from_manifest(manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(
            f"{MANIFEST_NAME}: no bands and no mean/std to normalise the model's input ({error})"
        ) from error
    channels = int(spec.get("in_channels", 3))
    if normalization.in_channels != channels:
        raise ExportError(
            f"{MANIFEST_NAME}: {normalization.in_channels} bands but the model takes {channels} "
            "input channels"
        )
    return normalization


def _plain(value: Any) -> Any:
    """Make config/manifest values YAML/JSON-safe (paths, tuples, numpy and torch scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if hasattr(value, "tolist") and callable(value.tolist):
        return _plain(value.tolist())
    return value


def _check_spec(spec: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or "arch" not in spec or "num_classes" not in spec:
        raise ExportError(f"{where}: model spec needs at least 'arch' and 'num_classes'")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise ExportError(f"{where}: 'options' must be a mapping, got {type(options).__name__}")
    checked = {
        "arch": str(spec["arch"]),
        "num_classes": int(spec["num_classes"]),
        "in_channels": int(spec.get("in_channels", 3)),
        "options": _plain(options),
    }
    if "bands" not in spec:
        return checked
    try:
        normalization = Normalization.from_manifest(spec)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{where}: malformed bands record ({error!r})") from error
    if normalization.in_channels != checked["in_channels"]:
        raise ExportError(
            f"{where}: in_channels {checked['in_channels']} but {normalization.in_channels} "
            f"bands ({', '.join(normalization.names)})"
        )
    return checked | normalization.records()


def save_exported(
    out_dir: str | Path,
    model: torch.nn.Module,
    model_spec: dict[str, Any],
    config: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Write an export folder atomically.

    The files are written to a temporary sibling folder which is then renamed into place
    (an existing ``out_dir`` is moved aside first and deleted after), so readers never see
    a half-written export.

    Args:
        out_dir: The export folder (e.g. ``RUN/best``).
        model: The network (wrappers from ``torch.compile``/DDP are stripped).
        model_spec: ``{"arch", "num_classes", "in_channels", "options"}`` and the input's
            ``bands``/``rgb_bands`` records (taken from ``manifest`` when absent).
        config: The run configuration (written as YAML).
        manifest: The shard manifest (written as JSON).

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if "bands" not in model_spec and ("bands" in manifest or "mean" in manifest):
        model_spec = {**model_spec, **Normalization.from_manifest(manifest).records()}
    spec = _check_spec(model_spec, str(out_dir / SPEC_NAME))
    state = state_io.cpu_tensors(unwrap_model(model).state_dict())
    bad = state_io.nonfinite_names(state)
    if bad:
        raise ExportError(
            f"{out_dir / WEIGHTS_NAME}: refusing to export: {len(bad)} weight tensor(s) hold "
            f"NaN or inf (first: {bad[0]})"
        )
    old = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.saving-", dir=out_dir.parent))
    except OSError as error:
        raise state_io.disk_full(error, out_dir.parent) or error from error
    try:
        state_io.save_tensors(staging / WEIGHTS_NAME, state, {"format": "pt"})
        state_io.write_json(staging / SPEC_NAME, spec)
        text = yaml.safe_dump(_plain(config), sort_keys=False)
        state_io.write_bytes(staging / CONFIG_NAME, text.encode())
        state_io.write_json(staging / MANIFEST_NAME, _plain(manifest))
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
        staging.rename(out_dir)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            old.rename(out_dir)  # the previous export stays in place
        if isinstance(error, OSError) and not isinstance(error, state_io.DiskFullError):
            full = state_io.disk_full(error, error.filename or staging)
            if full is not None:
                raise full from error
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _locate(path: Path) -> tuple[Path, Path]:
    """Return ``(folder with model.json etc., weights file)`` for any accepted ``path``.

    Weights without a sibling ``model.json`` (an accelerate checkpoint
    ``RUN/checkpoints/step-N/model.safetensors``) take the spec, config and manifest of the
    run's ``best`` export, found up to three folders up.
    """
    if path.is_file() or path.suffix == ".safetensors":
        if not path.is_file():
            raise ExportError(f"{path}: weights file not found")
        folder, weights = path.parent, path
    elif not path.is_dir():
        raise ExportError(f"{path}: no such run folder, export folder or .safetensors file")
    elif (path / WEIGHTS_NAME).is_file() or (path / SPEC_NAME).is_file():
        folder, weights = path, path / WEIGHTS_NAME
    elif (path / EXPORT_DIR).is_dir():
        folder, weights = path / EXPORT_DIR, path / EXPORT_DIR / WEIGHTS_NAME
    else:
        raise ExportError(
            f"{path}: neither an export folder (no {WEIGHTS_NAME}) nor a run folder "
            f"(no {EXPORT_DIR}/{WEIGHTS_NAME}); has the run saved a best model yet?"
        )
    if not (folder / SPEC_NAME).is_file():
        for parent in list(folder.parents)[:3]:
            if (parent / EXPORT_DIR / SPEC_NAME).is_file():
                return parent / EXPORT_DIR, weights
    return folder, weights


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes shared by all keys."""
    for prefix in ("_orig_mod.", "module."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return state_io.read_json(path, what)
    except state_io.StateFileError as error:
        raise ExportError(str(error)) from error


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedModel:
    """Load an export for inference.

    Args:
        path: A run folder (uses ``RUN/best``), an export folder, or a ``.safetensors``
            file whose folder holds ``model.json``, ``config.yaml`` and ``dataset.json``
            (or, for a checkpoint's weights, whose run has a ``best`` export to take them
            from).
        device: Where to put the model (``"auto"`` = CUDA when available).

    Returns:
        The model in eval mode with its spec, config and manifest.

    Raises:
        ExportError: naming the missing or malformed file.
    """
    folder, weights = _locate(Path(path))
    spec = _check_spec(_read_json(folder / SPEC_NAME, "model spec"), str(folder / SPEC_NAME))
    config_path = folder / CONFIG_NAME
    try:
        config = yaml.safe_load(config_path.read_bytes().decode("utf-8"))
    except FileNotFoundError as error:
        raise ExportError(f"{config_path}: run config not found") from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        line = str(error).strip().splitlines()[0]
        raise ExportError(f"{config_path}: not valid YAML: {line}") from error
    if config is None:
        config = {}
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise ExportError(f"{config_path}: run config must be a mapping, got {kind}")
    manifest = _read_json(folder / MANIFEST_NAME, "dataset manifest")
    if not weights.is_file():
        raise ExportError(f"{weights}: weights file not found")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tensors, _ = state_io.load_tensors(weights)
    except state_io.StateFileError as error:
        problem = str(error).split(": ", 1)[-1]
        raise ExportError(f"{weights}: cannot read weights: {problem}") from error
    state = _strip_prefixes(tensors)
    bad = state_io.nonfinite_names(state)
    if bad:
        raise ExportError(
            f"{weights}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); "
            "the model would predict garbage"
        )
    import archs  # lazily: the engine does not depend on the model zoo at import time

    model = archs.create_model(
        spec["arch"], spec["num_classes"], spec["in_channels"], **spec["options"]
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ExportError(
            f"{weights}: weights do not match {spec['arch']} {spec['options']}: {error}"
        ) from error
    model.to(device).eval()
    return ExportedModel(model, spec, config, manifest, folder)
