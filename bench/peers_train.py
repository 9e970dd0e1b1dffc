"""Part 1 of ``bench_peers``: training throughput, both sides interleaved round by round.

The loaders are first measured alone (no network: what feeds a GPU), each side over the
same worker counts and TorchGeo over both of its random samplers; each side then trains
with its fastest setting. Samples/s and CPU seconds per sample are taken over the windows
of steps after the first (start-up and warm-up left out alike for both: terraseg's from
its history rows, TorchGeo's from the plain loop's windows); the whole call's wall and CPU
time are kept too (``run_*``, ``fixed_s``: what a run costs outside its steps).
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import peers_data as data
import peers_terraseg as ours
import peers_torchgeo as theirs
import torch
import torch.nn.functional as F
from common import cpu_seconds, print_table


def plain_train(model, stream, steps: int, lr: float, log_every: int) -> list[dict]:
    """TorchGeo's side of the protocol's loop; per window of steps: steps, seconds, and the
    CPU seconds so far (this process and live loader workers, as terraseg's marks)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    model.train()
    windows, start, first = [], time.perf_counter(), 0
    for step in range(steps):
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y, ignore_index=data.IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            windows.append({"steps": step + 1 - first, "time_s": time.perf_counter() - start,
                            "cpu_mark": cpu_seconds()})  # fmt: skip
            start, first = time.perf_counter(), step + 1
    return windows


def steady(windows: list[dict], batch: int) -> dict[str, float]:
    """Samples/s and CPU s/sample over every window but the first (start-up, warm-up)."""
    if len(windows) < 2:
        raise ValueError("need at least two windows of steps (steps > log_every)")
    samples = sum(w["steps"] for w in windows[1:]) * batch
    return {
        "samples_per_s": samples / sum(w["time_s"] for w in windows[1:]),
        "cpu_s_per_sample": (windows[-1]["cpu_mark"] - windows[0]["cpu_mark"]) / samples,
    }


def torchgeo_run(folder: Path, stats: dict, setting: dict, cfg: dict, seed: int):
    """One TorchGeo training run of ``cfg['steps']``; returns measures and the model."""
    start, cpu = time.perf_counter(), ours.process_cpu_seconds()
    dataset = theirs.datasets(folder)
    length = cfg["steps"] * cfg["batch"]
    loader = theirs.loader(
        dataset,
        crop=cfg["crop"],
        batch=cfg["batch"],
        length=length,
        workers=setting["workers"],
        sampler=setting["sampler"],
        seed=seed,
    )
    stream = theirs.batches(loader, theirs.augmenter(stats["mean"], stats["std"]), cfg["device"])
    model = theirs.network(cfg["in_channels"], cfg["num_classes"], seed).to(cfg["device"])
    windows = plain_train(model, stream, cfg["steps"], cfg["lr"], cfg["log_every"])
    del stream, loader
    wall, cpu = time.perf_counter() - start, ours.process_cpu_seconds() - cpu
    return _measures(windows, wall, cpu, cfg), model


def _measures(windows: list[dict], wall: float, cpu: float, cfg: dict) -> dict[str, float]:
    samples = cfg["steps"] * cfg["batch"]
    rates = steady(windows, cfg["batch"]) if len(windows) > 1 else {}
    return rates | {"wall_s": wall, "cpu_s": cpu, "run_cpu_s_per_sample": cpu / samples,
                    "run_samples_per_s": samples / wall,
                    "fixed_s": wall - sum(w["time_s"] for w in windows)}  # fmt: skip


def terraseg_run(shards: Path, cfg: dict, seed: int, run_dir: Path):
    """One terraseg training run; returns measures and the run's record."""
    run = ours.train(shards, seed, cfg, run_dir)
    return _measures(run["windows"], run["wall_s"], run["cpu_s"], cfg), run


def torchgeo_loader_only(folder: Path, stats: dict, setting: dict, cfg: dict) -> dict:
    """TorchGeo's loader and augmentation alone for ``loader_batches`` batches."""
    start, cpu = time.perf_counter(), ours.process_cpu_seconds()
    length = cfg["loader_batches"] * cfg["batch"]
    loader = theirs.loader(theirs.datasets(folder), crop=cfg["crop"], batch=cfg["batch"],
                           length=length, workers=setting["workers"],
                           sampler=setting["sampler"], seed=0)  # fmt: skip
    seen = sum(x.shape[0] for x, _ in theirs.batches(
        loader, theirs.augmenter(stats["mean"], stats["std"]), cfg["device"]))  # fmt: skip
    del loader
    return {"seconds": time.perf_counter() - start, "cpu_s": ours.process_cpu_seconds() - cpu,
            "samples": seen}  # fmt: skip


def tune_loaders(folder: Path, shards: Path, stats: dict, cfg: dict) -> dict[str, Any]:
    """Loader-only samples/s and CPU/sample per setting of each side; the fastest of each."""
    rows: dict[str, list[dict]] = {"torchgeo": [], "terraseg": []}
    for workers in cfg["workers"]:
        for sampler in ("patch", "batch"):
            setting = {"sampler": sampler, "workers": workers}
            m = torchgeo_loader_only(folder, stats, setting, cfg)
            rows["torchgeo"].append(setting | _rates(m))
        m = ours.loader_only(shards, cfg | {"workers": workers}, cfg["loader_batches"])
        rows["terraseg"].append({"workers": workers} | _rates(m))
    best = {side: max(r, key=lambda s: s["samples_per_s"]) for side, r in rows.items()}
    print_table(
        f"Loaders alone ({cfg['loader_batches']} batches of {cfg['batch']} x {cfg['crop']}²)",
        ["side", "setting", "samples/s", "CPU ms/sample"],
        [[side, {k: v for k, v in r.items() if k in ("sampler", "workers")},
          r["samples_per_s"], 1e3 * r["cpu_s_per_sample"]] for side in rows for r in rows[side]],
    )  # fmt: skip
    return {"settings": rows, "best": best}


def _rates(m: dict) -> dict[str, float]:
    return {
        "samples_per_s": m["samples"] / m["seconds"],
        "cpu_s_per_sample": m["cpu_s"] / m["samples"],
    }


def throughput(name: str, folder: Path, classes: Path, work: Path, cfg: dict) -> dict:
    """Part 1 on one scene set: build, loader tuning, then interleaved training rounds."""
    images, masks = data.read_split(folder)
    stats = data.band_statistics(images, masks)
    cfg = cfg | {"in_channels": images[0].shape[0], "num_classes": cfg["num_classes"]}
    del images, masks
    build = ours.build(folder, classes, work / f"shards-{name}", cfg["tile"])
    loaders = tune_loaders(folder, Path(build["shards"]), stats, cfg)
    best_tg, best_ts = loaders["best"]["torchgeo"], loaders["best"]["terraseg"]
    runs: dict[str, list[dict]] = {"terraseg": [], "torchgeo": []}
    last_run_dir = None
    for r in range(cfg["rounds"]):
        order = ["terraseg", "torchgeo"][:: 1 if r % 2 == 0 else -1]
        for side in order:
            if side == "torchgeo":
                runs[side].append(torchgeo_run(folder, stats, best_tg, cfg, r)[0])
                continue
            last_run_dir = work / f"run-{name}-{r}"
            shutil.rmtree(last_run_dir, ignore_errors=True)
            measured, _ = terraseg_run(Path(build["shards"]), cfg | {"workers": best_ts["workers"]},
                                       r, last_run_dir)  # fmt: skip
            runs[side].append(measured)
    result = {side: {k: statistics.median(m[k] for m in ms) for k in ms[0]} | {"rounds": ms}
              for side, ms in runs.items()}  # fmt: skip
    samples = cfg["steps"] * cfg["batch"]
    result["terraseg"]["build"] = build
    result["terraseg"]["build_cpu_s_per_sample"] = build["build_cpu_s"] / samples
    result["terraseg"]["workers"] = best_ts["workers"]
    result["torchgeo"]["setting"] = best_tg
    result["loaders"] = loaders
    result["run_dir"] = str(last_run_dir)
    result["in_channels"], result["stats"] = cfg["in_channels"], stats
    return result
