"""What every bench script shares: arguments, timing, environment, JSON and tables.

Timings on a shared machine are noisy, so the scripts compare contenders *within one run*:
:func:`interleave` runs every contender once per round, rotating the order between
rounds, and the tables report medians over rounds. Every JSON result carries the
environment (:func:`environment`), including the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VERSIONED = (
    "torch",
    "torchvision",
    "timm",
    "kornia",
    "accelerate",
    "webdataset",
    "numpy",
    "pillow",
    "segmentation-models-pytorch",
)


def base_parser(description: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every bench script has.

    ``--quick`` (a smoke-sized run, under a minute on a 2-core CPU), ``--out`` (the
    results folder), ``--device`` and ``--rounds``.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (<60 s)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the JSON")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per contender")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of this process (default: 1 on CPU, torch's on GPU)",
    )
    return parser


def setup(args: argparse.Namespace) -> torch.device:
    """Resolve ``--device`` and apply ``--threads``; return the device.

    On a CPU the default is one intra-op thread: on a shared machine, OpenMP threads that
    wait for each other at every barrier measure the scheduler, not the code (on this
    2-core machine under load, a ResUNet-34 step took 5-10x longer with 2 threads than
    with 1). DataLoader workers always run one thread each.
    """
    device = resolve_device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    return device


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a wall-clock reading includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children so far.

    Children (DataLoader workers) are counted while they run, which is what a
    measurement window needs; finished children are not. This process's time comes from
    ``time.process_time`` (nanoseconds; psutil counts 10 ms ticks, too coarse for a window
    of a tenth of a second).
    """
    try:
        import psutil
    except ImportError:  # without psutil, count this process only
        times = os.times()
        return times.user + times.system
    process = psutil.Process()
    total = time.process_time()  # all threads of this process, finer than psutil's ticks
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:  # a child that just exited
            pass
    return total


def interleave(
    contenders: Mapping[str, Callable[[], Mapping[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Run every contender once per round, rotating the order each round.

    Args:
        contenders: ``name -> fn``; ``fn()`` does its own warm-up and returns the metrics of
            one measurement (e.g. ``{"images_per_s": ...}``).
        rounds: Measurements per contender.

    Returns:
        ``name -> [metrics of round 0, round 1, ...]``.
    """
    names = list(contenders)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(dict(contenders[name]()))
    return results


def medians(samples: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-key median over a contender's rounds (keys of the first round)."""
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


def time_calls(fn: Callable[[], Any], calls: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, CPU, threads, accelerator, load average and date, for a result file."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {package: _version(package) for package in VERSIONED},
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": list(os.getloadavg()),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def write_results(name: str, payload: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/<name>.json`` (``loadavg_end`` added to ``payload["env"]``)."""
    if "env" in payload:
        payload["env"]["loadavg_end"] = list(os.getloadavg())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable on a terminal); floats get 3 significant figures."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a titled :func:`format_table`."""
    print(f"\n{title}\n{format_table(columns, rows)}", flush=True)
