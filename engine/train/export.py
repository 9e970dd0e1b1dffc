"""Exported models: ``model.safetensors`` + ``model.json`` + ``config.yaml`` + ``dataset.json``.

An export folder (``RUN/best`` by convention) is everything needed to predict without
accelerate or the training code: the weights (a plain CPU state dict in safetensors), the
model spec ``model.json`` = ``{"arch", "num_classes", "in_channels", "options", "bands",
"rgb_bands"}`` (the architecture that ``archs.create_model`` rebuilds, and the input bands in
channel order with their dtype, statistics and nodata: a version 3 manifest's records, see
:mod:`engine.data.shards.normalize`), the run's config and the shard manifest (classes, palette,
``ignore_index``, the bands again).

Exports written before N-band data have no ``bands`` in ``model.json``; they load as three
uint8 bands red, green, blue with the 0–1 ``mean``/``std`` of their ``dataset.json`` copy.

Loading trusts nothing in the folder (:mod:`engine.train.export_check`): ``model.json`` is
read with a size cap and checked field by field against the registry's option declarations,
and the weights' header must name exactly the tensors, shapes and dtypes of the network
built on the ``meta`` device, before the real network is allocated.
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
from engine.data.shards.normalize import Normalization
from engine.jsonfile import metadata_limit
from engine.train import state_io
from engine.train.export_check import (
    ExportError,
    check_spec,
    check_weights_fit,
    meta_model,
    read_object,
    read_weights_header,
    strip_prefixes,
)

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
CONFIG_NAME = "config.yaml"
MANIFEST_NAME = "dataset.json"
EXPORT_DIR = "best"

__all__ = ["ExportError", "ExportedModel", "export_normalization", "load_exported", "save_exported"]


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
    spec = check_spec(_plain(model_spec), str(out_dir / SPEC_NAME))
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


def locate_export(path: str | Path) -> tuple[Path, Path]:
    """The one model-folder locator: ``(folder with model.json etc., weights file)``.

    ``path`` is a run folder (its ``best`` export), an export folder, or a
    ``.safetensors`` file.

    Weights without a sibling ``model.json`` (an accelerate checkpoint
    ``RUN/checkpoints/step-N/model.safetensors``) take the spec, config and manifest of the
    run's ``best`` export, found up to three folders up.
    """
    path = Path(path)
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
    folder, weights = locate_export(path)
    where = folder / SPEC_NAME
    spec = check_spec(read_object(where, "model spec"), str(where))
    config = _read_config(folder / CONFIG_NAME)
    manifest = read_object(folder / MANIFEST_NAME, "dataset manifest")
    if not weights.is_file():
        raise ExportError(f"{weights}: weights file not found")
    check_weights_fit(meta_model(spec, str(where)), read_weights_header(weights), weights, spec)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tensors, _ = state_io.load_tensors(weights)
    except state_io.StateFileError as error:
        problem = str(error).split(": ", 1)[-1]
        raise ExportError(f"{weights}: cannot read weights: {problem}") from error
    state = strip_prefixes(tensors)
    bad = state_io.nonfinite_names(state)
    if bad:
        raise ExportError(
            f"{weights}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); "
            "the model would predict garbage"
        )
    import archs  # lazily: the engine does not depend on the model zoo at import time

    # pretrained/weights only choose initial weights, which the export's replace: a shared
    # model.json must not make loading download or read another file
    options = {k: v for k, v in spec["options"].items() if k not in archs.WEIGHT_OPTIONS}
    model = archs.create_model(spec["arch"], spec["num_classes"], spec["in_channels"], **options)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        problem = str(error).strip().splitlines()[-1].strip()
        raise ExportError(
            f"{weights}: weights do not match {spec['arch']} {spec['options']}: {problem}"
        ) from error
    model.to(device).eval()
    return ExportedModel(model, spec, config, manifest, folder)


def _read_config(config_path: Path) -> dict[str, Any]:
    """``config.yaml`` of an export (a mapping; an empty file is an empty config)."""
    try:
        with open(config_path, "rb") as handle:
            limit = metadata_limit()
            if os.fstat(handle.fileno()).st_size > limit:
                raise ExportError(
                    f"{config_path}: over the {limit}-byte limit for metadata files "
                    "(TERRASEG_MAX_METADATA_BYTES)"
                )
            config = yaml.safe_load(handle.read(limit + 1).decode("utf-8"))
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
    return config
