"""An export's ``model.json`` and weights checked before a network is built from them.

Both files come from whoever shared the model. ``model.json`` is read with a size cap
(:mod:`engine.jsonfile`) and its schema checked field by field; the options go through the
registry's declarations (:func:`archs.check_model_args`), so ``base_width: 4096`` is one line,
not a process the kernel kills. The weights' safetensors header (names, dtypes, shapes) is
read without a tensor and compared with the network built on the ``meta`` device (no
memory): missing or extra names, other shapes and other dtypes (booleans where float32 is
expected) are refused before the real network is allocated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from engine.data.shards.normalize import Normalization
from engine.errors import UserError
from engine.jsonfile import MetadataError, metadata_limit, read_json

#: safetensors' dtype names of the torch dtypes a state dict holds.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
STATE_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP

Header = dict[str, tuple[str, tuple[int, ...]]]


class ExportError(UserError, FileNotFoundError):
    """An export is missing a file or is malformed; the message names the file."""


def read_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file (size cap, strict JSON); anything else is a named error.

    Raises:
        ExportError: ``PATH: WHAT not found``, too large, not JSON or not an object.
    """
    try:
        value = read_json(path)
    except FileNotFoundError as error:
        raise ExportError(f"{path}: {what} not found") from error
    except MetadataError as error:
        raise ExportError(str(error)) from error
    except OSError as error:
        raise ExportError(f"{path}: cannot read the {what} ({error.strerror})") from error
    if not isinstance(value, dict):
        raise ExportError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def _size_field(spec: dict[str, Any], key: str, bounds: tuple[int, int], where: str) -> int:
    value = spec.get(key, 3)  # in_channels: 3 in exports from before N-band data
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExportError(
            f"{where}: field {key} must be an int in {low}..{high}, got {value!r:.60}"
        )
    return value


def check_spec(spec: Any, where: str) -> dict[str, Any]:
    """The fields of a model spec, each checked for type and range.

    ``{"arch", "num_classes", "in_channels" (default 3), "options" (default {}), "bands",
    "rgb_bands"}``; the options are checked against the architecture's declarations.

    Returns:
        The checked spec (options made JSON-plain, bands re-recorded).

    Raises:
        ExportError: naming ``where``, the field and the problem.
    """
    import archs  # lazily: the engine does not depend on the model zoo at import time

    if not isinstance(spec, dict):
        raise ExportError(f"{where}: a model spec must be a JSON object, got {type(spec).__name__}")
    if "arch" not in spec or "num_classes" not in spec:
        raise ExportError(f"{where}: model spec needs at least 'arch' and 'num_classes'")
    if not archs.is_model(spec["arch"]):
        raise ExportError(
            f"{where}: field arch must be one of {', '.join(archs.list_models())}, "
            f"got {spec['arch']!r:.60}"
        )
    options = spec.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ExportError(f"{where}: field options must be a mapping, got {type(options).__name__}")
    checked = {
        "arch": spec["arch"],
        "num_classes": _size_field(spec, "num_classes", archs.NUM_CLASSES_RANGE, where),
        "in_channels": _size_field(spec, "in_channels", archs.IN_CHANNELS_RANGE, where),
        "options": _plain_options(options),
    }
    try:
        archs.check_model_args(
            checked["arch"], checked["num_classes"], checked["in_channels"], checked["options"]
        )
    except archs.ModelSpecError as error:
        raise ExportError(f"{where}: {error}") from error
    if "bands" not in spec:
        return checked
    return checked | _check_bands(spec, checked["in_channels"], where).records()


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Tuples to lists and paths to strings, so that the spec is JSON as written."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {str(key): plain(value) for key, value in options.items()}


def _check_bands(spec: dict[str, Any], in_channels: int, where: str) -> Normalization:
    bands, rgb = spec["bands"], spec.get("rgb_bands")
    if not isinstance(bands, list) or not all(isinstance(b, dict) for b in bands):
        raise ExportError(f"{where}: field bands must be a list of band records")
    if len(bands) != in_channels:
        raise ExportError(f"{where}: in_channels {in_channels} but {len(bands)} bands")
    if rgb is not None and (
        not isinstance(rgb, list)
        or len(rgb) != 3
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in rgb)
        or not all(0 <= i < len(bands) for i in rgb)
    ):
        raise ExportError(
            f"{where}: field rgb_bands must be null or 3 band indices in 0..{len(bands) - 1}"
        )
    try:
        normalization = Normalization.from_manifest(spec)
    except (KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{where}: malformed bands record ({error!r:.120})") from error
    if not all(math.isfinite(v) for b in normalization.bands for v in (b.mean, b.std, *b.display)):
        raise ExportError(f"{where}: a bands record holds a value that is not finite")
    return normalization


def read_weights_header(path: Path) -> Header:
    """``{name: (dtype, shape)}`` from a safetensors header; no tensor is read.

    The header's length (its first 8 bytes) is checked against the metadata size cap
    (``TERRASEG_MAX_METADATA_BYTES``) before safetensors parses it.

    Raises:
        ExportError: naming the file when it is not a safetensors file or its header is
            too large.
    """
    from safetensors import safe_open

    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise ExportError(f"{path}: cannot read weights ({error.strerror})") from error
    if len(head) < 8:
        raise ExportError(f"{path}: not a safetensors file ({len(head)} bytes)")
    length, limit = int.from_bytes(head, "little"), metadata_limit()
    if length > limit:
        raise ExportError(
            f"{path}: safetensors header claims {length} bytes, over the {limit}-byte limit "
            "(TERRASEG_MAX_METADATA_BYTES)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = {}
            for name in handle.keys():
                tensor = handle.get_slice(name)
                header[name] = (tensor.get_dtype(), tuple(tensor.get_shape()))
    except Exception as error:  # SafetensorError, OSError, a Rust panic on garbage
        problem = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ExportError(f"{path}: not a safetensors file ({problem})") from error
    return strip_prefixes(header)


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) prefixes shared by all keys."""
    for prefix in STATE_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def meta_model(spec: dict[str, Any], where: str) -> torch.nn.Module:
    """The spec's network on the ``meta`` device (no memory), without the weight options.

    Raises:
        ExportError: naming ``where`` when the registry refuses the spec (too large, ...).
    """
    import archs

    arch, num_classes, in_channels = spec["arch"], spec["num_classes"], spec["in_channels"]
    try:
        with torch.device("meta"):  # create_model leaves out pretrained/weights there
            return archs.create_model(arch, num_classes, in_channels, **spec["options"])
    except archs.ModelSpecError as error:
        raise ExportError(f"{where}: {error}") from error


def check_weights_fit(model: torch.nn.Module, header: Header, weights: Path, spec: dict) -> None:
    """The weights' names, shapes and dtypes must be those of ``model`` (a meta network).

    The model first sees the header as meta tensors, so that one which adapts to an older
    layout (ResUNet-34's 1x1 head) does so, as it will when the real weights load.

    Raises:
        ExportError: ``WEIGHTS: weights do not match ARCH {options}: ...`` with the first
            differences.
    """
    state = {
        name: torch.empty(shape, dtype=torch.float32, device="meta")
        for name, (_, shape) in header.items()
    }
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError:
        pass  # the comparison below names the differences
    expected = {
        name: (SAFETENSORS_DTYPES.get(t.dtype, str(t.dtype)), tuple(t.shape))
        for name, t in model.state_dict().items()
    }
    problems = []
    missing = [name for name in expected if name not in header]
    unexpected = [name for name in header if name not in expected]
    if missing:
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
    for name, (dtype, shape) in expected.items():
        if name not in header:
            continue
        stored_dtype, stored_shape = header[name]
        if stored_shape != shape:
            problems.append(f"{name} has shape {list(stored_shape)}, expected {list(shape)}")
        elif stored_dtype != dtype:
            problems.append(f"{name} is {stored_dtype}, expected {dtype}")
    if problems:
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise ExportError(
            f"{weights}: weights do not match {spec['arch']} {spec['options']}: {shown}"
        )
