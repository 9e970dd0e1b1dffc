"""terraseg networks behind one registry.

>>> import archs
>>> archs.list_models()
['fcn32s', 'fcn8s', 'resunet34', 'resuneta_d6', 'resuneta_d6_mtsk', 'resuneta_d7', ...]
>>> model = archs.create_model("unet", num_classes=8, base_width=32)

Pretrained encoders from local files are described by weight cards (:func:`archs.list_cards`,
:func:`archs.get_card`) and loaded with :func:`archs.load_card_weights` into a model built
with ``input_card=CARD`` (``unet_resnet18``/``34``/``50``, ``resunet34``).

Every model returns **logits**: a tensor ``[B, N, H, W]``, or for the multitask models
(``archs.is_multitask(model)``) an :class:`archs.MultitaskOutput` NamedTuple
``(segmentation, boundary, distance, colour)`` of logits (colour has 3 channels).
Losses and inference apply the activations (softmax for segmentation/distance, sigmoid for
boundary/colour). :func:`archs.segmentation_logits` returns the segmentation tensor of either
kind. Inputs must have sides that are multiples of ``model.size_divisor`` (32, UNet 16);
the output has the input's spatial size. Every option has a declared type and range
(:func:`archs.option_table`), checked before anything is built: a bad value is an
:class:`archs.ModelSpecError` (a ``ValueError``). See ``docs/archs.md``.
"""

from . import encoder_unet, fcn, resunet34, resuneta, unet  # noqa: F401  (registers them)
from ._registry import (
    IN_CHANNELS_RANGE,
    NUM_CLASSES_RANGE,
    WEIGHT_OPTIONS,
    check_model_args,
    check_options,
    create_model,
    is_model,
    list_models,
    model_entrypoint,
    model_options,
    option_table,
    register_model,
)
from .bands import BandMatch, match_bands
from .card_weights import CardReport, load_card_weights
from .cards import UnknownCardError, WeightCard, get_card, list_cards
from .input_stage import InputAffine
from .options import ModelSpecError, ModelSpecTypeError, Option
from .outputs import MultitaskOutput, is_multitask, segmentation_logits, unwrap_model
from .weights import PretrainedWeightsError

__all__ = [
    "IN_CHANNELS_RANGE",
    "NUM_CLASSES_RANGE",
    "WEIGHT_OPTIONS",
    "BandMatch",
    "CardReport",
    "InputAffine",
    "ModelSpecError",
    "ModelSpecTypeError",
    "MultitaskOutput",
    "Option",
    "PretrainedWeightsError",
    "UnknownCardError",
    "WeightCard",
    "check_model_args",
    "check_options",
    "create_model",
    "get_card",
    "is_model",
    "is_multitask",
    "list_cards",
    "list_models",
    "load_card_weights",
    "match_bands",
    "model_entrypoint",
    "model_options",
    "option_table",
    "register_model",
    "segmentation_logits",
    "unwrap_model",
]
