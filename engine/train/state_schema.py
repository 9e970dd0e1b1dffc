"""What a checkpoint's ``trainer_state.json`` and RNG files may hold, checked before use.

A checkpoint may come from anywhere (a cluster, a colleague, a download): its state file is
read as metadata (:func:`engine.jsonfile.read_json`: size cap, strict JSON) and every field
is checked here before the trainer takes it: known keys only, exact types (an integer is
never a boolean or a float), finite numbers in their ranges, file names that stay inside
the checkpoint folder. The RNG states are checked for the types and shapes the generators
take, so a cut or forged ``rng-<rank>.safetensors`` never reaches ``random.setstate`` or
NumPy (which reads its position as an index). Each problem is a one-line
:class:`~engine.train.state_io.StateFileError` naming the file and the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.train.config_check import MAX_STEPS
from engine.train.state_io import StateFileError

SEED_MAX = 2**32 - 1  # as config_check's bound on seed
REQUIRED = ("format", "files", "step", "best_miou", "best_step", "bad_steps")
OPTIONAL = (
    "epoch", "seed", "model", "world_size", "global_batch", "steps_per_epoch", "total_steps",
)  # fmt: skip
MAX_PROCESSES = 65536
RNG_FILE = re.compile(r"rng-(0|[1-9][0-9]{0,5})\.safetensors")
RNG_KEYS = {"python", "numpy", "torch", "cuda"}
MT_WORDS = 624  # Mersenne Twister state words (Python and NumPy)
CUDA_STATE_BYTES = (8, 16)  # a CUDA generator's seed, and its offset


def _is_int(value: Any) -> bool:
    return type(value) is int


def _integer(state: dict[str, Any], key: str, low: int, high: int, where: Path) -> int:
    value = state[key]
    if not _is_int(value) or not low <= value <= high:
        raise StateFileError(
            f"{where}: {key!r} must be an integer in [{low}, {high}], got {value!r:.60}"
        )
    return value


def check_trainer_state(state: dict[str, Any], where: Path, folder_step: int | None) -> None:
    """Check a checkpoint's ``trainer_state.json`` (its ``format`` is checked by the caller).

    Args:
        state: The parsed JSON object.
        where: The state file (named in errors).
        folder_step: The step in the folder's name (``step-XXXXXXXX``), None for another name.

    Raises:
        StateFileError: naming ``where`` and the field that is unknown, missing, of another
            type or out of range.
    """
    unknown = sorted(set(state) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise StateFileError(f"{where}: unknown field(s) {unknown[:5]!r:.200}")
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise StateFileError(f"{where}: field(s) {missing} missing")
    step = _integer(state, "step", 0, MAX_STEPS, where)
    if folder_step is not None and step != folder_step:
        raise StateFileError(f"{where}: 'step' is {step} but the folder is step {folder_step}")
    _integer(state, "best_step", -1, step, where)
    _integer(state, "bad_steps", 0, step, where)
    if "epoch" in state:
        _integer(state, "epoch", 0, step, where)
    if "seed" in state:
        _integer(state, "seed", 0, SEED_MAX, where)
    if "world_size" in state:  # engine.train.elastic: the processes that wrote it
        _integer(state, "world_size", 1, MAX_PROCESSES, where)
    if "global_batch" in state:
        _integer(state, "global_batch", 1, MAX_STEPS, where)
    if "total_steps" in state or "steps_per_epoch" in state:  # kept on resume (train.plan)
        if not {"total_steps", "steps_per_epoch"} <= set(state):
            raise StateFileError(f"{where}: 'total_steps' and 'steps_per_epoch' come together")
        total = _integer(state, "total_steps", max(step, 1), MAX_STEPS, where)
        per_epoch = _integer(state, "steps_per_epoch", 1, total, where)
        if total % per_epoch:
            raise StateFileError(f"{where}: 'total_steps' is not a whole number of epochs")
    best = state["best_miou"]
    valid = isinstance(best, (int, float)) and not isinstance(best, bool) and math.isfinite(best)
    if not valid or not (best == -1 or 0 <= best <= 1):
        raise StateFileError(
            f"{where}: 'best_miou' must be a number in [0, 1] (or -1: none yet), got {best!r:.60}"
        )
    _check_model(state.get("model", {}), where)
    _check_files(state["files"], where)


def _check_model(model: Any, where: Path) -> None:
    """The model spec's fields that a resume compares with the run's."""
    if not isinstance(model, dict):
        raise StateFileError(f"{where}: 'model' must be an object")
    checks = {"arch": (str, "a text"), "options": (dict, "an object"), "num_classes": (int, "")}
    for key, (kind, name) in checks.items():
        if key in model and type(model[key]) is not kind:
            raise StateFileError(f"{where}: 'model.{key}' must be {name or 'an integer'}")
    if "num_classes" in model and not 1 <= model["num_classes"] <= 65536:
        raise StateFileError(f"{where}: 'model.num_classes' must be in [1, 65536]")


def _check_files(files: Any, where: Path) -> None:
    """``files``: the checkpoint's own file names (no paths) and their sizes in bytes."""
    if not isinstance(files, dict) or not files:
        raise StateFileError(f"{where}: 'files' must be an object of file names and sizes")
    for name, size in files.items():
        if name not in ("model.safetensors", "optimizer.safetensors") and not RNG_FILE.fullmatch(
            name
        ):
            raise StateFileError(f"{where}: 'files' lists {name!r:.80}, not a checkpoint file")
        if not _is_int(size) or size < 0:
            raise StateFileError(f"{where}: 'files' gives {name} the size {size!r:.40}")
    for name in ("model.safetensors", "optimizer.safetensors"):
        if name not in files:
            raise StateFileError(f"{where}: 'files' does not list {name}")


def check_rng_state(rng: Any, where: Path) -> None:
    """Check one rank's RNG states (Python, NumPy, torch CPU, CUDA) before they are set.

    Raises:
        StateFileError: naming ``where`` and the generator whose state is malformed.
    """
    if not isinstance(rng, dict) or not {"python", "numpy", "torch"} <= set(rng) <= RNG_KEYS:
        keys = sorted(rng) if isinstance(rng, dict) else type(rng).__name__
        raise StateFileError(
            f"{where}: RNG state must hold python, numpy and torch (and cuda), got {keys!r:.120}"
        )
    problems = {
        "python": _python_problem(rng["python"]),
        "numpy": _numpy_problem(rng["numpy"]),
        "torch": _bytes_problem(rng["torch"], (torch.get_rng_state().numel(),)),
    }
    cuda = rng.get("cuda")
    if "cuda" in rng:
        if not isinstance(cuda, list) or not 1 <= len(cuda) <= 1024:
            problems["cuda"] = "not a list of per-device states"
        else:
            problems["cuda"] = next(
                (p for p in (_bytes_problem(s, CUDA_STATE_BYTES) for s in cuda) if p), None
            )
    for generator, problem in problems.items():
        if problem:
            raise StateFileError(f"{where}: malformed {generator} RNG state ({problem})")


def _python_problem(state: Any) -> str | None:
    if not isinstance(state, tuple) or len(state) != 3 or state[0] != 3:
        return "not a version-3 state"
    words, gauss = state[1], state[2]
    if not isinstance(words, tuple) or len(words) != MT_WORDS + 1:
        return f"{MT_WORDS + 1} integers expected"
    if not all(_is_int(w) and 0 <= w <= 0xFFFFFFFF for w in words) or words[-1] > MT_WORDS:
        return "words must be 32-bit unsigned integers and the position at most 624"
    if gauss is not None and not (type(gauss) is float and math.isfinite(gauss)):
        return "the cached Gaussian must be null or a finite number"
    return None


def _numpy_problem(state: Any) -> str | None:
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != "MT19937":
        return "not an MT19937 state"
    key, position, has_gauss, cached = state[1:]
    if not isinstance(key, np.ndarray) or key.dtype != np.uint32 or key.shape != (MT_WORDS,):
        return f"the key must be {MT_WORDS} uint32 words"
    if not (_is_int(position) and 0 <= position <= MT_WORDS):
        return f"the position must be an integer in [0, {MT_WORDS}]"
    if not (_is_int(has_gauss) and has_gauss in (0, 1)):
        return "has_gauss must be 0 or 1"
    if type(cached) is not float or not math.isfinite(cached):
        return "the cached Gaussian must be a finite number"
    return None


def _bytes_problem(state: Any, sizes: tuple[int, ...]) -> str | None:
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
        return "not a 1-D uint8 tensor"
    if state.numel() not in sizes:
        return f"{state.numel()} bytes, expected {' or '.join(map(str, sizes))}"
    return None
