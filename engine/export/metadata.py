"""The metadata an ONNX export carries (``ModelProto.metadata_props``), written and read back.

Every value is a JSON document (as the Deepness QGIS plugin reads them: ``json.loads`` of
each value). Two families of keys:

**Deepness** (PUTvision/qgis-plugin-deepness, "Adding metadata to ONNX model"):
``model_type`` ``"Segmentor"``; ``class_names`` ``{"0": name, ...}``; ``resolution`` in
cm/px (only when known: ``--resolution``); ``tiles_size`` (the documented name) and
``tile_size`` (the name the plugin's code reads) in pixels; ``tiles_overlap`` in percent;
``seg_thresh`` 0 (no probability threshold: the argmax, as ``terraseg predict``) and
``seg_small_segment`` 0 (no small-region filter); ``standardization_mean`` and
``standardization_std`` per input band.

The standardisation: Deepness turns a tile into ``(x / 255 - mean) / std`` before the
model sees it, whatever the layer's pixel type. The graph wants the native values ``x``
(its own normalisation is inside), so ``mean = 0`` and ``std = 1/255`` per band: Deepness's
preprocessing then hands the graph ``x`` back (exactly for integer bands, which the graph
rounds; within one float32 rounding step for float bands).

**terraseg** (``terraseg_*``, read by ``terraseg predict --model model.onnx``):
``terraseg_version``; ``terraseg_model`` (``model.json``: arch, options, classes count,
the model's bands with dtype, mean, std, display range and nodata); ``terraseg_dataset``
(the ``dataset.json`` fields prediction uses: classes with names, colours and values,
palette, ignore index/value); ``terraseg_input`` (the graph's input bands by name with their
records, layout, dtype and units, the model's ``size_divisor``, the fixed height/width or
``null`` when dynamic); ``terraseg_output`` (``probabilities`` or ``labels``);
``terraseg_window`` (tile and overlap fraction); ``terraseg_crs`` when the shards were
georeferenced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.data.shards.normalize import Normalization
from engine.errors import UserError
from engine.jsonfile import MetadataError, parse_json

#: The ``dataset.json`` fields an ONNX file keeps (what prediction reads from it).
DATASET_FIELDS = ("classes", "palette", "ignore_index", "ignore_value", "encoding")

#: Prediction's window edge when a network may take any input size (``terraseg predict``).
DEFAULT_TILE = 1024

#: Deepness's preprocessing divides by this before standardising.
DEEPNESS_SCALE = 255.0

#: Most classes and input bands a file may declare (archs' NUM_CLASSES/IN_CHANNELS ranges).
MAX_CLASSES, MAX_BANDS = 255, 1024


class OnnxMetadataError(UserError):
    """An ONNX file's metadata is missing, malformed or does not fit its graph."""


@dataclass(frozen=True)
class ExportSettings:
    """What an export records besides the model.

    Attributes:
        tile: Window edge for tiled prediction (Deepness ``tiles_size``).
        overlap: Window overlap fraction in ``[0, 1)``.
        output: ``"probabilities"`` or ``"labels"``.
        size_divisor: Input sides must be multiples of this.
        fixed_size: Height and width are fixed to ``tile`` (else dynamic).
        resolution_cm: Ground resolution in cm/px, or None when unknown.
        crs: The shards' CRS name, or None.
    """

    tile: int
    overlap: float
    output: str
    size_divisor: int
    fixed_size: bool
    resolution_cm: float | None = None
    crs: str | None = None


def input_records(normalization: Normalization, input_bands: list[str] | None) -> list[dict]:
    """The graph's input band records.

    The model's records, or for ``input_bands`` the model's record of each band it uses
    and a placeholder (the model's first dtype, no statistics) for the others.
    """
    if input_bands is None:
        return normalization.records()["bands"]
    known = {b.name: b.record() for b in normalization.bands}
    dtype = normalization.bands[0].dtype
    plain = {"dtype": dtype, "mean": 0.0, "std": 1.0, "display": [0.0, 1.0], "nodata": None}
    return [known.get(name, {"name": name, **plain}) for name in input_bands]


def build_metadata(
    spec: Mapping[str, Any],
    manifest: Mapping[str, Any],
    normalization: Normalization,
    input_bands: list[str] | None,
    settings: ExportSettings,
    version: str,
) -> dict[str, str]:
    """Every metadata key of an export → its JSON text (see the module notes)."""
    names = [str(c["name"]) if isinstance(c, Mapping) else str(c) for c in manifest["classes"]]
    records = input_records(normalization, input_bands)
    rgb: list[int] | None = None
    if normalization.rgb_bands is not None:
        rgb_names = [normalization.bands[i].name for i in normalization.rgb_bands]
        order = input_bands if input_bands is not None else normalization.names
        rgb = [order.index(name) for name in rgb_names]
    fixed = settings.tile if settings.fixed_size else None
    values: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(names)},
        "tiles_size": settings.tile,
        "tile_size": settings.tile,
        "tiles_overlap": int(round(settings.overlap * 100)),
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "standardization_mean": [0.0] * len(records),
        "standardization_std": [1.0 / DEEPNESS_SCALE] * len(records),
        "terraseg_version": version,
        "terraseg_model": {**dict(spec), **normalization.records()},
        "terraseg_dataset": {k: manifest[k] for k in DATASET_FIELDS if k in manifest},
        "terraseg_input": {
            "bands": records,
            "rgb_bands": rgb,
            "layout": "NCHW",
            "dtype": "float32",
            "units": "native: each band's own pixel values, never rescaled",
            "size_divisor": settings.size_divisor,
            "height": fixed,
            "width": fixed,
        },
        "terraseg_output": settings.output,
        "terraseg_window": {"tile": settings.tile, "overlap": settings.overlap},
    }
    if settings.resolution_cm is not None:
        values["resolution"] = float(settings.resolution_cm)
    if settings.crs:
        values["terraseg_crs"] = settings.crs
    return {key: json.dumps(value) for key, value in values.items()}


@dataclass(frozen=True)
class OnnxRecord:
    """What prediction reads back from an ONNX file's metadata.

    Attributes:
        spec: ``terraseg_model`` (arch, num_classes, options, the model's bands).
        manifest: ``terraseg_dataset`` (classes, palette, ...).
        input: The graph's input bands as a :class:`Normalization` (their names, dtypes,
            nodata; the statistics of bands the model does not use are placeholders).
        num_classes: Classes of the output.
        output: ``"probabilities"`` or ``"labels"``.
        tile: Window edge recorded at export.
        overlap: Window overlap fraction recorded at export.
        fixed_size: The graph's fixed height/width, or None when dynamic.
        size_divisor: Input sides must be multiples of this.
        version: The terraseg version that wrote the file.
    """

    spec: dict[str, Any]
    manifest: dict[str, Any]
    input: Normalization
    num_classes: int
    output: str
    tile: int
    overlap: float
    fixed_size: int | None
    size_divisor: int
    version: str


def _value(props: Mapping[str, str], key: str, where: str) -> Any:
    if key not in props:
        raise OnnxMetadataError(f"{where}: no '{key}' metadata (not a terraseg ONNX export?)")
    try:
        return parse_json(props[key], f"{where} metadata '{key}'")
    except MetadataError as error:
        raise OnnxMetadataError(str(error)) from error


def _whole(value: Any, key: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise OnnxMetadataError(f"{where}: metadata '{key}' must be an integer in {low}..{high}")
    return value


def read_metadata(props: Mapping[str, str], where: str) -> OnnxRecord:
    """Parse and check the ``terraseg_*`` metadata of an ONNX file (untrusted data).

    Raises:
        OnnxMetadataError: one line naming ``where`` and the key at fault.
    """
    spec, manifest = (
        _value(props, "terraseg_model", where),
        _value(props, "terraseg_dataset", where),
    )
    info, window = _value(props, "terraseg_input", where), _value(props, "terraseg_window", where)
    output, version = (
        _value(props, "terraseg_output", where),
        _value(props, "terraseg_version", where),
    )
    for key, value in (("terraseg_model", spec), ("terraseg_dataset", manifest),
                       ("terraseg_input", info), ("terraseg_window", window)):  # fmt: skip
        if not isinstance(value, dict):
            raise OnnxMetadataError(f"{where}: metadata '{key}' must be a JSON object")
    if output not in ("probabilities", "labels"):
        raise OnnxMetadataError(f"{where}: metadata 'terraseg_output' {output!r} is unknown")
    num_classes = _whole(spec.get("num_classes"), "num_classes", where, 1, MAX_CLASSES)
    classes = manifest.get("classes")
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise OnnxMetadataError(f"{where}: metadata classes do not list {num_classes} classes")
    bands = info.get("bands")
    if not isinstance(bands, list) or not 1 <= len(bands) <= MAX_BANDS:
        raise OnnxMetadataError(f"{where}: metadata input bands must be 1..{MAX_BANDS} records")
    try:
        normalization = Normalization.from_manifest(
            {"bands": bands, "rgb_bands": info.get("rgb_bands")}
        )
        Normalization.from_manifest(spec)
    except (KeyError, TypeError, ValueError) as error:
        raise OnnxMetadataError(
            f"{where}: metadata band records are malformed ({error!r})"
        ) from error
    tile = _whole(window.get("tile"), "tile", where, 1, 1 << 16)
    overlap = window.get("overlap")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise OnnxMetadataError(f"{where}: metadata window overlap must be in [0, 1)")
    fixed = info.get("height")
    fixed = None if fixed is None else _whole(fixed, "height", where, 1, 1 << 16)
    divisor = _whole(info.get("size_divisor", 1), "size_divisor", where, 1, 1 << 16)
    return OnnxRecord(spec, manifest, normalization, num_classes, output, tile, float(overlap),
                      fixed, divisor, str(version))  # fmt: skip
