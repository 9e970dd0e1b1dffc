"""terraseg from Python: build, train, evaluate, predict and export, a few lines each.

The functions a notebook or a pipeline calls; each is the library path the matching
``terraseg`` subcommand takes (without its argument parsing and printing)::

    from engine import api

    api.build("data/*/images/*.tif", "data/*/masks/*.tif", "classes.yaml", "shards/mine",
              api.BuildOptions(tile=512))
    result = api.train("tiny-cpu", "runs/mine", overrides=["data.shards=shards/mine"])
    metrics = api.evaluate("runs/mine", "shards/mine", "test")
    written = api.predict_file("runs/mine", "scene.tif", "preds", api.PredictOptions(tile=512))
    onnx_file = api.export_onnx("runs/mine", "mine.onnx")  # the `onnx` extra

Everything else (the registries, the loader, the sliding window) stays importable from its
stage; this module only names the five jobs. Errors are the stages' own
:class:`~engine.errors.UserError` subclasses, one line each.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.data.build.builder import build_shards
from engine.data.build.options import BuildOptions
from engine.data.shards.manifest import Manifest, load_manifest
from engine.data.sources.classes import load_classes
from engine.data.sources.pairing import pair_by_glob
from engine.evaluate.metrics import metrics_from_confusion
from engine.evaluate.shard_eval import check_class_count, evaluate_split
from engine.export.onnx import export_onnx
from engine.infer.run import PredictOptions, predict_file
from engine.train.config import load_config
from engine.train.config_types import Config
from engine.train.export import load_exported
from engine.train.loop import TrainResult
from engine.train.loop import train as train_loop

__all__ = [
    "BuildOptions",
    "PredictOptions",
    "build",
    "evaluate",
    "export_onnx",
    "predict_file",
    "train",
]


def build(
    images: str,
    masks: str,
    classes: str | Path,
    out: str | Path,
    options: BuildOptions | None = None,
    **pairing: str,
) -> Manifest:
    """Pair images with masks, build shards into ``out`` and return their manifest.

    Args:
        images: Glob of the image files (``**`` allowed; any format of
            :mod:`engine.data.sources.formats`).
        masks: Glob of the mask files.
        classes: The classes file (``terraseg inspect`` drafts one).
        out: A new folder, or an object-store URL (``s3://…``).
        options: Tile size, split, codec, workers … (defaults: :class:`BuildOptions`).
        **pairing: ``group_pattern``, ``image_key``, ``mask_key`` or ``mask_from``, as
            ``terraseg build``'s ``--group``, ``--image-key``, ``--mask-key``, ``--mask-from``.
    """
    pairs = pair_by_glob(images, masks, **pairing)
    build_shards(pairs, load_classes(classes), out, options or BuildOptions())
    return load_manifest(out)


def train(
    config: str | Path | Config,
    out: str | Path,
    overrides: Sequence[str] = (),
    resume: str | None = None,
) -> TrainResult:
    """Train as ``config`` says into the run folder ``out`` (one process; see docs/cluster.md).

    Args:
        config: A config file, a shipped config's name (``unet``, ``tiny-cpu``), or a
            :class:`~engine.train.config_types.Config`.
        out: The run folder (new, or an earlier run with ``resume``).
        overrides: ``key.path=value`` settings, as ``--set`` (``data.shards=…`` at least).
        resume: ``"latest"`` or a checkpoint folder to continue from.

    Returns:
        The final metrics (the best model's, on the test split when there is one) and the
        model; the best weights are in ``out/best``.
    """
    if not isinstance(config, Config):
        config = load_config(config, list(overrides))
    elif overrides:
        raise ValueError("overrides go with a config file or name, not a Config object")
    return train_loop(config, out, resume=resume)


def evaluate(model: str | Path, shards: str | Path, split: str = "test") -> dict[str, Any]:
    """Score a trained model (``RUN``, ``RUN/best`` or weights) on one split of ``shards``.

    Returns:
        The scores of ``terraseg evaluate``'s ``metrics.json``: ``miou``, ``mean_f1``,
        ``overall_accuracy``, ``kappa``, ``total`` and ``per_class`` (IoU, precision, recall,
        F1, support).
    """
    manifest = load_manifest(shards)
    exported = load_exported(model)
    check_class_count(int(exported.spec["num_classes"]), manifest, f"model {exported.path}")
    result = evaluate_split(exported.model, manifest, split, train_crop=exported.train_crop)
    confusion = result.confusion.cpu().numpy()
    return metrics_from_confusion(confusion, manifest.class_names)
