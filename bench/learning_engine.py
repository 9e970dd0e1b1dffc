"""terraseg's own training path as a ``bench_learning`` contender: ``engine:<arch>[:key=value]``.

The plain loop of ``bench_learning`` compares *networks*; this contender runs what users run,
``engine.train.loop.train`` (shards, the streaming loader, device augmentation, accelerate,
the optimiser and schedule factories), under the same protocol where the two can agree:

* data: the Dubai pairs packed once by the shard builder at its defaults (so the same
  split: Tile 2 is val) with ``--engine-tile``² tiles, kept in ``--engine-shards``;
* batches: ``--crop``² random crops of the shards' tiles with horizontal/vertical flips, no
  rot90, no jitter, in the loader's own seeded order (not the plain loop's crop stream:
  the data stream is what this contender measures);
* model: ``set_seed(seed)`` then the registered architecture, as ``set_up`` builds it;
* loop: float32, cross-entropy (ignore 255), AdamW (lr, weight decay 1e-4, clip 1.0), poly
  0.9 to 0 over ``--steps``, no warmup, one torch thread, a loss row every step;
* scoring: the model training leaves, on the same whole val images, normalised by the
  manifest (its mean/std leave out ignored pixels), scored by ``bench_learning.evaluate``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

PREFIX = "engine:"


def is_engine(spec: str) -> bool:
    """Whether a contender spec names the engine's training path."""
    return spec.startswith(PREFIX)


def build_shards_once(root: Path, classes_path: Path, out: Path, tile: int) -> Path:
    """Pack the Dubai pairs into ``out`` with the builder's defaults (reused when present)."""
    from engine.data.build.builder import BuildOptions, build_shards
    from engine.data.sources.classes import load_classes
    from engine.data.sources.pairing import pair_by_glob

    if (out / "dataset.json").is_file():
        manifest = json.loads((out / "dataset.json").read_text())
        if manifest.get("tile_size") == tile:
            return out
        raise SystemExit(f"{out}: holds shards of {manifest.get('tile_size')}² tiles, not {tile}²")
    pairs = pair_by_glob(str(root / "*/images/*.jpg"), str(root / "*/masks/*.png"))
    build_shards(pairs, load_classes(classes_path), out, BuildOptions(tile=tile, workers=2))
    return out


def engine_config(spec: str, shards: Path, seed: int, cfg: dict[str, Any]):
    """The engine config that follows the protocol for contender ``spec`` and ``seed``."""
    import yaml

    from engine.train.config import config_from_dict

    name, *pairs = spec.removeprefix(PREFIX).split(":")
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = yaml.safe_load(value)
    return config_from_dict({
        "name": spec, "seed": seed,
        "data": {"shards": str(shards), "batch_size": cfg["batch"], "crop_size": cfg["crop"],
                 "num_workers": 0, "hflip": True, "vflip": True, "rot90": False, "jitter": 0.0,
                 "val_split": "", "test_split": ""},
        "model": {"arch": name, "options": options},
        "loss": {"spec": "ce", "class_weights": "none"},
        "optim": {"name": "adamw", "lr": cfg["lr"], "weight_decay": 1e-4, "grad_clip": 1.0},
        "schedule": {"name": "poly", "warmup_steps": 0, "power": 0.9},
        "train": {"epochs": 1, "steps_per_epoch": cfg["steps"], "mixed_precision": "no",
                  "log_every": 1, "keep_checkpoints": 1},
        "log": {"wandb": "disabled"},
    })  # fmt: skip


def initial_state(config) -> torch.nn.Module:
    """The network ``set_up`` starts from for this config (same seeding, same factory)."""
    from accelerate.utils import set_seed

    from engine.data.shards.manifest import load_manifest
    from engine.train.setup import build_model

    set_seed(config.seed)
    return build_model(config, load_manifest(config.data.shards))[0]


def train_engine(spec: str, seed: int, cfg: dict[str, Any], run_dir: Path):
    """Train through ``engine.train.loop.train``.

    Returns:
        The trained model, the manifest's :class:`Normalization` and the per-step losses.
    """
    from engine.data.shards.manifest import load_manifest
    from engine.train.loop import train

    config = engine_config(spec, Path(cfg["engine_shards"]), seed, cfg)
    result = train(config, run_dir)
    with open(run_dir / "history.csv", newline="") as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle) if r["split"] == "train"]
    if len(losses) != cfg["steps"]:
        raise RuntimeError(f"{run_dir}: {len(losses)} loss rows for {cfg['steps']} steps")
    return result.model, load_manifest(config.data.shards).normalization, losses


def stream_measures(config, steps: int) -> dict[str, float]:
    """What the engine's training stream feeds a run of ``config`` in its first ``steps``.

    The batches and crops come from ``engine.train.setup.stream_from_here``, seeded as the
    run's first epoch is. Returns the mean fraction of labelled crop pixels, the number of
    crops without one, and the mean number of distinct source images per batch.
    """
    from types import SimpleNamespace

    from engine.data.shards.manifest import load_manifest
    from engine.train.setup import stream_from_here

    run = SimpleNamespace(
        config=config,
        manifest=load_manifest(config.data.shards),
        accelerator=SimpleNamespace(process_index=0),
        state=SimpleNamespace(step=0),
        device=torch.device("cpu"),
    )
    batches, augment = stream_from_here(run, steps)
    labelled, empty, sources = [], 0, []
    for batch in batches:
        _, masks = augment(batch.images, batch.masks)
        valid = (masks != run.manifest.ignore_index).flatten(1).float().mean(1)
        labelled.append(float(valid.mean()))
        empty += int((valid == 0).sum())
        sources.append(len({key.rsplit("/r", 1)[0] for key in batch.keys}))
    return {
        "labelled_fraction": sum(labelled) / len(labelled),
        "crops_without_labels": empty,
        "sources_per_batch": sum(sources) / len(sources),
    }
