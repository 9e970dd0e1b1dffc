"""Parameter counts, MACs and output shapes of the registered architectures.

Models are built and run on the ``meta`` device: no memory is allocated and no arithmetic is
done, so even ResUNet-a d7 at 512x512 is summarised in well under a second. MACs come from
``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications and
convolutions (including transposed ones) from tensor shapes; normalisation, activations,
pooling and interpolation are not counted. ``FLOPs = 2 * MACs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ._registry import create_model, list_models, model_options, option_table


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


def format_option_table(names: list[str] | None = None) -> str:
    """The declared options of the architectures as a Markdown table (``docs/archs.md``).

    Architectures whose options are the same (``fcn8s`` and ``fcn32s``, ...) share rows.
    """
    groups: dict[tuple, list[str]] = {}
    for name in names or list_models():
        defaults = model_options(name)
        rows = tuple(
            (option, repr(defaults[option]), declared.describe())
            for option, declared in option_table(name).items()
        )
        groups.setdefault(rows, []).append(name)
    lines = ["| architectures | option | default | type and range |", "|---|---|---|---|"]
    for rows, members in groups.items():
        archs = ", ".join(f"`{m}`" for m in members)
        for option, default, described in rows:
            lines.append(f"| {archs} | `{option}` | `{default}` | {described} |")
    return "\n".join(lines)
