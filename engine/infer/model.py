"""The exported model as prediction uses it: classes, palette, bands, default window.

:func:`load_model` loads a run or export folder (:func:`engine.train.export.load_exported`)
onto a device and checks its ``dataset.json`` against the network: as many classes as the
network has outputs, the bands it was trained on. A :class:`LoadedModel` can be loaded once
and given to :func:`engine.infer.run.predict_file` for many inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.shards.normalize import Normalization
from engine.errors import UserError
from engine.evaluate.shard_eval import context_window
from engine.export.metadata import DEFAULT_TILE
from engine.infer.bands import model_normalization
from engine.infer.onnx_model import is_onnx, load_onnx_model
from engine.infer.sliding import resolve_device
from engine.infer.values import VALUE_MODES, original_values
from engine.render.colors import class_info
from engine.train.export import load_exported

__all__ = ["DEFAULT_TILE", "LoadedModel", "load_model"]


@dataclass(frozen=True)
class LoadedModel:
    """The exported model with what prediction needs from its ``dataset.json``.

    Attributes:
        exported: The :class:`~engine.train.export.ExportedModel` (network, spec, manifest).
        device: Where the network is.
        names: Class names, in class-index order.
        palette: One colour per class.
        num_classes: Outputs of the network.
        normalization: Its input contract (bands, mean, std, nodata).
        tile: The window edge when the options give none: the crop a network whose output
            depends on its input's extent was trained on (ResUNet-a), else
            :data:`DEFAULT_TILE`.
    """

    exported: Any
    device: Any
    names: list[str]
    palette: list
    num_classes: int
    normalization: Normalization
    tile: int

    def mask_values(self, mode: str) -> np.ndarray | None:
        """The mask's value table for ``--values`` ``mode``: ``None`` for ``"index"``.

        Raises:
            UserError: for an unknown mode, or ``"original"`` when ``dataset.json`` has no
                value for a class.
        """
        if mode not in VALUE_MODES:
            raise UserError(f"values {mode!r}: choose one of {', '.join(VALUE_MODES)}")
        if mode == "index":
            return None
        where = getattr(self.exported, "manifest_where", f"{self.exported.path}/dataset.json")
        return original_values(self.exported.manifest, where)


def load_model(path: str | Path, device: str = "auto") -> LoadedModel:
    """Load a run folder, export folder, ``model.safetensors`` or ``.onnx`` and check it.

    An ``.onnx`` file runs on onnxruntime (:func:`engine.infer.onnx_model.load_onnx_model`).

    Args:
        path: What ``--model`` takes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        UserError: naming the export's file when its record does not fit the model.
    """
    if is_onnx(path):
        onnx = load_onnx_model(path, device)
        record = onnx.record
        return LoadedModel(onnx, torch.device("cpu"), onnx.names, onnx.palette,
                           record.num_classes, record.input, onnx.tile)  # fmt: skip
    resolved = resolve_device(device)
    exported = load_exported(path, device=resolved)
    manifest = exported.manifest
    where = f"{exported.path}/dataset.json"
    try:
        names, palette = class_info(manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{where}: bad classes ({error})") from error
    num_classes = int(exported.spec["num_classes"])
    if len(names) != num_classes:
        raise UserError(
            f"{exported.path}: the model has {num_classes} classes but dataset.json lists "
            f"{len(names)}"
        )
    in_channels = int(exported.spec.get("in_channels", 3))
    normalization = model_normalization(manifest, in_channels, where)
    tile = context_window(exported.model, exported.train_crop) or DEFAULT_TILE
    return LoadedModel(exported, resolved, names, palette, num_classes, normalization, tile)
