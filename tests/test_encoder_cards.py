"""Weight cards: files in the published layouts (random values), checked, matched, loaded.

Files are written here as TorchGeo publishes the SSL4EO-S12 ResNets (timm ``resnet18`` /
``resnet50`` state dicts with a 13-band ``conv1`` and no ``fc``) and as timm publishes its
ImageNet weights (with the 1000-class ``fc``), as ``.pth`` and ``.safetensors``. Nothing
downloads.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import archs
from archs import card_weights
from archs.bands import band_key
from archs.cards import S2_ALL_BANDS, card_layout
from engine.data.shards.normalize import BandStats, Normalization

S2_CARD = "ssl4eo_s12_s2_resnet18_moco"
SMALL_DECODER = {"decoder_channels": (16, 16, 8, 8, 8)}


def published_state(card_name: str, *, head: bool, counters: bool = True, seed: int = 0):
    """A state dict in the card's published layout with random values."""
    card = archs.get_card(card_name)
    torch.manual_seed(seed)
    model = timm.create_model(card.timm_name, in_chans=len(card.bands))
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("fc.") and not head:
            continue
        if key.endswith("num_batches_tracked"):
            if counters:
                state[key] = torch.tensor(1000 + len(state))
            continue
        values = torch.randn(tensor.shape)
        state[key] = values.abs() + 0.5 if key.endswith("running_var") else values
    return state


def write(state: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def s2_bands(names, means=None, stds=None) -> Normalization:
    means = means or [1000.0 + 100 * i for i in range(len(names))]
    stds = stds or [300.0 + 50 * i for i in range(len(names))]
    return Normalization(
        tuple(
            BandStats(n, "uint16", m, s, (m - 2 * s, m + 2 * s))
            for n, m, s in zip(names, means, stds)
        ),
        None,
    )


def load(model, card, path, normalization):
    return archs.load_card_weights(
        model, card, path, band_names=normalization.names,
        band_means=[b.mean for b in normalization.bands],
        band_stds=[b.std for b in normalization.bands],
    )  # fmt: skip


# --- the cards ------------------------------------------------------------------------------


def test_the_registry_lists_the_cards_and_names_unknown_ones_in_one_line():
    names = archs.list_cards()
    assert names == sorted(names)
    assert {
        "imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50",
        "ssl4eo_s12_s2_resnet18_moco", "ssl4eo_s12_s2_resnet50_moco",
        "ssl4eo_s12_s2_resnet50_dino",
    } <= set(names)  # fmt: skip
    with pytest.raises(archs.UnknownCardError) as info:
        archs.get_card("satlas_resnet50")
    message = str(info.value)
    assert "\n" not in message and "'satlas_resnet50'" in message
    assert all(name in message for name in names)


def test_card_contents_follow_the_published_formats():
    s2 = archs.get_card(S2_CARD)
    assert s2.bands == S2_ALL_BANDS and len(s2.bands) == 13
    assert s2.bands.index("B8A") == s2.bands.index("B08") + 1  # TorchGeo's order
    assert s2.offset == (0.0,) * 13 and s2.divisor == (10000.0,) * 13
    assert s2.licence == "CC-BY-4.0" and s2.timm_name == "resnet18"
    imagenet = archs.get_card("imagenet_resnet50")
    assert imagenet.bands == ("red", "green", "blue") and imagenet.licence == "Apache-2.0"
    # (x/255 - mean)/std == (x - 255 mean)/(255 std)
    x = 200.0
    expected = (x / 255 - 0.485) / 0.229
    assert math.isclose((x - imagenet.offset[0]) / imagenet.divisor[0], expected)


def test_layout_is_timm_s_with_the_card_s_band_count():
    layout = card_layout("ssl4eo_s12_s2_resnet50_dino")
    assert layout["conv1.weight"] == (64, 13, 7, 7)
    assert layout["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert layout["fc.weight"] == (1000, 2048)
    assert card_layout("imagenet_resnet34")["conv1.weight"] == (64, 3, 7, 7)


# --- checking a file against its card -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("layer2.0.bn1.running_mean"), "lacks layer2.0.bn1.running_mean"),
        (
            lambda s: s.update({"conv1.weight": torch.zeros(64, 12, 7, 7)}),
            r"conv1.weight has shape \[64, 12, 7, 7\], the card expects \[64, 13, 7, 7\]",
        ),
        (lambda s: s.update({"decoder.0.weight": torch.zeros(2)}), "unexpected tensor decoder"),
        (
            lambda s: s.update({"layer1.0.convX.weight": s.pop("layer1.0.conv1.weight")}),
            "2 difference.*first: lacks layer1.0.conv1.weight",
        ),
    ],
)
def test_a_file_that_is_not_the_card_s_is_refused_naming_file_card_and_key(
    tmp_path, suffix, change, message
):
    state = published_state(S2_CARD, head=False)
    change(state)
    path = write(state, tmp_path / f"w{suffix}")
    model = archs.create_model("unet_resnet18", 2, 4, input_card=S2_CARD, **SMALL_DECODER)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(archs.PretrainedWeightsError, match=message) as info:
        load(model, S2_CARD, path, s2_bands(["B02", "B03", "B04", "B08"]))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: not a {S2_CARD} weight file")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_a_resnet50_file_is_not_a_resnet18_card_s(tmp_path):
    path = write(published_state("ssl4eo_s12_s2_resnet50_moco", head=False), tmp_path / "w.pth")
    model = archs.create_model("unet_resnet18", 2, 4, input_card=S2_CARD, **SMALL_DECODER)
    with pytest.raises(archs.PretrainedWeightsError, match=r"difference\(s\) from timm resnet18"):
        load(model, S2_CARD, path, s2_bands(["B02", "B03", "B04", "B08"]))


def test_unreadable_oversized_and_misnamed_files_are_one_line_errors(tmp_path, monkeypatch):
    model = archs.create_model("unet_resnet18", 2, 4, input_card=S2_CARD, **SMALL_DECODER)
    bands = s2_bands(["B02", "B03", "B04", "B08"])
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(archs.PretrainedWeightsError, match="cannot read as a torch state dict"):
        load(model, S2_CARD, garbage, bands)
    bad_header = tmp_path / "w.safetensors"
    bad_header.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(archs.PretrainedWeightsError, match="not a safetensors file"):
        load(model, S2_CARD, bad_header, bands)
    good = write(published_state(S2_CARD, head=False), tmp_path / "good.pth")
    monkeypatch.setattr(card_weights, "MAX_WEIGHT_FILE_BYTES", good.stat().st_size - 1)
    with pytest.raises(archs.PretrainedWeightsError, match="over the .*-byte limit"):
        load(model, S2_CARD, good, bands)
    with pytest.raises(archs.PretrainedWeightsError, match="weight file not found"):
        load(model, S2_CARD, tmp_path / "missing.pth", bands)
    with pytest.raises(archs.PretrainedWeightsError, match="must end in .safetensors"):
        load(model, S2_CARD, good.rename(tmp_path / "w.bin"), bands)


def test_a_model_without_the_card_s_input_stage_or_encoder_is_refused(tmp_path):
    path = write(published_state(S2_CARD, head=False), tmp_path / "w.pth")
    bands = s2_bands(["B02", "B03", "B04", "B08"])
    plain = archs.create_model("unet_resnet18", 2, 4, **SMALL_DECODER)
    with pytest.raises(archs.PretrainedWeightsError, match="input_card='ssl4eo_s12_s2_"):
        load(plain, S2_CARD, path, bands)
    other = archs.create_model("unet_resnet34", 2, 4, input_card=S2_CARD, **SMALL_DECODER)
    with pytest.raises(archs.PretrainedWeightsError, match="encoder is not timm resnet18"):
        load(other, S2_CARD, path, bands)


# --- band matching ----------------------------------------------------------------------------


def test_sentinel2_ids_common_names_and_case_match():
    card = archs.get_card(S2_CARD)
    for names in (["B4", "B04", "red", "RED", "b04"], ["B8A", "nir08", "b8a", "B08A"]):
        assert len({band_key(n, card.sensor) for n in names}) == 1
    assert band_key("B8", card.sensor) != band_key("B8A", card.sensor)
    match = archs.match_bands(card, ["B02", "green", "b4", "nir", "nir08", "swir22"])
    assert match.source == (1, 2, 3, 7, 8, 12)
    imagenet = archs.get_card("imagenet_resnet18")  # band ids mean nothing off Sentinel-2
    assert archs.match_bands(imagenet, ["Blue", "B04", "red"]).source == (2, None, 0)


def test_ambiguous_and_unmatched_bands_are_errors():
    card = archs.get_card(S2_CARD)
    with pytest.raises(ValueError, match="'B04' and 'red' both match band B04"):
        archs.match_bands(card, ["B04", "red"])
    with pytest.raises(ValueError, match="none of the bands VV, VH matches"):
        archs.match_bands(card, ["VV", "VH"])


def test_report_says_which_bands_are_matched_new_and_dropped():
    match = archs.match_bands(archs.get_card(S2_CARD), ["B2", "B03", "red", "ndvi"])
    assert match.report() == (
        f"weight card {S2_CARD}: 3 of 4 bands matched (B2=B02, B03, red=B04); new, from the "
        "mean filter: ndvi; card bands dropped: B01, B05, B06, B07, B08, B8A, B09, B10, B11, B12"
    )


# --- loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_matched_filters_are_copied_exactly_and_every_other_tensor_strictly(tmp_path, suffix):
    state = published_state(S2_CARD, head=False, counters=suffix == ".pth")
    path = write(state, tmp_path / f"w{suffix}")
    names = ["B02", "B03", "B04", "B08", "ndvi"]
    normalization = s2_bands(names)
    model = archs.create_model("unet_resnet18", 2, 5, input_card=S2_CARD, **SMALL_DECODER)
    report = load(model, S2_CARD, path, normalization)
    conv = model.encoder.conv1.weight.detach()
    assert conv.shape == (64, 5, 7, 7)
    for channel, card_index in enumerate([1, 2, 3, 7]):
        assert torch.equal(conv[:, channel], state["conv1.weight"][:, card_index])
    encoder = model.encoder.state_dict()
    for key, value in state.items():
        if key != "conv1.weight":
            assert torch.equal(encoder[key], value), key
    assert report.match.new == ["ndvi"] and report.loaded == len(encoder)
    assert report.line().startswith(f"weight card {S2_CARD}: 4 of 5 bands matched")
    assert str(path) in report.line()


def test_a_new_band_starts_from_the_mean_filter_with_an_average_band_s_variance(tmp_path):
    state = published_state(S2_CARD, head=False)
    path = write(state, tmp_path / "w.pth")
    normalization = s2_bands(
        ["B03", "B11", "ndvi"], means=[900.0, 2000.0, 0.3], stds=[250.0, 800.0, 0.2]
    )
    model = archs.create_model("unet_resnet18", 2, 3, input_card=S2_CARD, **SMALL_DECODER)
    load(model, S2_CARD, path, normalization)
    new = model.encoder.conv1.weight.detach()[:, 2]
    mean_filter = state["conv1.weight"].mean(dim=1)
    cosine = torch.nn.functional.cosine_similarity(new.flatten(), mean_filter.flatten(), dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-6)
    # Measured, not recomputed: the first conv's output variance from each band alone, with
    # inputs at their variance at the conv (card scaling for matched bands, z for the new).
    torch.manual_seed(1)
    stage = model.input_stage
    conv = model.encoder.conv1

    def variance_from(channel: int) -> float:
        x = torch.zeros(64, 3, 32, 32)
        x[:, channel] = torch.randn(64, 32, 32) * stage.scale[channel]
        with torch.no_grad():
            return conv(x).var().item()

    matched = (variance_from(0) + variance_from(1)) / 2
    assert variance_from(2) == pytest.approx(matched, rel=0.05)


def test_input_stage_turns_the_standardised_bands_into_the_card_s_scaling():
    normalization = s2_bands(
        ["B02", "B08", "ndvi"], means=[1100.0, 2500.0, 0.3], stds=[400.0, 900.0, 0.2]
    )
    card = archs.get_card(S2_CARD)
    match = archs.match_bands(card, normalization.names)
    stage = archs.InputAffine(3)
    scale, shift = archs.input_stage.card_affine(
        card.offset, card.divisor, match.source,
        [b.mean for b in normalization.bands], [b.std for b in normalization.bands],
    )  # fmt: skip
    stage.set_(scale, shift)
    native = torch.randint(0, 10000, (2, 3, 8, 8)).to(torch.uint16)
    z = normalization(native)
    got = stage(z)
    torch.testing.assert_close(got[:, :2], native[:, :2].float() / 10000, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 2], z[:, 2])  # a band the card lacks keeps z


def test_imagenet_card_on_rgb_uint8_bands_gives_imagenet_normalisation(tmp_path):
    state = published_state("imagenet_resnet18", head=True)
    path = write(state, tmp_path / "resnet18.safetensors")
    normalization = Normalization(
        tuple(BandStats(n, "uint8", 120.0, 60.0, (0.0, 255.0)) for n in ("red", "green", "blue"))
    )
    model = archs.create_model("unet_resnet18", 2, 3, input_card="imagenet_resnet18").eval()
    report = load(model, "imagenet_resnet18", path, normalization)
    assert report.match.dropped == [] and report.match.new == []
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    native = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    expected = (native.float() / 255 - mean) / std
    torch.testing.assert_close(model.input_stage(normalization(native)), expected)
