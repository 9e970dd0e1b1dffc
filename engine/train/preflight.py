"""Checks before training: the shard folder, the run directory, and warnings about the data.

Errors are one-line :class:`ConfigError`/:class:`RunDirError` messages (both
:class:`~engine.errors.UserError`); warnings are returned as one-line texts that the trainer
prints once, on the main process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine.data.build.advice import classes_missing, val_split_gaps
from engine.data.shards.manifest import Manifest
from engine.data.shards.store import is_url
from engine.errors import UserError
from engine.train.config import Config, ConfigError

RARE_FRACTION = 0.001  # a class under 0.1 % of the train pixels is as good as absent

# What a training run writes into its folder (removed by --overwrite; nothing else is).
RUN_FILES = (
    "config.yaml", "history.csv", "metrics.json", "wandb_id", "STOP", "loss.png", "lr.png",
    "miou.png", "iou_per_class.png", "loss_terms.png", ".config.yaml.tmp", ".history.csv.tmp",
    ".metrics.json.tmp",
)  # fmt: skip
RUN_FOLDERS = ("checkpoints", "best", "wandb")


class RunDirError(UserError):
    """The run directory holds a run (or other files) that training would overwrite."""


def check_shards(config: Config) -> None:
    """``data.shards`` must be set and be a folder (or a URL, checked when it is read).

    Raises:
        ConfigError: naming the setting or the folder.
    """
    shards = config.data.shards
    if not shards:
        raise ConfigError(
            "data.shards is not set: add --set data.shards=DIR (a folder made by "
            "launch/build_shards.py)"
        )
    if not is_url(shards) and not Path(shards).is_dir():
        raise ConfigError(f"data.shards = {shards}: no such folder")


def check_splits(config: Config, manifest: Manifest) -> None:
    """The train split must be in the manifest, and the training crop fit in its tiles.

    Raises:
        ConfigError: naming the split, the manifest and the splits it has; or the crop and
            the tile size.
    """
    split = config.data.train_split
    if not manifest.has_split(split):
        raise ConfigError(
            f"data.train_split = {split!r}: {manifest.root / 'dataset.json'} has no such split "
            f"(has {sorted(manifest.data['splits'])})"
        )
    crop, tile = config.data.crop_size, manifest.tile_size
    if crop > tile:
        fits = tile - tile % 32  # crops are multiples of 32
        fix = f"use --set data.crop_size={fits} or less, or " if fits else ""
        raise ConfigError(
            f"data.crop_size = {crop} is larger than the tiles of {manifest.root / 'dataset.json'}"
            f" (tile_size {tile}): {fix}rebuild the shards with a --tile of at least {crop}"
        )


def check_rgb_bands(config: Config, manifest: Manifest, multitask: bool) -> None:
    """A multitask model needs true-colour bands for its colour (HSV) head.

    Raises:
        ConfigError: naming the architecture and the manifest whose ``rgb_bands`` is null.
    """
    if multitask and manifest.normalization.rgb_bands is None:
        raise ConfigError(
            f"model.arch = {config.model.arch!r} is a multitask model: its colour head needs "
            f"red, green and blue bands, but {manifest.root / 'dataset.json'} has rgb_bands: "
            f"null ({', '.join(manifest.normalization.names)}); train a single-task model "
            "(e.g. resuneta_d6) or rebuild the shards naming the rgb bands"
        )


def data_warnings(config: Config, manifest: Manifest) -> list[str]:
    """One-line warnings about what the data will do to this run (empty when all is well)."""
    data, warnings = config.data, []
    if not (data.val_split and manifest.has_split(data.val_split)):
        warnings.append(
            "no validation split: best/ will be the final weights, not the best ones; build "
            "shards with a val split (e.g. --split-by blocks:N)"
        )
    gaps = _val_gaps(config, manifest)
    if gaps:
        warnings.append(
            f"val split {data.val_split!r} has {' and '.join(gaps)}: the best checkpoint "
            "(best/) is chosen on it, so that choice is weak; rebuild the shards with a "
            "larger --val (or more, smaller groups)"
        )
    missing = _missing_in(config, manifest, data.test_split)
    if missing and data.test_split != data.val_split:
        warnings.append(
            f"test split {data.test_split!r} has no pixels of {', '.join(map(repr, missing))}, "
            "which train has: the final scores say nothing about them"
        )
    rare = _rare_classes(config, manifest)
    if rare:
        warnings.append(
            f"classes absent or under {RARE_FRACTION:.1%} of the {data.train_split!r} pixels "
            f"but present in {'/'.join(_eval_splits(config, manifest))}: {', '.join(rare)}; "
            "the model can hardly learn them (rebuild the shards with another split)"
        )
    return warnings


def best_choice_note(config: Config, manifest: Manifest) -> str | None:
    """What the choice of the best checkpoint rests on, when it is weak (None: it is not).

    The run's summary (``metrics.json``'s ``best_choice`` and the last printed line)
    carries it, so a score is never read without it.
    """
    val = config.data.val_split
    if not (val and manifest.has_split(val)):
        return "no val split: best/ is the final model, not a chosen one"
    gaps = _val_gaps(config, manifest)
    if gaps:
        return f"best checkpoint chosen on val split {val!r}, which has {' and '.join(gaps)}"
    return None


def _train_and_other_pixels(
    config: Config, manifest: Manifest, split: str
) -> tuple[list[int], list[int]] | None:
    pixels = manifest.data.get("class_pixels") or {}
    train, other = pixels.get(config.data.train_split), pixels.get(split)
    if not split or not manifest.has_split(split) or train is None or other is None:
        return None
    return train, other


def _missing_in(config: Config, manifest: Manifest, split: str) -> list[str]:
    """Classes with train pixels but none in ``split`` (empty when it has all, or is absent)."""
    both = _train_and_other_pixels(config, manifest, split)
    return classes_missing(*both, manifest.class_names) if both else []


def _val_gaps(config: Config, manifest: Manifest) -> list[str]:
    """What makes the val split a weak judge of the best checkpoint (empty: nothing, or none)."""
    val = config.data.val_split
    if not (val and manifest.has_split(val)):
        return []
    train, pixels = _train_and_other_pixels(config, manifest, val) or ([], [])
    return val_split_gaps(manifest.split(val).num_samples, pixels, train, manifest.class_names)


def _eval_splits(config: Config, manifest: Manifest) -> list[str]:
    names = (config.data.val_split, config.data.test_split)
    return [s for s in dict.fromkeys(names) if s and manifest.has_split(s)]


def _rare_classes(config: Config, manifest: Manifest) -> list[str]:
    pixels = manifest.data.get("class_pixels") or {}
    train = pixels.get(config.data.train_split)
    if not train or not sum(train):
        return []
    total, rare = sum(train), []
    others = [pixels[s] for s in _eval_splits(config, manifest) if s in pixels]
    for index, name in enumerate(manifest.class_names):
        if train[index] / total < RARE_FRACTION and any(o[index] > 0 for o in others):
            rare.append(f"{name!r} ({train[index] / total:.3%})")
    return rare


def is_run(folder: str | Path) -> bool:
    """Whether a folder holds a terraseg run (config.yaml and a history or checkpoints)."""
    folder = Path(folder)
    return (folder / "config.yaml").is_file() and (
        (folder / "history.csv").is_file() or (folder / "checkpoints").is_dir()
    )


def check_run_dir(run_dir: str | Path, resume: str | None, overwrite: bool) -> None:
    """Refuse to train into a folder whose run (or other files) training would overwrite.

    A missing or empty folder is fine; one holding a run needs ``resume`` or ``overwrite``;
    any other non-empty folder is refused, even with ``resume`` or ``overwrite`` (training
    never writes over what terraseg did not write).

    Raises:
        RunDirError: naming the folder and the option to add.
    """
    folder = Path(run_dir)
    if folder.exists() and not folder.is_dir():
        raise RunDirError(f"--out {folder}: is a file, not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if is_run(folder):
        if resume or overwrite:
            return
        raise RunDirError(
            f"--out {folder}: holds a run already; add --resume latest to continue it or "
            "--overwrite to replace it, or choose a new folder"
        )
    raise RunDirError(
        f"--out {folder}: not empty and not a terraseg run; choose a new or empty folder"
        + (" (--overwrite replaces only a terraseg run)" if overwrite else "")
    )


def clear_run(run_dir: str | Path) -> None:
    """Remove what a training run wrote into ``run_dir`` (for ``--overwrite``); keep the rest."""
    folder = Path(run_dir)
    if not is_run(folder):
        raise RunDirError(f"--overwrite {folder}: not a terraseg run; nothing removed")
    for name in RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
    for name in RUN_FILES:
        (folder / name).unlink(missing_ok=True)
