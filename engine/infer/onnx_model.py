"""Prediction with an ONNX export (``terraseg predict --model model.onnx``) on onnxruntime.

:func:`load_onnx_model` opens the file written by :func:`engine.export.onnx.export_onnx`,
reads its metadata as untrusted data (:func:`engine.export.metadata.read_metadata`: sizes
bounded, strict JSON, one-line errors naming the file), checks that the graph's input and
output fit the metadata, and returns an :class:`OnnxExport` (which
:func:`engine.infer.model.load_model` wraps as its ``LoadedModel``) whose network is an
:class:`OnnxModel`: the sliding window (:mod:`engine.infer.strips`) hands it
the native bands and gets probabilities back, with the same windows, TTA and blending as
the PyTorch model. The input bands a raster must deliver are the graph's (the model's, or
the ``--input-bands`` of the export).

Execution providers: CPU; CUDA first when ``device`` asks for ``cuda`` (or ``auto``) and
onnxruntime has it. The CPU provider uses as many threads as PyTorch does in this process
(``torch.get_num_threads()``), so that both backends run under the same thread budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError
from engine.export.deps import optional_module
from engine.export.metadata import OnnxMetadataError, OnnxRecord, read_metadata
from engine.infer.strips import ProbabilityModel
from engine.render.colors import class_info

ONNX_SUFFIX = ".onnx"


def is_onnx(path: str | Path) -> bool:
    """Whether ``--model`` names an ONNX file."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


class OnnxModel(ProbabilityModel):
    """An onnxruntime session of a terraseg export: native bands in, probabilities out.

    Args:
        session: The ``onnxruntime.InferenceSession``.
        record: The file's metadata.
        where: The file, named in errors.
    """

    def __init__(self, session: Any, record: OnnxRecord, where: str = "<onnx>") -> None:
        self.session, self.record, self.where = session, record, where
        self.input_name = session.get_inputs()[0].name
        self.providers = list(session.get_providers())

    def __call__(self, bands: torch.Tensor) -> torch.Tensor:
        """Probabilities ``[B, N, H, W]`` of native float32 bands ``[B, C, H, W]``.

        Raises:
            UserError: for windows the graph cannot take (not its fixed size, or sides
                that are not multiples of the model's ``size_divisor``).
        """
        height, width = bands.shape[-2:]
        fixed, divisor = self.record.fixed_size, self.record.size_divisor
        if fixed is not None and (height, width) != (fixed, fixed):
            raise UserError(
                f"{self.where}: the graph takes {fixed}x{fixed} windows only, not "
                f"{height}x{width} (leave --tile out, or export without --fixed-size)"
            )
        if height % divisor or width % divisor:
            raise UserError(
                f"{self.where}: window {height}x{width} is not a multiple of the model's "
                f"size_divisor {divisor}; choose a --tile that is"
            )
        array = np.ascontiguousarray(bands.detach().cpu().numpy(), dtype=np.float32)
        (probs,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(probs)


@dataclass
class OnnxExport:
    """What :class:`~engine.infer.model.LoadedModel` keeps of an ONNX file.

    Attributes mirror :class:`engine.train.export.ExportedModel`'s (``model``, ``spec``,
    ``config``, ``manifest``, ``path``) so that prediction treats both alike.
    """

    model: OnnxModel
    spec: dict[str, Any]
    manifest: dict[str, Any]
    path: Path
    names: list[str]
    palette: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> OnnxRecord:
        """The file's metadata."""
        return self.model.record

    @property
    def tile(self) -> int:
        """The window to predict with: the graph's fixed size, else the recorded tile."""
        return self.record.fixed_size or self.record.tile

    @property
    def manifest_where(self) -> str:
        """How errors about the class record name it."""
        return f"{self.path} (metadata terraseg_dataset)"


def _providers(ort: Any, device: str) -> list[str]:
    available = set(ort.get_available_providers())
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise UserError(f"device {device!r}: onnxruntime has no CUDA provider here")
    wants_cuda = device.startswith("cuda") or device == "auto"
    if wants_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _check_graph(session: Any, record: OnnxRecord, where: str) -> None:
    """The graph's one input and output must be the metadata's bands and classes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise OnnxMetadataError(f"{where}: expected one input and one output")
    shape, out_shape = inputs[0].shape, outputs[0].shape
    bands = record.input.in_channels
    if len(shape) != 4 or shape[1] != bands:
        raise OnnxMetadataError(f"{where}: input {shape} does not take the {bands} metadata bands")
    if record.output != "probabilities":
        raise OnnxMetadataError(
            f"{where}: exported with --output labels; prediction needs probabilities "
            "(export again without --output labels)"
        )
    if len(out_shape) != 4 or out_shape[1] != record.num_classes:
        raise OnnxMetadataError(
            f"{where}: output {out_shape} is not [B, {record.num_classes}, H, W] probabilities"
        )


def load_onnx_model(path: str | Path, device: str = "auto") -> OnnxExport:
    """Open an ONNX export for prediction (see the module notes).

    Args:
        path: The ``.onnx`` file.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``/``"cuda:N"`` (CUDA provider).

    Returns:
        The session with its metadata, class names and palette.

    Raises:
        UserError: naming the file: missing, not ONNX, or metadata that does not fit.
    """
    ort = optional_module("onnxruntime")
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise UserError(f"{where}: ONNX file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        session = ort.InferenceSession(str(path), options, providers=_providers(ort, device))
    except Exception as error:  # onnxruntime raises its own exception types
        line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{where}: not a loadable ONNX model ({line[:300]})") from error
    record = read_metadata(session.get_modelmeta().custom_metadata_map, where)
    _check_graph(session, record, where)
    try:
        names, palette = class_info(record.manifest)
    except (KeyError, TypeError, ValueError) as error:
        raise OnnxMetadataError(f"{where}: bad classes in metadata ({error})") from error
    runner = OnnxModel(session, record, where)
    return OnnxExport(runner, record.spec, record.manifest, path, names, palette)
