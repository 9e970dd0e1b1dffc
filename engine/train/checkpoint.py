"""Resumable checkpoints: accelerate states written atomically, the last K kept.

A checkpoint is ``RUN/checkpoints/step-XXXXXXXX/``: accelerate's ``save_state`` files plus
``trainer_state.json`` (step, epoch, best score, and the size of every file), written last.
Every rank writes into ``.tmp-step-XXXXXXXX`` first; the main process renames it when all
ranks are done. A folder whose state file is missing or whose files do not have the
recorded sizes is incomplete and skipped by :func:`find_latest` with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

STATE_NAME = "trainer_state.json"
PREFIX = "step-"

log = logging.getLogger(__name__)


def checkpoints_dir(run_dir: str | Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / "checkpoints"


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def read_state(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint's ``trainer_state.json``.

    Raises:
        ValueError: when the state file is missing or unreadable, or a file it lists is
            missing or has another size (a partial or corrupt checkpoint).
    """
    path = Path(path)
    try:
        state = json.loads((path / STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: no readable {STATE_NAME} ({error})") from error
    for name, size in state.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise ValueError(f"{path}: {name} is missing or truncated")
    return state


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders of a run, oldest first (by step)."""
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(step, p) for p in folder.iterdir() if (step := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run; incomplete ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_state(path)
        except ValueError as error:
            log.warning("skipping incomplete checkpoint: %s", error)
            continue
        return path
    return None


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """Turn ``--resume latest|DIR`` into a checkpoint folder (``None``: nothing to resume).

    Raises:
        ValueError: when an explicit folder is not a complete checkpoint.
    """
    if resume == "latest":
        return find_latest(run_dir)
    path = Path(resume)
    read_state(path)
    return path


def save_checkpoint(
    accelerator: Any, run_dir: str | Path, state: dict[str, Any], keep: int
) -> Path:
    """Save a resumable checkpoint on every rank (a collective call), then prune old ones.

    Args:
        accelerator: The run's ``accelerate.Accelerator``.
        run_dir: The run directory.
        state: Loop state; must hold ``step``.
        keep: How many checkpoints to keep (oldest removed first).

    Returns:
        The checkpoint folder.
    """
    folder = checkpoints_dir(run_dir)
    final = folder / f"{PREFIX}{state['step']:08d}"
    staging = folder / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
        (staging / f".{STATE_NAME}").write_text(json.dumps({**state, "files": files}, indent=2))
        os.replace(staging / f".{STATE_NAME}", staging / STATE_NAME)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
