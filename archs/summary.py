"""Parameter counts, MACs and output shapes of the registered architectures.

Models are built and run on the ``meta`` device: no memory is allocated and no arithmetic is
done, so even ResUNet-a d7 at 512x512 is summarised in well under a second. MACs come from
``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications and
convolutions (including transposed ones) from tensor shapes; normalisation, activations,
pooling and interpolation are not counted. ``FLOPs = 2 * MACs``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ._registry import create_model, list_models, model_options


@dataclass(frozen=True)
class SummaryRow:
    """One architecture's summary at one input size.

    Attributes:
        arch: Registered name.
        options: Options the model was built with (besides the defaults).
        params: Total parameters.
        trainable: Parameters with ``requires_grad``.
        macs: Multiply-accumulates per image.
        input_shape: ``(C, H, W)`` of one image.
        output_shapes: ``{output name: (C, H, W)}``; ``"logits"`` for single-task models.
    """

    arch: str
    options: dict[str, Any]
    params: int
    trainable: int
    macs: int
    input_shape: tuple[int, int, int]
    output_shapes: dict[str, tuple[int, ...]]

    @property
    def gflops(self) -> float:
        """GFLOPs per image (``2 * MACs / 1e9``)."""
        return 2 * self.macs / 1e9


def summarize_model(
    name: str,
    *,
    num_classes: int = 8,
    size: int | tuple[int, int] = 512,
    in_channels: int = 3,
    device: str | torch.device = "meta",
    **options: Any,
) -> SummaryRow:
    """Summarise one architecture at one input size (batch of one image, eval mode).

    Args:
        name: Registered model name.
        num_classes: Number of classes.
        size: Input side, or ``(H, W)``.
        in_channels: Input channels.
        device: Where to build and run the model; ``meta`` (default) costs nothing.
        **options: Model options (never ``pretrained``/``weights`` on ``meta``).

    Returns:
        The summary row.
    """
    h, w = (size, size) if isinstance(size, int) else size
    with torch.device(device):
        model = create_model(name, num_classes, in_channels, **options)
    model.eval()
    x = torch.empty(1, in_channels, h, w, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(x)
    if isinstance(out, torch.Tensor):
        shapes = {"logits": tuple(out.shape[1:])}
    else:
        shapes = {k: tuple(v.shape[1:]) for k, v in out._asdict().items()}
    return SummaryRow(
        arch=name,
        options=dict(options),
        params=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=counter.get_total_flops() // 2,
        input_shape=(in_channels, h, w),
        output_shapes=shapes,
    )


def summarize(
    archs: list[str] | None = None,
    *,
    num_classes: int = 8,
    size: int | tuple[int, int] = 512,
    in_channels: int = 3,
    base_width: int | None = None,
) -> list[SummaryRow]:
    """Summarise several architectures (all registered ones by default).

    Args:
        archs: Model names; ``None`` for :func:`archs.list_models`.
        num_classes: Number of classes.
        size: Input side, or ``(H, W)``.
        in_channels: Input channels.
        base_width: Passed to the models that have a ``base_width`` option, ignored by others.

    Returns:
        One row per architecture.
    """
    rows = []
    for name in archs or list_models():
        opts: dict[str, Any] = {}
        if base_width is not None and "base_width" in model_options(name):
            opts["base_width"] = base_width
        rows.append(
            summarize_model(
                name, num_classes=num_classes, size=size, in_channels=in_channels, **opts
            )
        )
    return rows


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def format_table(rows: list[SummaryRow]) -> str:
    """Return the rows as a fixed-width text table."""
    header = ("arch", "options", "params", "trainable", "GMACs", "GFLOPs", "input", "outputs")
    lines = [header]
    for r in rows:
        if set(r.output_shapes) == {"logits"}:
            outputs = _shape(r.output_shapes["logits"])
        else:
            outputs = ", ".join(f"{k} {_shape(v)}" for k, v in r.output_shapes.items())
        lines.append(
            (
                r.arch,
                ",".join(f"{k}={v}" for k, v in r.options.items()) or "-",
                f"{r.params / 1e6:.2f}M",
                f"{r.trainable / 1e6:.2f}M",
                f"{r.macs / 1e9:.4g}",
                f"{r.gflops:.4g}",
                _shape(r.input_shape),
                outputs,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for i, line in enumerate(lines):
        cells = [
            c.ljust(wd) if j in (0, 1, 6, 7) else c.rjust(wd)
            for j, (c, wd) in enumerate(zip(line, widths))
        ]
        text.append("  ".join(cells).rstrip())
        if i == 0:
            text.append("  ".join("-" * wd for wd in widths))
    return "\n".join(text)


#: Options that fetch initial weights; irrelevant for a trained model's shape, and not
#: loadable on the ``meta`` device.
_INIT_OPTIONS = ("pretrained", "weights")


class RunSummaryError(ValueError):
    """A run folder has no readable ``model.json``; the message names the path."""


@dataclass(frozen=True)
class RunSummary:
    """A trained model's summary, from its ``model.json`` (and ``dataset.json``).

    Attributes:
        folder: The export folder holding ``model.json``.
        spec: ``model.json``: ``{"arch", "num_classes", "in_channels", "options"}`` (and the
            input ``bands``/``rgb_bands`` in exports that record them).
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
    path = Path(path)
    candidates = [path.parent] if path.is_file() else [path, path / "best"]
    for folder in candidates:
        if (folder / "model.json").is_file():
            return folder
    if not path.exists():
        raise RunSummaryError(f"{path}: no such run folder")
    raise RunSummaryError(f"{path}: no model.json here or in {path / 'best'}; not a run folder?")


def _safetensors_values(path: Path) -> int | None:
    """Total numbers in a safetensors file, from its header (the tensors are not read)."""
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    total = 0
    for name, info in header.items():
        if name != "__metadata__":
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            total += count
    return total


def summarize_run(path: str | Path, size: int | tuple[int, int] = 512) -> RunSummary:
    """Summarise the trained model of a run folder (``RUN``, ``RUN/best`` or its weights).

    Args:
        path: The run, its export folder, or its ``model.safetensors``.
        size: Input side, or ``(H, W)``, for MACs and output shapes.

    Returns:
        The summary, built with the run's arch, classes, in_channels and options.

    Raises:
        RunSummaryError: naming the file when ``model.json`` is missing or malformed.
    """
    folder = find_export(path)
    where = folder / "model.json"
    try:
        spec = json.loads(where.read_text())
        arch, num_classes = spec["arch"], int(spec["num_classes"])
        in_channels = int(spec.get("in_channels", 3))
        options = dict(spec.get("options") or {})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunSummaryError(f"{where}: not a model description ({error})") from error
    if arch not in list_models():
        raise RunSummaryError(f"{where}: unknown architecture {arch!r}")
    options = {k: v for k, v in options.items() if k not in _INIT_OPTIONS}
    row = summarize_model(
        arch, num_classes=num_classes, size=size, in_channels=in_channels, **options
    )
    with torch.device("meta"):
        model = create_model(arch, num_classes, in_channels, **options)
    expected = sum(t.numel() for t in model.state_dict().values())
    names: list[str] = []
    dataset = folder / "dataset.json"
    if dataset.is_file():
        try:
            classes = json.loads(dataset.read_text()).get("classes") or []
            names = [c["name"] if isinstance(c, dict) else str(c) for c in classes]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            names = []
    try:
        stored = _safetensors_values(folder / "model.safetensors")
    except (OSError, ValueError, KeyError, struct.error) as error:
        raise RunSummaryError(f"{folder / 'model.safetensors'}: unreadable ({error})") from error
    return RunSummary(folder, spec, names, row, stored, expected)


def format_run(summary: RunSummary) -> str:
    """The run's model as text: what it is, its classes, and its table row."""
    spec = summary.spec
    options = ", ".join(f"{k}={v}" for k, v in (spec.get("options") or {}).items()) or "-"
    classes = f"{spec['num_classes']}"
    if summary.class_names:
        classes += f" ({', '.join(summary.class_names)})"
    lines = [
        f"trained model in {summary.folder}",
        f"arch: {spec['arch']}   in_channels: {spec.get('in_channels', 3)}   options: {options}",
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
