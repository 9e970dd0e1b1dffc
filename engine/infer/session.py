"""What a prediction run does around its inputs: finding them, guarding them, cleaning up.

:func:`expand_inputs` turns files, globs and folders into input rasters; :func:`check_outputs`
refuses outputs that would overwrite an input; :func:`output_folder` and
:func:`removing_temporaries` remove, on any exit but success, what the run created and
nothing else; :func:`signals_raise` turns SIGINT/SIGTERM into :class:`Interrupted` so that
this cleanup runs for signals too (see :mod:`engine.infer.run`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.data.sources.formats import is_raster, suffix_list
from engine.errors import UserError
from engine.infer.outputs import OutputSpec, output_paths, planned_format


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM) stopping the run; exit code ``128 + signal``.

    Not an ``Exception``, so nothing catches it by accident, and ``finally`` blocks and
    context managers clean up on its way out.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; the unfinished outputs were removed")


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Turn ``signums`` into :class:`Interrupted` inside the block (main thread only).

    After the first, these signals are ignored until the block ends, so the cleanup that
    the exception runs is not interrupted in turn. The previous handlers come back after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in signums}

    def stop(signum: int, _frame: Any) -> None:
        for other in signums:
            signal.signal(other, signal.SIG_IGN)
        raise Interrupted(signum)

    for signum in signums:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Input rasters from files, globs and folders (a folder: its raster files).

    Raises:
        UserError: when a pattern matches nothing, there are no inputs at all, or two
            inputs would write the same outputs.
    """
    paths: list[Path] = []
    kinds = suffix_list()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if is_raster(p))
            matches = [p for p in matches if p.is_file()]
            if not matches:
                raise UserError(f"{pattern}: folder holds no raster files ({kinds})")
        elif path.is_file():
            matches = [path]
        else:
            found = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in found if p.is_file() and is_raster(p)]
            if not matches:
                raise UserError(f"{pattern}: no raster file matches ({kinds})")
        paths.extend(matches)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    paths = list(unique.values())
    if not paths:
        raise UserError("no input files")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise UserError(f"{stems[path.stem]} and {path} would write the same outputs")
        stems[path.stem] = path
    return paths


def check_outputs(folder: Path, inputs: list[Path], spec: OutputSpec) -> None:
    """Refuse when an output path is one of the inputs (``spec.fmt`` may be ``"auto"``).

    Raises:
        UserError: naming the output, its input and the input it would overwrite.
    """
    resolved = {path.resolve(): path for path in inputs}
    for path in inputs:
        for fmt in planned_format(path, spec.fmt):
            for target in output_paths(folder, path.stem, replace(spec, fmt=fmt)):
                clash = resolved.get(target.resolve())
                if clash is None and target.exists():
                    clash = next((p for p in inputs if os.path.samefile(p, target)), None)
                if clash is not None:
                    raise UserError(
                        f"{target}: output of {path} would overwrite the input {clash}; "
                        "choose another --out"
                    )


@contextlib.contextmanager
def output_folder(out: str) -> Iterator[Path]:
    """Create ``out`` (and missing parents); on a failure, remove those it created if empty.

    Raises:
        UserError: when ``out`` is a file, cannot be created or is not writable.
    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {out}: cannot create the folder ({error.strerror})") from error
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"--out {out}: folder is not writable")
        yield folder
    except BaseException:
        for path in created:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                path.rmdir()
        raise


@contextlib.contextmanager
def removing_temporaries(paths: list[Path]) -> Iterator[None]:
    """On any exception, delete those of ``paths`` that did not exist before the block."""
    existed = {path for path in paths if os.path.lexists(path)}
    try:
        yield
    except BaseException:
        for path in paths:
            if path not in existed:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise
