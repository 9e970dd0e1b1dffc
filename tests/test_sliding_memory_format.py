"""Channels-last prediction: the same probabilities, and the model handed back as it came."""

import numpy as np
import torch

import archs
from engine.infer.sliding import SlidingOptions, predict_probabilities, rgb_normalization
from engine.infer.strips import memory_format_of

NORMALIZATION = rgb_normalization([0.4, 0.4, 0.4], [0.2, 0.2, 0.2])


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (80, 72, 3), dtype=np.uint8)


def _predict(model, channels_last: bool) -> np.ndarray:
    options = SlidingOptions(tile=32, overlap=0.25, batch_size=3, channels_last=channels_last)
    return predict_probabilities(
        model, _image(), num_classes=4, normalization=NORMALIZATION, options=options
    )


def test_channels_last_gives_the_probabilities_of_the_contiguous_run():
    torch.manual_seed(0)
    model = archs.create_model("resunet34", 4, 3, encoder="resnet10t",
                               decoder_channels=(16, 16, 8, 8, 8))  # fmt: skip
    plain = _predict(model, channels_last=False)
    fast = _predict(model, channels_last=True)
    assert np.abs(plain - fast).max() < 1e-5
    assert (plain.argmax(0) == fast.argmax(0)).mean() > 0.999


def test_the_model_keeps_its_memory_format_and_mode():
    model = archs.create_model("unet", 4, 3, base_width=4).train()
    assert memory_format_of(model) == torch.contiguous_format
    _predict(model, channels_last=True)
    assert memory_format_of(model) == torch.contiguous_format and model.training
    weight = next(p for p in model.parameters() if p.ndim == 4)
    assert weight.is_contiguous()
    model.to(memory_format=torch.channels_last)  # a model trained channels-last stays so
    _predict(model, channels_last=True)
    assert memory_format_of(model) == torch.channels_last
    model.eval()
    _predict(model, channels_last=False)
    assert memory_format_of(model) == torch.channels_last and not model.training
