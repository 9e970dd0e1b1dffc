"""Tests of the architecture registry and the networks (tiny variants, CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archs
from archs.layers import bilinear_kernel, init_bilinear_
from archs.resuneta import default_decoder_dilations
from archs.resuneta_blocks import PSPPooling
from archs.summary import format_table, summarize, summarize_model

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
EXPECTED = {
    "fcn8s",
    "fcn32s",
    "unet",
    "resunet34",
    "resuneta_d6",
    "resuneta_d6_mtsk",
    "resuneta_d7",
    "resuneta_d7_mtsk",
    "unet_resnet18",
    "unet_resnet34",
    "unet_resnet50",
}
# tiny but structurally complete variants of every registered model
TINY: dict[str, dict] = {
    "fcn8s": {"fc_width": 64},
    "fcn32s": {"fc_width": 64, "backbone": "vgg16_bn"},
    "unet": {"base_width": 8},
    "resunet34": {"encoder": "resnet10t", "decoder_channels": (32, 16, 16, 8, 8)},
    "resuneta_d6": {"base_width": 8},
    "resuneta_d6_mtsk": {"base_width": 8},
    "resuneta_d7": {"base_width": 8},
    "resuneta_d7_mtsk": {"base_width": 8},
    "unet_resnet18": {"decoder_channels": (16, 16, 8, 8, 8), "input_card": "imagenet_resnet18"},
    "unet_resnet34": {"decoder_channels": (16, 16, 8, 8, 8)},
    "unet_resnet50": {"decoder_channels": (16, 16, 8, 8, 8)},
}


def tiny(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return archs.create_model(name, NUM_CLASSES, **{**TINY[name], **extra})


def outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, archs.MultitaskOutput) else [out]


def check_output(name: str, out, batch: int, h: int, w: int) -> None:
    if name.endswith("_mtsk"):
        assert isinstance(out, archs.MultitaskOutput)
        assert out._fields == ("segmentation", "boundary", "distance", "colour")
        for t in (out.segmentation, out.boundary, out.distance):
            assert t.shape == (batch, NUM_CLASSES, h, w)
        assert out.colour.shape == (batch, 3, h, w)
    else:
        assert isinstance(out, torch.Tensor)
        assert out.shape == (batch, NUM_CLASSES, h, w)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_names():
    assert set(archs.list_models()) == EXPECTED
    assert set(TINY) == EXPECTED
    assert archs.list_models() == sorted(archs.list_models())
    assert all(archs.is_model(n) for n in EXPECTED) and not archs.is_model("deeplab")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown architecture 'segformer'") as info:
        archs.create_model("segformer", 3)
    for name in EXPECTED:
        assert name in str(info.value)


def test_unknown_option_is_rejected_with_valid_options():
    with pytest.raises(TypeError, match="pretrained") as info:
        archs.create_model("unet", 3, pretrained=True)
    assert "base_width" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes"):
        archs.create_model("unet", bad, base_width=8)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = tiny(name).train()
    x = torch.randn(1, 3, 64, 96)
    out = model(x)
    check_output(name, out, 1, 64, 96)
    loss = sum(t.float().square().mean() for t in outputs(out))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_acceptance_shape(name):
    model = tiny(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 320))
    check_output(name, out, 1, 256, 320)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_channels_last_matches_contiguous(name):
    model = tiny(name).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = outputs(model(x))
        model = model.to(memory_format=torch.channels_last)
        got = outputs(model(x.contiguous(memory_format=torch.channels_last)))
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * r.abs().max().item())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bf16_autocast(name):
    # CPUs without native bf16 emulate it slowly: the FCN test uses the smaller VGG-11 trunk
    model = tiny(name, **({"backbone": "vgg11"} if name.startswith("fcn") else {})).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = outputs(model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    check_output(name, out, 1, 64, 64)
    seg = archs.segmentation_logits(out)
    assert seg.dtype == torch.bfloat16
    for r, g in zip(ref, outputs(out), strict=True):
        assert torch.isfinite(g).all()
        assert (g.float() - r).abs().max() <= 0.05 * r.abs().max() + 1e-3


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_size_not_multiple_of_divisor_raises(name):
    model = tiny(name).eval()
    assert model.size_divisor in (16, 32)
    with pytest.raises(ValueError, match="multiples of"):
        model(torch.randn(1, 3, 72, 96))  # 72 = 8 * 9
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 4, 64, 64))


def test_unet_accepts_multiples_of_16():
    model = tiny("unet").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 80, 48)).shape == (1, NUM_CLASSES, 80, 48)


def test_resuneta_d7_accepts_odd_multiples_of_32():
    # 96 = 3 * 32: the stride-64 level has ceil(96/64) = 2 cells and is upsampled back
    model = tiny("resuneta_d7").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 160)).shape == (1, NUM_CLASSES, 96, 160)


def test_in_channels():
    for name in ("unet", "resuneta_d6", "resunet34", "fcn32s"):
        model = tiny(name, in_channels=4).eval()
        with torch.no_grad():
            assert archs.segmentation_logits(model(torch.randn(1, 4, 64, 64))).shape[1] == 5


def test_multitask_helpers():
    single = tiny("resuneta_d6").eval()
    multi = tiny("resuneta_d6_mtsk").eval()
    assert not archs.is_multitask(single) and archs.is_multitask(multi)
    assert archs.is_multitask(torch.nn.DataParallel(multi))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = single(x)
        m = multi(x)
    assert archs.segmentation_logits(t) is t
    assert archs.segmentation_logits(m) is m.segmentation
    with pytest.raises(TypeError):
        archs.segmentation_logits({"segmentation": t})


def test_multitask_conditioning_order():
    """distance -> boundary -> segmentation; colour independent of the three."""
    model = tiny("resuneta_d6_mtsk").train()
    head = model.head
    x = torch.randn(2, 3, 64, 64)

    def grads_from(field):
        model.zero_grad(set_to_none=True)
        getattr(model(x), field).square().mean().backward()
        return {
            part: any(
                p.grad is not None and p.grad.abs().sum() > 0
                for p in getattr(head, part).parameters()
            )
            for part in ("distance", "boundary", "segmentation", "colour")
        }

    assert grads_from("segmentation") == {
        "distance": True,
        "boundary": True,
        "segmentation": True,
        "colour": False,
    }
    assert grads_from("boundary") == {
        "distance": True,
        "boundary": True,
        "segmentation": False,
        "colour": False,
    }
    assert grads_from("distance") == {
        "distance": True,
        "boundary": False,
        "segmentation": False,
        "colour": False,
    }
    assert grads_from("colour") == {
        "distance": False,
        "boundary": False,
        "segmentation": False,
        "colour": True,
    }


def test_multitask_outputs_are_logits_not_probabilities():
    model = tiny("resuneta_d6_mtsk").eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(10)  # push logits outside [0, 1]
        out = model(torch.randn(1, 3, 64, 64))
    for t in out:
        assert t.min() < 0 or t.max() > 1
    # distance/segmentation are not softmax outputs: channels do not sum to one
    assert not torch.allclose(out.distance.sum(1), torch.ones(1))


def test_fcn_upsampling_is_bilinear():
    conv = torch.nn.ConvTranspose2d(2, 2, 16, stride=8, padding=4, bias=False)
    init_bilinear_(conv)
    assert torch.equal(conv.weight[0, 1], torch.zeros(16, 16))
    assert torch.equal(conv.weight[1, 1], bilinear_kernel(16))
    x = torch.randn(1, 2, 6, 7)
    up = conv(x)
    ref = F.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    assert up.shape == ref.shape
    # identical away from the zero-padded border (half a cell = 4 px)
    torch.testing.assert_close(up[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4])
    model = tiny("fcn8s")
    for up_layer in (model.upscore2, model.upscore_pool4, model.upscore8):
        k = up_layer.weight.shape[-1]
        assert torch.equal(up_layer.weight[3, 3], bilinear_kernel(k))
        assert up_layer.weight[3, 2].abs().sum() == 0


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 7), (8, 8), (16, 24)])
def test_psp_pooling_any_size(hw):
    psp = PSPPooling(16, 8, depth=4).eval()
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        assert psp(x).shape == (2, 8, *hw)


def test_psp_grid_pooling_matches_adaptive_max_pool():
    from archs.resuneta_blocks import _grid_max_pool

    x = torch.randn(2, 3, 16, 24)
    for grid in (1, 2, 4, 8):
        torch.testing.assert_close(_grid_max_pool(x, grid), F.adaptive_max_pool2d(x, grid))


def test_default_decoder_dilations_layout():
    from archs.resuneta import D6_DILATIONS

    dec = default_decoder_dilations(D6_DILATIONS)
    assert dec == ((1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15, 31), (1, 3, 15), (1, 3, 15))
    model = tiny("resuneta_d6")
    # decoder modules run deepest first: 512-equivalent level first
    assert [b.dilations for b in model.decoder] == list(reversed(dec))


def count_on_meta(name: str, **options) -> int:
    with torch.device("meta"):
        model = archs.create_model(name, 8, **options)
    assert next(model.parameters()).device.type == "meta"
    return sum(p.numel() for p in model.parameters())


def test_resuneta_d6_param_count():
    n = count_on_meta("resuneta_d6")
    assert abs(n - 58e6) <= 0.05 * 58e6, n


def test_resuneta_d7_param_count():
    n = count_on_meta("resuneta_d7")
    assert abs(n - 184e6) <= 0.05 * 184e6, n


def test_other_param_counts():
    assert abs(count_on_meta("unet") - 31.04e6) < 0.05e6  # Ronneberger UNet with BN
    assert abs(count_on_meta("resunet34") - 24.4e6) < 0.1e6
    assert abs(count_on_meta("fcn8s") - 134.3e6) < 0.1e6


def test_torch_compile_fullgraph():
    model = archs.create_model("unet", NUM_CLASSES, base_width=4, depth=2)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled(x).square().mean().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    for a, b in zip(compiled_grads, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b)
    assert not archs.is_multitask(compiled)


def test_torch_export_multitask():
    model = tiny("resuneta_d6_mtsk").eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    got = exported.module()(x)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(archs.segmentation_logits(got), ref.segmentation)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_summary_rows():
    row = summarize_model("unet", num_classes=NUM_CLASSES, size=64, base_width=8)
    model = tiny("unet")
    assert row.params == sum(p.numel() for p in model.parameters())
    assert row.output_shapes == {"logits": (NUM_CLASSES, 64, 64)}
    # UNet is all convolutions: MACs scale exactly with the pixel count
    big = summarize_model("unet", num_classes=NUM_CLASSES, size=128, base_width=8)
    assert big.macs == 4 * row.macs > 0
    # first conv alone: 3 -> 8 channels, 3x3, 64x64 pixels
    assert row.macs > 3 * 8 * 9 * 64 * 64
    mt = summarize_model("resuneta_d6_mtsk", num_classes=NUM_CLASSES, size=64, base_width=8)
    assert mt.output_shapes["colour"] == (3, 64, 64)
    assert mt.output_shapes["distance"] == (NUM_CLASSES, 64, 64)


def test_summary_all_at_512_on_meta():
    rows = summarize(num_classes=8, size=512)
    assert [r.arch for r in rows] == archs.list_models()
    by = {r.arch: r for r in rows}
    assert abs(by["resuneta_d6"].params - 58e6) <= 0.05 * 58e6
    assert all(r.trainable == r.params and r.macs > 1e9 for r in rows)
    table = format_table(rows)
    assert "resuneta_d7_mtsk" in table and "colour 3x512x512" in table


def test_summary_script():
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch" / "summary.py"), "--arch", "resuneta_d6"]
        + ["--num-classes", "4", "--size", "64", "--base-width", "8", "--in-channels", "13"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "resuneta_d6" in proc.stdout and "4x64x64" in proc.stdout
    assert "base_width=8" in proc.stdout and "13x64x64" in proc.stdout  # a 13-band input


def test_summary_of_a_multiband_run_names_its_bands(tmp_path):
    from engine.data.shards.normalize import BandStats, Normalization
    from engine.train.export import save_exported
    from engine.train.run_summary import format_run, summarize_run

    bands = Normalization(
        tuple(BandStats(f"B{i}", "uint16", 900.0, 90.0, (100.0, 2000.0)) for i in range(5)),
        (3, 2, 1),
    )
    model = archs.create_model("unet", 2, 5, base_width=4, depth=2)
    spec = {"arch": "unet", "num_classes": 2, "in_channels": 5}
    spec |= {"options": {"base_width": 4, "depth": 2}, **bands.records()}
    manifest = {"classes": [{"name": "a", "color": "#000000"}, {"name": "b", "color": "#FFFFFF"}]}
    save_exported(tmp_path / "best", model, spec, {}, manifest | bands.records())
    text = format_run(summarize_run(tmp_path / "best", size=32))
    assert "in_channels: 5" in text and "5x32x32" in text
    assert "bands: B0 (uint16), B1 (uint16)" in text and "rgb_bands: [3, 2, 1]" in text
    assert "matches" in text
