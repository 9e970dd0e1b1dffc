"""Score a folder of predicted masks against a folder of true masks.

Files are paired by *key*, with the shard builder's rules
(:func:`engine.data.sources.pairing.file_key`): the path relative to its folder, folders
named like ``images``/``masks`` dropped, without the extension; a prediction's trailing
``_mask`` is dropped first, so its key is its image's (``predict.py``'s ``tile_07_mask.tif``
pairs with ``tile_07.png``). Names that differ in more pair with the builder's options:
``image_key`` (a regex on the prediction's key, which is its image's: the ``--image-key``
the shards were built with), ``mask_key`` (on the true mask's key) and ``mask_from`` (a
template turning the first into the second, e.g. ``'{key}_lbl'``); see
:mod:`engine.data.sources.pairing`. When the prediction folder holds ``*_mask.*`` files,
only those are read (``_color``/``_confidence``/``_overlay`` renderings are skipped).
Predictions are single-band class-index PNG/TIFF. True masks are class-index masks
(255 = ignore) unless a classes file is given, in which case its encoding (``rgb`` colours
or ``index`` values) is mapped to class indices like the shard builder does. Each pair is
read whole (masks are uint8, so a 20000x20000 pair needs ~0.8 GB).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.sources.classes import IGNORE_INDEX, ClassesFile, load_classes
from engine.data.sources.formats import is_raster
from engine.data.sources.imageio import read_mask_values
from engine.data.sources.pairing import file_key, mask_key_for
from engine.data.sources.rasters import read_index_mask
from engine.errors import UserError
from engine.evaluate.metrics import ConfusionMatrix
from engine.jsonfile import read_json

log = logging.getLogger(__name__)


class FolderEvalError(UserError):
    """Folders cannot be scored; the message names the files."""


@dataclass(frozen=True)
class Pairing:
    """Result of matching two folders.

    Attributes:
        pairs: ``(key, prediction, truth)`` sorted by key (the true mask's key).
        missing_truth_keys: ``(key, prediction)`` of predictions without a true mask, the
            key the true mask would have.
        missing_prediction_keys: ``(key, truth)`` of true masks without a prediction.
    """

    pairs: list[tuple[str, Path, Path]]
    missing_truth_keys: list[tuple[str, Path]]
    missing_prediction_keys: list[tuple[str, Path]]

    @property
    def missing_truth(self) -> list[Path]:
        """Predictions without a true mask."""
        return [path for _, path in self.missing_truth_keys]

    @property
    def missing_prediction(self) -> list[Path]:
        """True masks without a prediction."""
        return [path for _, path in self.missing_prediction_keys]


@dataclass(frozen=True)
class KeyRules:
    """How file names become pairing keys: the shard builder's options (module notes).

    Attributes:
        image_key: Regex on a prediction's key (its image's key): capture groups, joined.
        mask_key: Regex on a true mask's key.
        mask_from: Template turning a prediction's key into its true mask's key
            (fields ``{key}``, ``{stem}``, ``{folder}``).
    """

    image_key: str | None = None
    mask_key: str | None = None
    mask_from: str | None = None


def _key(path: Path, root: Path, pattern: str | None, what: str) -> str:
    stem = path.stem[: -len("_mask")] if what == "images" and path.stem.endswith("_mask") else None
    if stem is not None:
        path = path.with_name(stem + path.suffix)
    return file_key(path, root, pattern, what)


def _index(files: Iterable[Path], root: Path, pattern: str | None, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(files):
        key = _key(path, root, pattern, what)
        if key in found:
            raise FolderEvalError(f"{found[key]} and {path} both pair as {key!r}")
        found[key] = path
    return found


def pair_folders(
    pred_dir: str | Path,
    mask_dir: str | Path,
    recursive: bool = False,
    rules: KeyRules | None = None,
) -> Pairing:
    """Match predicted and true masks by key (see the module notes).

    Raises:
        FolderEvalError: for a missing folder or two files of one folder with one key.
        PairingError: when a key regex does not match a file's key, or ``mask_from`` is
            malformed (naming the file or the template).
    """
    rules = rules or KeyRules()
    pred_dir, mask_dir = Path(pred_dir), Path(mask_dir)
    for folder in (pred_dir, mask_dir):
        if not folder.is_dir():
            raise FolderEvalError(f"{folder}: folder not found")
    pattern = "**/*" if recursive else "*"
    preds = [p for p in pred_dir.glob(pattern) if is_raster(p) and p.is_file()]
    if any(p.stem.endswith("_mask") for p in preds):
        preds = [p for p in preds if p.stem.endswith("_mask")]
    truths = [p for p in mask_dir.glob(pattern) if is_raster(p) and p.is_file()]
    pred_index = _index(preds, pred_dir, rules.image_key, "images")
    truth_index = _index(truths, mask_dir, rules.mask_key, "masks")
    if rules.mask_from:
        wanted = {mask_key_for(k, rules.mask_from): p for k, p in pred_index.items()}
        if len(wanted) != len(pred_index):
            raise FolderEvalError(
                f"--mask-from {rules.mask_from!r} gives several predictions in {pred_dir} "
                "the same mask key; use {key} in the template"
            )
        pred_index = wanted
    pairs = [(k, pred_index[k], truth_index[k]) for k in sorted(pred_index) if k in truth_index]
    return Pairing(
        pairs,
        [(k, pred_index[k]) for k in sorted(pred_index) if k not in truth_index],
        [(k, truth_index[k]) for k in sorted(truth_index) if k not in pred_index],
    )


def read_manifest_json(path: str | Path) -> dict:
    """A ``dataset.json`` (or its shard folder's) as a mapping, read with the size cap.

    Raises:
        FolderEvalError: naming the file when it is missing, unreadable or not a mapping.
    """
    file = Path(path)
    file = file / "dataset.json" if file.is_dir() else file
    try:
        data = read_json(file)
    except FileNotFoundError as error:
        raise FolderEvalError(f"{file}: manifest not found") from error
    except OSError as error:
        raise FolderEvalError(f"{file}: not a readable dataset.json ({error})") from error
    if not isinstance(data, dict):
        raise FolderEvalError(f"{file}: not a dataset.json mapping")
    return data


def _num_classes(num_classes: int | None, manifest: Any, classes: ClassesFile | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    if classes is not None:
        return len(classes.classes)
    if manifest is not None:
        if not isinstance(manifest, dict):
            manifest = read_manifest_json(manifest)
        if not manifest.get("classes"):
            raise FolderEvalError("the manifest has no 'classes' list")
        return len(manifest["classes"])
    raise FolderEvalError("give num_classes, a manifest or a classes file")


def read_truth_mask(
    path: str | Path,
    classes: ClassesFile | None,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Read a true mask as uint8 class indices (``ignore_index`` = unscored).

    Args:
        path: The mask file.
        classes: How the mask encodes classes; ``None`` = it already holds class indices.
        num_classes: ``N``, to reject out-of-range indices.
        ignore_index: Value of unscored pixels.

    Raises:
        FolderEvalError: naming the file when values are unknown or out of range.
    """
    path = Path(path)
    if classes is None:
        mask = read_index_mask(path)
        bad = (mask >= num_classes) & (mask != ignore_index)
        if bad.any():
            raise FolderEvalError(
                f"{path}: values {np.unique(mask[bad])[:10].tolist()} are neither a class "
                f"(0..{num_classes - 1}) nor {ignore_index}; is this a colour mask? "
                "pass the classes file"
            )
        return mask
    values = read_mask_values(path, classes.encoding)
    found, inverse = np.unique(values, return_inverse=True)
    lookup = classes.lookup
    table = np.array([lookup.get(int(v), -1) for v in found], dtype=np.int16)
    if (table < 0).any():
        unknown = [classes.describe(int(v)) for v in found[table < 0]][:10]
        raise FolderEvalError(f"{path}: mask values {unknown} are not in {classes.path}")
    table[table == IGNORE_INDEX] = ignore_index
    return table.astype(np.uint8)[inverse.reshape(values.shape)]


#: How other names pair (the shard builder's options; the command's spelling).
KEY_OPTIONS = (
    "pair other names with --image-key/--mask-key REGEX (capture groups form the key; the "
    "prediction's key is its image's) or --mask-from TEMPLATE (e.g. '{key}_lbl'), as for the build"
)


def _unpaired(pairing: Pairing, pred_dir: str | Path, mask_dir: str | Path) -> FolderEvalError:
    """One line: the predictions without a true mask, the keys on both sides, the options."""
    if not pairing.missing_truth:
        return FolderEvalError(f"no predictions in {pred_dir} pair with masks in {mask_dir}")
    lonely = [f"{path} (key {key!r})" for key, path in pairing.missing_truth_keys[:5]]
    masks = [key for key, _ in pairing.missing_prediction_keys[:5]]
    return FolderEvalError(
        f"{len(pairing.missing_truth)} prediction(s) without a true mask in {mask_dir}: "
        f"{', '.join(lonely)}; unpaired true mask keys: {masks or 'none'}; {KEY_OPTIONS}"
    )


def evaluate_folders(
    pred_dir: str | Path,
    mask_dir: str | Path,
    num_classes: int | None = None,
    *,
    manifest: dict | str | Path | None = None,
    classes: ClassesFile | str | Path | None = None,
    ignore_index: int = IGNORE_INDEX,
    recursive: bool = False,
    require_all: bool = False,
    rules: KeyRules | None = None,
) -> np.ndarray:
    """Accumulate the confusion matrix of predicted vs true masks, paired by file name.

    Args:
        pred_dir: Folder of predicted class-index masks (``<stem>_mask.png|tif``).
        mask_dir: Folder of true masks.
        num_classes: ``N``; else taken from ``classes`` or ``manifest``.
        manifest: ``dataset.json`` contents, its path, or its shard folder.
        classes: A classes file (or its path) describing how true masks encode classes;
            without it true masks must hold class indices.
        ignore_index: True-mask value left out of the counts.
        recursive: Pair files in sub-folders too (keys keep the relative folder).
        require_all: Fail when some true mask has no prediction (otherwise logged).
        rules: Key regexes and template for names that differ (:class:`KeyRules`).

    Returns:
        int64 ``[N, N]`` counts, rows = truth, columns = prediction.

    Raises:
        FolderEvalError: naming the files when nothing pairs, a prediction has no true
            mask, sizes differ, or values are out of range.
    """
    if classes is not None and not isinstance(classes, ClassesFile):
        classes = load_classes(classes)
    n = _num_classes(num_classes, manifest, classes)
    pairing = pair_folders(pred_dir, mask_dir, recursive, rules)
    if pairing.missing_truth or not pairing.pairs:
        raise _unpaired(pairing, pred_dir, mask_dir)
    if pairing.missing_prediction:
        message = (
            f"{len(pairing.missing_prediction)} true mask(s) in {mask_dir} have no prediction "
            f"in {pred_dir}, e.g. {pairing.missing_prediction[0]}"
        )
        if require_all:
            raise FolderEvalError(message)
        log.warning(message)
    matrix = ConfusionMatrix(n, ignore_index=ignore_index, device="cpu")
    for _, pred_path, truth_path in pairing.pairs:
        pred = read_index_mask(pred_path)
        truth = read_truth_mask(truth_path, classes, n, ignore_index)
        if pred.shape != truth.shape:
            raise FolderEvalError(
                f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but {truth_path} is "
                f"{truth.shape[1]}x{truth.shape[0]} (WxH)"
            )
        if pred.max(initial=0) >= n:
            bad = np.unique(pred[pred >= n])[:10].tolist()
            raise FolderEvalError(
                f"{pred_path}: predicted values {bad} are not classes (0..{n - 1}); "
                "predictions must hold class indices (predict.py --values index)"
            )
        matrix.update(torch.from_numpy(pred), torch.from_numpy(truth))
    return matrix.matrix.numpy().astype(np.int64)
