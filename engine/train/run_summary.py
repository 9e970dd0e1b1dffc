"""A trained model described from its export: ``launch/summary.py RUN``.

The export's files are read as :func:`engine.train.export.load_exported` reads them
(:mod:`engine.train.export_check`: ``model.json`` size-capped and schema-checked, the
weights' header only), and the architecture is summarised on the ``meta`` device, so a
shared run folder costs no memory whatever it claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archs.summary import SummaryRow, format_table, summarize_model
from engine.errors import UserError
from engine.train.export import locate_export
from engine.train.export_check import (
    ExportError,
    check_spec,
    meta_model,
    read_object,
    read_weights_header,
)


class RunSummaryError(UserError):
    """A run folder has no readable ``model.json``; the message names the path."""


@dataclass(frozen=True)
class RunSummary:
    """A trained model's summary, from its ``model.json`` (and ``dataset.json``).

    Attributes:
        folder: The export folder holding ``model.json``.
        spec: ``model.json`` as checked: ``{"arch", "num_classes", "in_channels",
            "options"}`` (and the input ``bands``/``rgb_bands`` in exports that record them).
        class_names: From ``dataset.json`` when present, else empty.
        row: The architecture summary built with the spec.
        stored_values: Numbers held by ``model.safetensors`` (None without it).
        expected_values: Numbers in the rebuilt model's state dict (parameters + buffers).
    """

    folder: Path
    spec: dict[str, Any]
    class_names: list[str]
    row: SummaryRow
    stored_values: int | None
    expected_values: int


def find_export(path: str | Path) -> Path:
    """The folder holding ``model.json`` for ``RUN``, ``RUN/best`` or a ``.safetensors``.

    Raises:
        RunSummaryError: naming ``path`` when none is found.
    """
    try:
        return locate_export(path)[0]
    except ExportError as error:
        raise RunSummaryError(str(error)) from error


def _class_names(folder: Path) -> list[str]:
    """Class names from ``dataset.json``; none when it is absent or unreadable."""
    try:
        classes = read_object(folder / "dataset.json", "dataset manifest").get("classes")
    except ExportError:
        return []
    if not isinstance(classes, list):
        return []
    return [str(c.get("name", "?"))[:60] if isinstance(c, dict) else str(c)[:60] for c in classes]


def summarize_run(path: str | Path, size: int | tuple[int, int] = 512) -> RunSummary:
    """Summarise the trained model of a run folder (``RUN``, ``RUN/best`` or its weights).

    Args:
        path: The run, its export folder, or its ``model.safetensors``.
        size: Input side, or ``(H, W)``, for MACs and output shapes.

    Returns:
        The summary, built with the run's arch, classes, in_channels and options.

    Raises:
        RunSummaryError: naming the file when ``model.json`` or the weights' header is
            missing or malformed, or the options are refused by the registry.
    """
    folder = find_export(path)
    where = folder / "model.json"
    try:
        spec = check_spec(read_object(where, "model spec"), str(where))
        model = meta_model(spec, str(where))
        weights = folder / "model.safetensors"
        header = read_weights_header(weights) if weights.is_file() else None
    except ExportError as error:
        raise RunSummaryError(str(error)) from error
    expected = sum(t.numel() for t in model.state_dict().values())
    stored = None
    if header is not None:
        stored = 0
        for _, shape in header.values():
            count = 1
            for dim in shape:
                count *= dim
            stored += count
    row = summarize_model(
        spec["arch"],
        num_classes=spec["num_classes"],
        size=size,
        in_channels=spec["in_channels"],
        **spec["options"],
    )
    return RunSummary(folder, spec, _class_names(folder), row, stored, expected)


def format_run(summary: RunSummary) -> str:
    """The run's model as text: what it is, its classes, and its table row."""
    spec = summary.spec
    options = ", ".join(f"{k}={v}" for k, v in spec["options"].items()) or "-"
    classes = f"{spec['num_classes']}"
    if summary.class_names:
        classes += f" ({', '.join(summary.class_names)})"
    lines = [
        f"trained model in {summary.folder}",
        f"arch: {spec['arch']}   in_channels: {spec['in_channels']}   options: {options}",
        f"classes: {classes}",
    ]
    if spec.get("bands"):
        names = ", ".join(f"{b['name']} ({b['dtype']})" for b in spec["bands"])
        rgb = spec.get("rgb_bands")
        lines.append(f"bands: {names}   rgb_bands: {rgb if rgb is not None else 'none'}")
    if summary.stored_values is not None:
        match = "matches" if summary.stored_values == summary.expected_values else "DIFFERS from"
        lines.append(
            f"weights: {summary.stored_values:,} values in model.safetensors ({match} the "
            f"{summary.expected_values:,} of this architecture)"
        )
    return "\n".join(lines + ["", format_table([summary.row])])
