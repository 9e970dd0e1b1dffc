"""Export a trained model to one self-contained ONNX file (``terraseg export --format onnx``).

The file's input is the raw bands, float32 ``[B, C, H, W]`` in native units, in the order of
the metadata's ``terraseg_input`` bands (the model's bands, or ``--input-bands``); its
output is the class probabilities ``[B, N, H, W]`` (or int64 labels ``[B, H, W]``). Band
selection, nodata, normalisation and the softmax are in the graph
(:class:`engine.export.graph.NativeBandsModel`); the metadata
(:mod:`engine.export.metadata`) lets QGIS's Deepness plugin and ``terraseg predict`` run it.

Batch, height and width are dynamic (sides must be multiples of the model's
``size_divisor``), except when ``fixed_size`` is asked for, and for networks whose output
depends on their whole input's extent (ResUNet-a's PSP pooling): those are fixed to the
window they are predicted with (their training crop), as ``terraseg predict`` runs them.
Deepness (as of its 2024 code) takes its tile size from the input's last dimension, so a
file for QGIS wants ``fixed_size``.

The graph is traced with PyTorch's TorchScript-based exporter (opset 17) by default, or its
``torch.export``-based one (``exporter="dynamo"``, slower). The file is written under a
temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

import engine
from archs import unwrap_model
from engine.errors import UserError
from engine.evaluate.shard_eval import context_window
from engine.export.deps import optional_module
from engine.export.graph import OUTPUTS, NativeBandsModel, static_adaptive_pooling
from engine.export.metadata import DEFAULT_TILE, ExportSettings, build_metadata
from engine.train.export import load_exported

EXPORTERS = ("torchscript", "dynamo")
OPSET = 17


class ExportOnnxError(UserError):
    """Export settings that do not fit the model (bands, tile, output)."""


def band_gather(model_bands: list[str], input_bands: list[str] | None) -> list[int] | None:
    """Index in ``input_bands`` of each model band (None: the input is the model's bands).

    Raises:
        ExportOnnxError: for repeated input bands or model bands the input lacks.
    """
    if input_bands is None:
        return None
    repeated = sorted({name for name in input_bands if input_bands.count(name) > 1})
    if repeated:
        raise ExportOnnxError(f"--input-bands: {', '.join(repeated)} given more than once")
    missing = [name for name in model_bands if name not in input_bands]
    if missing:
        raise ExportOnnxError(
            f"--input-bands lacks the model's band(s) {', '.join(missing)} "
            f"(the model reads {', '.join(model_bands)})"
        )
    return [input_bands.index(name) for name in model_bands]


def _trace(
    graph: torch.nn.Module, sample: torch.Tensor, path: Path, output: str, dynamic: bool,
    exporter: str,
) -> None:  # fmt: skip
    """Write ``graph`` as ONNX to ``path`` (no metadata yet)."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    out_axes = axes if output == "probabilities" else {k - (k > 1): v for k, v in axes.items()}
    with warnings.catch_warnings(), torch.no_grad(), static_adaptive_pooling():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        if exporter == "dynamo":
            dims = {k: torch.export.Dim(v) for k, v in axes.items()}
            torch.onnx.export(graph, (sample,), str(path), dynamo=True, opset_version=18,
                              input_names=["bands"], output_names=[output],
                              dynamic_shapes=(dims,), verbose=False)  # fmt: skip
        else:
            torch.onnx.export(graph, (sample,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=["bands"], output_names=[output],
                              dynamic_axes={"bands": axes, output: out_axes})  # fmt: skip


def export_onnx(
    model_path: str | Path,
    out: str | Path,
    *,
    input_bands: list[str] | None = None,
    output: str = "probabilities",
    tile: int | None = None,
    overlap: float = 0.25,
    fixed_size: bool = False,
    resolution_cm: float | None = None,
    exporter: str = "torchscript",
) -> Path:
    """Export a run or export folder to ``out`` (an ``.onnx`` file; see the module notes).

    Args:
        model_path: What ``--model`` takes (a run folder, ``RUN/best``, ``model.safetensors``).
        out: The ONNX file to write (replaced atomically when it exists).
        input_bands: The graph's input bands by name (a superset of the model's, in the
            layer's order); None: exactly the model's bands.
        output: ``"probabilities"`` or ``"labels"``.
        tile: The window edge recorded for tiled prediction (and the fixed size); default:
            the training crop for networks that need it, else 1024.
        overlap: Window overlap fraction recorded, in ``[0, 1)``.
        fixed_size: Fix height and width to ``tile`` (for Deepness).
        resolution_cm: Ground resolution in cm/px; default: what the shards recorded, if any.
        exporter: ``"torchscript"`` or ``"dynamo"``.

    Returns:
        ``out``.

    Raises:
        ExportOnnxError: for settings that do not fit the model;
        engine.train.export.ExportError: for an unreadable export;
        engine.export.deps.MissingExtraError: without the ``onnx`` extra.
    """
    onnx = optional_module("onnx")
    if output not in OUTPUTS or exporter not in EXPORTERS:
        raise ExportOnnxError(f"output must be one of {OUTPUTS} and exporter one of {EXPORTERS}")
    if not 0.0 <= overlap < 1.0 or (resolution_cm is not None and not resolution_cm > 0):
        raise ExportOnnxError("overlap must be in [0, 1) and resolution positive")
    exported = load_exported(model_path, device="cpu")
    network = unwrap_model(exported.model)
    normalization = exported.normalization
    gather = band_gather(normalization.names, input_bands)
    divisor = int(getattr(network, "size_divisor", 1))
    needs_window = context_window(network, exported.train_crop)
    tile = tile or needs_window or DEFAULT_TILE
    if tile % divisor:
        raise ExportOnnxError(
            f"tile {tile} is not a multiple of the model's size_divisor {divisor}"
        )
    fixed_size = fixed_size or getattr(network, "input_extent_matters", False)
    settings = ExportSettings(tile, overlap, output, divisor, fixed_size,
                              *_ground(exported.manifest, resolution_cm))  # fmt: skip
    graph = NativeBandsModel(network, normalization, gather, output).eval()
    channels = len(input_bands) if input_bands is not None else normalization.in_channels
    side = tile if fixed_size else 2 * divisor
    sample = torch.zeros(1, channels, side, side)
    metadata = build_metadata(exported.spec, exported.manifest, normalization, input_bands,
                              settings, engine.__version__)  # fmt: skip
    out = Path(out)
    if not out.parent.is_dir() or out.is_dir():
        raise ExportOnnxError(f"--out {out}: not a file name in an existing folder")
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(handle)
    partial = Path(name)
    try:
        _trace(graph, sample, partial, output, not fixed_size, exporter)
        proto = onnx.load(str(partial))
        del proto.metadata_props[:]
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        proto.doc_string = f"terraseg {engine.__version__} {exported.spec['arch']} export"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(partial))
        os.replace(partial, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return out


def _footprints(manifest: dict) -> dict:
    """What the shard builder recorded of the georeferenced images (``{}`` if nothing)."""
    split = manifest.get("split")
    footprints = split.get("footprints") if isinstance(split, dict) else None
    return footprints if isinstance(footprints, dict) else {}


def _crs(manifest: dict) -> str | None:
    """The CRS name the shard builder recorded for georeferenced images, if any."""
    crs = _footprints(manifest).get("crs")
    return crs if isinstance(crs, str) and len(crs) < 4096 else None


def _ground(manifest: dict, resolution_cm: float | None) -> tuple[float | None, str | None]:
    """The resolution (the given one, else the recorded one) and the CRS the file records."""
    if resolution_cm is None:
        resolution_cm = recorded_resolution_cm(manifest)
    return resolution_cm, _crs(manifest)


def recorded_resolution_cm(manifest: dict) -> float | None:
    """The training images' median ground resolution in cm/px, when the builder recorded it."""
    metres = _footprints(manifest).get("resolution_m")
    if isinstance(metres, (int, float)) and not isinstance(metres, bool) and 0 < metres < 1e7:
        return float(metres) * 100.0
    return None


def written_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file terraseg wrote, as a plain mapping."""
    onnx = optional_module("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}
