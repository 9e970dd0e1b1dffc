"""terraseg's side of ``bench_peers``: the shard build, the training loop and the sliding window.

What a user runs: ``engine.api.build`` (timed on its own), ``engine.train.loop.train`` with
the protocol's config (``learning_engine.engine_config``: AdamW, cross-entropy, poly 0.9,
clip 1.0, float32, h/v flips, no jitter; plus the loader's workers), its loader and
augmentation as they come (``engine.train.setup.stream_from_here``) for the loader-only
figures, and ``engine.api.predict_file`` for prediction.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from learning_engine import engine_config


def process_cpu_seconds() -> float:
    """User + system seconds of this process and of its children that have ended.

    Taken before and after a whole run, once its loader workers have been joined, the
    difference counts the workers too (``RUSAGE_CHILDREN`` holds waited-for children).
    """
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def build(folder: Path, classes: Path, out: Path, tile: int, workers: int = 1) -> dict:
    """Build shards of every pair in ``folder`` (all train); seconds and CPU seconds."""
    from engine import api

    start, cpu = time.perf_counter(), process_cpu_seconds()
    options = api.BuildOptions(tile=tile, val=0.0, test=0.0, workers=workers, overwrite=True)
    api.build(str(folder / "images" / "*.tif"), str(folder / "masks" / "*.tif"), classes, out,
              options)  # fmt: skip
    return {
        "shards": str(out),
        "build_s": time.perf_counter() - start,
        "build_cpu_s": process_cpu_seconds() - cpu,
    }


def config(shards: Path, seed: int, cfg: dict[str, Any]):
    """The protocol's engine config, with ``cfg['workers']`` loader workers."""
    result = engine_config("engine:resunet34", shards, seed, cfg)
    result.data.num_workers = cfg["workers"]
    result.train.log_every = cfg["log_every"]
    return result


@contextmanager
def cpu_marks() -> Iterator[list[float]]:
    """CPU seconds (this process and its live loader workers) at each train history row.

    Measurement only: ``History.write`` is wrapped for the duration, so that the CPU of
    the steady windows can be told from the run's fixed costs (start-up, checkpoint,
    export, plots), as the TorchGeo loop's windows are.
    """
    from common import cpu_seconds

    from engine.train.history import History

    marks: list[float] = []
    original = History.write

    def write(self, row):
        original(self, row)
        if row.get("split") == "train":
            marks.append(cpu_seconds())

    History.write = write  # type: ignore[method-assign]
    try:
        yield marks
    finally:
        History.write = original  # type: ignore[method-assign]


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def train(shards: Path, seed: int, cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One ``engine.train.loop.train`` run: windows of ``log_every`` steps, wall and CPU.

    Returns:
        ``windows`` (steps and seconds per logged window), ``wall_s``, ``cpu_s``, the
        trained ``model`` and its ``normalization``.
    """
    from engine.data.shards.manifest import load_manifest
    from engine.train.loop import train as train_loop

    run_config = config(shards, seed, cfg)
    start, cpu = time.perf_counter(), process_cpu_seconds()
    try:
        with cpu_marks() as marks:
            result = train_loop(run_config, run_dir)
    finally:
        _reset_accelerate()
    wall, cpu = time.perf_counter() - start, process_cpu_seconds() - cpu
    with open(run_dir / "history.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "train"]
    windows, previous = [], 0
    for row, mark in zip(rows, marks, strict=True):
        windows.append({"steps": int(row["step"]) - previous, "time_s": float(row["time_s"]),
                        "cpu_mark": mark})  # fmt: skip
        previous = int(row["step"])
    return {"windows": windows, "wall_s": wall, "cpu_s": cpu, "model": result.model,
            "normalization": load_manifest(shards).normalization}  # fmt: skip


def loader_only(shards: Path, cfg: dict[str, Any], batches: int) -> dict[str, float]:
    """The loader and augmentation alone (no network): seconds and CPU for ``batches``."""
    from engine.data.shards.manifest import load_manifest
    from engine.train.setup import stream_from_here

    run_config = config(shards, 0, cfg)
    run = SimpleNamespace(
        config=run_config,
        manifest=load_manifest(shards),
        accelerator=SimpleNamespace(process_index=0),
        state=SimpleNamespace(step=0),
        device=torch.device(cfg["device"]),
    )
    start, cpu = time.perf_counter(), process_cpu_seconds()
    stream, augment = stream_from_here(run, batches)
    seen = 0
    for batch in stream:
        images, masks = augment(batch.images.to(run.device), batch.masks.to(run.device))
        seen += images.shape[0]
    del stream
    return {"seconds": time.perf_counter() - start, "cpu_s": process_cpu_seconds() - cpu,
            "samples": seen}  # fmt: skip


def predict(model: Any, scene: Path, out: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``engine.api.predict_file`` on one scene (uniform blending, as TorchGeo's average)."""
    from engine import api

    start = time.perf_counter()
    result = api.predict_file(model, scene, out, api.PredictOptions(
        tile=options["tile"], overlap=options["overlap"], batch=options["batch"],
        device=options["device"], weighting="uniform", format="tif"))  # fmt: skip
    return {
        "seconds": time.perf_counter() - start,
        "labels": str(result.paths["mask"]),
        "pixels": result.height * result.width,
    }
