"""``terraseg``: dispatch ``terraseg SUBCOMMAND ARGS…`` to the subcommand's ``main(ARGS)``.

Each subcommand is a module of :mod:`engine.commands` imported only when it runs (so
``terraseg --help`` starts in a blink). The table below is the one list of subcommands.
"""

from __future__ import annotations

import importlib
import sys

import engine

#: subcommand → (module under engine.commands, one line of help), in the order of a project.
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect_masks", "list every mask colour/value with its share; draft classes"),
    "build": ("build_shards", "pack images and masks (or polygons) into webdataset shards"),
    "verify": ("verify_shards", "check every shard of a folder or URL against its manifest"),
    "train": ("train", "train a model on shards (under accelerate launch: every GPU)"),
    "evaluate": ("evaluate", "score a model on a shard split, or predictions against masks"),
    "export": ("export", "export a trained model to a self-contained ONNX file (QGIS Deepness)"),
    "predict": ("predict", "predict rasters of any size with the weighted sliding window"),
    "show": ("show", "draw masks, predictions and image | truth | prediction panels"),
    "summary": ("summary", "describe a trained model, or every network's size"),
    "plot": ("plot_history", "plot a run's history (loss, learning rate, mIoU)"),
    "configs": ("configs", "list the shipped experiment configs, or print one"),
    "synthetic": ("make_synthetic", "write a synthetic land-cover dataset (no download)"),
    "demo": ("demo", "the main job end to end on generated scenes, in a new folder"),
}


def usage() -> str:
    """The text of ``terraseg --help``."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: terraseg [--version] SUBCOMMAND [ARGS…]\n\n"
        "Semantic segmentation of remote-sensing imagery: shards, training, prediction.\n\n"
        "subcommands:\n" + "\n".join(lines) + "\n\n"
        "'terraseg SUBCOMMAND --help' shows each one's options and defaults.\n"
        "Training on every GPU of a node: accelerate launch -m engine.commands train …"
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``terraseg``: ``argv`` is everything after the program name.

    Returns:
        The subcommand's exit code (2 for an unknown subcommand).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"terraseg {engine.__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: unknown subcommand {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"engine.commands.{COMMANDS[name][0]}")
    sys.argv[0] = f"terraseg {name}"  # argparse names the program after it in usage lines
    return int(module.main(rest) or 0)
