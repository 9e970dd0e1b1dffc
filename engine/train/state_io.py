"""Training state on disk without pickle: safetensors for tensors, JSON for everything else.

Nothing terraseg reads back can run code: tensors live in safetensors files (a JSON header
and raw bytes), and the structure around them (optimiser groups, scheduler, grad scaler,
RNG states) is JSON with a closed set of tagged types (tuple, non-string dict keys,
tensors, NumPy arrays) stored in the safetensors metadata. A file that is not what it
should be (a pickle, random bytes, a truncated write) is a :class:`StateFileError` naming
it. Every write goes through :func:`write_bytes`, so a full disk is a
:class:`DiskFullError` naming the path, not a C++ assertion.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import jsonfile
from engine.errors import UserError

META_KEY = "terraseg_state"


class StateFileError(UserError):
    """A state, checkpoint or export file is unreadable or not what it should be."""


class DiskFullError(UserError, OSError):
    """The disk (or quota) filled while writing; the message names the path."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def disk_full(error: OSError, path: str | Path) -> DiskFullError | None:
    """The :class:`DiskFullError` for ENOSPC/EDQUOT ``error`` while writing ``path``, else None."""
    if error.errno == errno.ENOSPC:
        return DiskFullError(f"{path}: no space left on device")
    if error.errno == errno.EDQUOT:
        return DiskFullError(f"{path}: disk quota exceeded (no space left on device)")
    return None


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to the disk (the one low-level write).

    Raises:
        DiskFullError: when the disk or the quota is full.
    """
    try:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        full = disk_full(error, path)
        if full is not None:
            raise full from error
        raise


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented strict JSON, no NaN (through :func:`write_bytes`)."""
    write_bytes(path, (json.dumps(value, indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object as metadata (:func:`engine.jsonfile.read_json`: size cap, strict).

    Anything else (a pickle, bytes, NaN, a list, a file over the cap) is a named error; the
    caller checks the fields it uses.

    Raises:
        StateFileError: naming ``path`` and the problem.
    """
    try:
        value = jsonfile.read_json(path)
    except FileNotFoundError as error:
        raise StateFileError(f"{path}: {what} not found") from error
    except jsonfile.MetadataError as error:
        raise StateFileError(str(error)) from error  # names the file
    except OSError as error:
        raise StateFileError(f"{path}: {what} cannot be read ({_first_line(error)})") from error
    if not isinstance(value, dict):
        raise StateFileError(f"{path}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (what safetensors stores; shared storage is split)."""
    return {
        name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in state.items()
    }


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file through :func:`write_bytes`."""
    from safetensors.torch import save

    write_bytes(path, save(cpu_tensors(tensors), metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file to CPU: ``(tensors, metadata)``.

    Raises:
        StateFileError: when the file is missing or not a safetensors file.
    """
    from safetensors import safe_open

    if not Path(path).is_file():
        raise StateFileError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # SafetensorError, OSError, a Rust panic on garbage
        raise StateFileError(f"{path}: not a safetensors file ({_first_line(error)})") from error
    return tensors, metadata


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        kind = np.int64 if value.dtype.kind in "iu" else value.dtype
        tensors[name] = torch.from_numpy(value.astype(kind))
        return {"__ndarray__": name, "dtype": value.dtype.str}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training state file")


def _decode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value or "__ndarray__" in value:
        name = value.get("__tensor__", value.get("__ndarray__"))
        if name not in tensors:
            raise StateFileError(f"{where}: refers to a tensor {name!r} it does not hold")
        if "__tensor__" in value:
            return tensors[name]
        dtype = np.dtype(str(value["dtype"]))
        if dtype.kind not in "biuf":
            raise StateFileError(f"{where}: array of unsupported type {dtype}")
        return tensors[name].numpy().astype(dtype)
    if "__tuple__" in value:
        return tuple(_decode(v, tensors, where) for v in value["__tuple__"])
    if "__items__" in value:
        items = value["__items__"]
        return {_decode(k, tensors, where): _decode(v, tensors, where) for k, v in items}
    return {k: _decode(v, tensors, where) for k, v in value.items()}


def save_state(path: str | Path, value: Any) -> None:
    """Write a nested state (dicts, lists, tuples, numbers, strings, tensors, arrays).

    The tensors go into a safetensors file, the structure into its metadata as strict
    JSON (:func:`load_state` reads it as metadata, which refuses NaN).
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(value, tensors)
    save_tensors(path, tensors, {META_KEY: json.dumps(structure, allow_nan=False)})


def load_state(path: str | Path) -> Any:
    """Read a state written by :func:`save_state`.

    Raises:
        StateFileError: when the file is missing, not safetensors, or not a terraseg state.
    """
    tensors, metadata = load_tensors(path)
    if META_KEY not in metadata:
        raise StateFileError(f"{path}: not a terraseg state file (no {META_KEY} metadata)")
    try:
        structure = jsonfile.parse_json(metadata[META_KEY], path)
    except jsonfile.MetadataError as error:
        raise StateFileError(str(error)) from error  # names the file
    try:
        return _decode(structure, tensors, str(path))
    except (TypeError, ValueError, AttributeError, RecursionError) as error:
        raise StateFileError(f"{path}: malformed state ({_first_line(error)})") from error


def floating(tensors: Iterable[Any]) -> list[torch.Tensor]:
    """The floating-point tensors among ``tensors`` (others are skipped)."""
    return [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]


def all_finite(tensors: Iterable[Any]) -> bool:
    """Whether every floating tensor is finite: per-tensor checks on their device, one host read."""
    tensors = floating(tensors)
    if not tensors:
        return True
    device = tensors[0].device
    flags = [torch.isfinite(t).all().to(device, non_blocking=True) for t in tensors]
    return bool(torch.stack(flags).all())


def nonfinite_names(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors in ``state`` holding a NaN or an infinity."""
    return [
        name
        for name, t in state.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
    ]


def state_tensors(value: Any) -> list[torch.Tensor]:
    """All tensors nested in ``value`` (an optimiser ``state_dict()``, say)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in state_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in state_tensors(v)]
    return []
