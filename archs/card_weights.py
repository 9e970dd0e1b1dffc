"""Loading a local pretrained-encoder file described by a weight card (:mod:`archs.cards`).

:func:`load_card_weights` does, in order:

1. Reads the file's tensor names and shapes without loading values: a safetensors header
   (its length bounded first), or a ``.pth``/``.pt`` file memory-mapped by
   ``torch.load(weights_only=True, mmap=True)`` (its size bounded first). A checkpoint
   holding the state dict under ``state_dict`` or ``model`` is read through.
2. Checks them against the card (:func:`check_card_file`): every tensor of
   :func:`archs.cards.card_layout` with its shape, the head optional, nothing else. The first
   difference is a one-line :class:`~archs.weights.PretrainedWeightsError` naming the file
   and the card.
3. Matches the dataset's bands to the card's by name (:mod:`archs.bands`) and builds the
   first convolution for the dataset's bands (:func:`adapt_first_conv`): a matched band
   copies its filters exactly, a band the weights lack starts from the mean filter,
   card bands the dataset lacks are dropped.
4. Loads every other encoder tensor strictly, and sets the model's input stage
   (:mod:`archs.input_stage`) to the card's scaling of the dataset's native values.

**New bands: the mean-filter rule.** With ``W_c`` the file's filters of card band ``c``
(``[out, k, k]``) and ``v_d = (std_d / divisor_c)²`` the variance that matched band ``d``
has at the first convolution (in the card's scaling), a band the weights lack gets

    F = W̄ · sqrt(t) / ‖W̄‖,   W̄ = mean over all card bands of W_c,
    t = mean over matched bands d of ‖W_c(d)‖² · v_d

Its input is the standardised ``z`` (variance 1), so with inputs independent across bands
and pixels it adds ``‖F‖² · 1 = t`` to the first convolution's output variance: as much as
an average matched band. The direction is the mean filter (what every band has in common).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .bands import BandMatch, match_bands
from .cards import WeightCard, card_layout, get_card
from .input_stage import InputAffine, card_affine
from .weights import PretrainedWeightsError

#: Largest ``.pth``/``.pt`` file read (ResNet-50 weights are 95 MB).
MAX_WEIGHT_FILE_BYTES = 2 << 30
#: Largest safetensors header read (ResNet-50's is about 30 kB).
MAX_HEADER_BYTES = 16 << 20
PTH_SUFFIXES = (".pth", ".pt")
NESTED_KEYS = ("state_dict", "model")


@dataclass(frozen=True)
class CardReport:
    """What :func:`load_card_weights` did.

    Attributes:
        card: The card's name.
        path: The weight file.
        match: How the dataset's bands map to the card's.
        loaded: Number of encoder tensors loaded from the file.
    """

    card: str
    path: Path
    match: BandMatch
    loaded: int

    def line(self) -> str:
        """The one-line report (bands matched, new and dropped; the file)."""
        return f"{self.match.report()}; {self.loaded} encoder tensors from {self.path}"


def _error(path: Path, card: WeightCard, problem: str) -> PretrainedWeightsError:
    return PretrainedWeightsError(f"{path}: not a {card.name} weight file: {problem}")


def _state_dict(value: Any, path: Path) -> Mapping[str, Any]:
    """The tensor mapping of a loaded ``.pth`` (a state dict, or a checkpoint holding one)."""
    if isinstance(value, Mapping):
        for key in NESTED_KEYS:
            if isinstance(value.get(key), Mapping):
                value = value[key]
                break
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise PretrainedWeightsError(
            f"{path}: not a state dict (a mapping of tensor names to tensors, or a checkpoint "
            f"holding one under {' or '.join(NESTED_KEYS)})"
        )
    return value


def _open_pth(path: Path) -> Mapping[str, torch.Tensor]:
    size = path.stat().st_size
    if size > MAX_WEIGHT_FILE_BYTES:
        raise PretrainedWeightsError(
            f"{path}: {size} bytes, over the {MAX_WEIGHT_FILE_BYTES}-byte limit for weight files"
        )
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # pickle, zip and unpickler-refusal errors alike
        problem = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise PretrainedWeightsError(
            f"{path}: cannot read as a torch state dict: {problem}"
        ) from error
    return _state_dict(value, path)


def _safetensors_layout(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with open(path, "rb") as handle:
        head = handle.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < length <= MAX_HEADER_BYTES:
        raise PretrainedWeightsError(
            f"{path}: not a safetensors file (header length {length}, limit {MAX_HEADER_BYTES})"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except Exception as error:  # SafetensorError, a Rust panic on garbage
        problem = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise PretrainedWeightsError(f"{path}: not a safetensors file ({problem})") from error


def read_weight_file(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[int, ...]], Any]:
    """``({name: shape}, opener)`` of a weight file; ``opener()`` returns the tensors.

    No tensor value is read here (safetensors: the header; ``.pth``: memory-mapped).

    Raises:
        PretrainedWeightsError: missing file, unknown suffix, too large, unreadable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: weight file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return _safetensors_layout(path), lambda: load_file(str(path))
    if suffix not in PTH_SUFFIXES:
        raise PretrainedWeightsError(
            f"{path}: a weight file must end in .safetensors, {' or '.join(PTH_SUFFIXES)}"
        )
    state = _open_pth(path)
    return {k: tuple(v.shape) for k, v in state.items()}, lambda: state


def _optional(card: WeightCard, key: str) -> bool:
    return key.startswith(card.head_prefixes) or key.endswith("num_batches_tracked")


def check_card_file(card: WeightCard, layout: Mapping[str, tuple[int, ...]], path: Path) -> None:
    """The file's names and shapes must be the card's (head and counters optional).

    Raises:
        PretrainedWeightsError: ``FILE: not a CARD weight file: N problem(s), first: ...``.
    """
    expected = card_layout(card.name)
    problems = [
        f"lacks {key} {list(shape)}"
        for key, shape in expected.items()
        if key not in layout and not _optional(card, key)
    ]
    for key, shape in layout.items():
        if key not in expected:
            problems.append(f"has unexpected tensor {key}")
        elif not key.startswith(card.head_prefixes) and tuple(shape) != expected[key]:
            wanted = list(expected[key])
            problems.append(f"{key} has shape {list(shape)}, the card expects {wanted}")
    if problems:
        count = f"{len(problems)} difference(s) from timm {card.timm_name}"
        raise _error(path, card, f"{count} with {len(card.bands)} bands, first: {problems[0]}")


@torch.no_grad()
def adapt_first_conv(
    weight: torch.Tensor, source: Sequence[int | None], variances: Sequence[float]
) -> torch.Tensor:
    """The first convolution for the dataset's bands (see the module docs' rule).

    Args:
        weight: The file's ``[out, card bands, k, k]`` weight.
        source: Per dataset band, its card band index, or None (a new band).
        variances: Per dataset band, its variance at the convolution's input in the card's
            scaling (used for matched bands only).

    Returns:
        ``[out, dataset bands, k, k]``: matched bands' filters copied exactly.
    """
    weight = weight.float()
    mean_filter = weight.mean(dim=1)
    energies = weight.square().sum(dim=(0, 2, 3))  # ‖W_c‖² per card band
    matched = [(i, v) for i, v in zip(source, variances) if i is not None]
    target = sum(float(energies[i]) * v for i, v in matched) / max(len(matched), 1)
    norm = float(mean_filter.norm())
    new_filter = mean_filter * (math.sqrt(target) / norm) if norm > 0 else mean_filter * 0
    columns = [weight[:, i] if i is not None else new_filter for i in source]
    return torch.stack(columns, dim=1)


def _encoder_state(
    encoder: nn.Module, card: WeightCard, tensors: Mapping[str, torch.Tensor], conv: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The encoder's new state: the file's tensors, the adapted first conv, counters kept."""
    state = {}
    for key, current in encoder.state_dict().items():
        if key == card.first_conv:
            value = conv
        elif key in tensors:
            value = tensors[key]
        elif key.endswith("num_batches_tracked"):
            value = current
        else:
            raise PretrainedWeightsError(
                f"the model's encoder is not timm {card.timm_name} (weight card {card.name}): "
                f"it has {key}, which the card's file lacks"
            )
        if tuple(value.shape) != tuple(current.shape):
            raise PretrainedWeightsError(
                f"the model's encoder is not timm {card.timm_name} (weight card {card.name}): "
                f"{key} is {list(current.shape)}, the file's {list(value.shape)}"
            )
        state[key] = value
    unused = [k for k in tensors if k not in state and not _optional(card, k)]
    if unused:
        raise PretrainedWeightsError(
            f"the model's encoder is not timm {card.timm_name} (weight card {card.name}): "
            f"it lacks the file's {unused[0]}"
        )
    return state


def load_card_weights(
    model: nn.Module,
    card_name: str,
    path: str | os.PathLike[str],
    *,
    band_names: Sequence[str],
    band_means: Sequence[float],
    band_stds: Sequence[float],
) -> CardReport:
    """Load a card's weight file into a model's encoder and set its input stage.

    Args:
        model: A model with an ``encoder`` (a timm feature model) and an ``input_stage``
            (:class:`~archs.input_stage.InputAffine`), built with ``input_card=card_name``
            (e.g. ``unet_resnet18``).
        card_name: A registered card (:func:`archs.list_cards`).
        path: The local weight file (``.safetensors``, ``.pth``, ``.pt``).
        band_names: The dataset's band names in channel order.
        band_means: Their means in native units (the standardisation's).
        band_stds: Their standard deviations.

    Returns:
        The :class:`CardReport` (``report.line()`` is the one-line summary).

    Raises:
        PretrainedWeightsError: unknown card, a file that does not fit it, bands that do
            not match, or a model without that encoder or input stage; one line each.
    """
    try:
        card = get_card(card_name)
    except ValueError as error:
        raise PretrainedWeightsError(str(error)) from error
    encoder, stage = getattr(model, "encoder", None), getattr(model, "input_stage", None)
    if not isinstance(encoder, nn.Module) or not isinstance(stage, InputAffine):
        raise PretrainedWeightsError(
            f"weight card {card.name} needs a model with an encoder and an input stage "
            f"(build it with input_card={card.name!r}, e.g. unet_{card.timm_name})"
        )
    if getattr(model, "input_card", None) != card.name:
        raise PretrainedWeightsError(
            f"the model's input stage is for {getattr(model, 'input_card', None)!r}, "
            f"not weight card {card.name}"
        )
    path = Path(path).expanduser()
    layout, open_tensors = read_weight_file(path)
    check_card_file(card, layout, path)
    try:
        match = match_bands(card, list(band_names))
    except ValueError as error:
        raise PretrainedWeightsError(f"{path}: {error}") from error
    scale, shift = card_affine(card.offset, card.divisor, match.source, band_means, band_stds)
    variances = [s * s for s in scale]
    tensors = open_tensors()
    conv = adapt_first_conv(tensors[card.first_conv], match.source, variances)
    state = _encoder_state(encoder, card, tensors, conv)
    encoder.load_state_dict(state, strict=True)
    stage.set_(scale, shift)
    return CardReport(card.name, path, match, len(state))
