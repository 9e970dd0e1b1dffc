"""Tests of pretrained / local weights for the timm backbones (offline, CPU)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import archs
from archs.weights import PretrainedWeightsError, hub_offline


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """Point the Hugging Face cache at an empty folder, so nothing is cached."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return cache


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_resunet_weights_file_reproduces_timm_encoder(tmp_path, suffix):
    torch.manual_seed(123)
    ref = timm.create_model("resnet10t", pretrained=False).eval()
    path = save_state_dict(ref, tmp_path / f"resnet10t{suffix}")

    torch.manual_seed(0)
    model = archs.create_model("resunet34", 4, encoder="resnet10t", weights=path).eval()
    torch.manual_seed(0)
    fresh = archs.create_model("resunet34", 4, encoder="resnet10t").eval()

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        got = model.encoder(x)
        other = fresh.encoder(x)
    assert len(got) == len(want) == 5
    for g, w, o in zip(got, want, other, strict=True):
        assert torch.equal(g, w)
        assert not torch.equal(o, w)  # without the file the features differ


def test_fcn_weights_file_loads_trunk_and_fc6_fc7(tmp_path):
    torch.manual_seed(7)
    ref = timm.create_model("vgg11", pretrained=False).eval()
    path = save_state_dict(ref, tmp_path / "vgg11.safetensors")

    model = archs.create_model("fcn8s", 3, backbone="vgg11", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pool5 = model.stage5(model.stage4(model.stage3(x)))
        assert torch.equal(pool5, ref.forward_features(x))
    assert torch.equal(model.fc6.weight, ref.pre_logits.fc1.weight)
    assert torch.equal(model.fc6.bias, ref.pre_logits.fc1.bias)
    assert torch.equal(model.fc7.weight, ref.pre_logits.fc2.weight)
    assert model.fc6.padding == (3, 3)  # no Caffe padding=100, 7x7 'same' instead


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "resnet34.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet34.safetensors"):
        archs.create_model("resunet34", 4, weights=missing)


def test_wrong_weights_file_names_the_path(tmp_path):
    path = save_state_dict(timm.create_model("resnet18"), tmp_path / "resnet18.pth")
    with pytest.raises(RuntimeError, match="resnet18.pth") as info:
        archs.create_model("resunet34", 4, encoder="resnet10t", weights=path)
    assert "resnet10t" in str(info.value)


def test_bad_suffix(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        archs.create_model("resunet34", 4, weights=path)


@pytest.mark.parametrize("name", ["resunet34", "fcn8s", "fcn32s"])
def test_pretrained_offline_fails_fast(name, monkeypatch, empty_hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE") as info:
        archs.create_model(name, 4, pretrained=True)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"took {elapsed:.1f} s"
    assert "weights=PATH" in str(info.value)


def test_pretrained_offline_fails_fast_in_a_fresh_process(tmp_path):
    """The real scenario: a new process, timm not imported yet (its import alone takes >1 s)."""
    code = (
        "import sys, time, archs\n"
        "start = time.perf_counter()\n"
        "try:\n"
        "    archs.create_model('fcn8s', 8, pretrained=True)\n"
        "except archs.PretrainedWeightsError as err:\n"
        "    print(f'{time.perf_counter() - start:.3f}', err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    elapsed, message = proc.stdout.split(" ", 1)
    assert float(elapsed) < 1.0, proc.stdout
    assert "HF_HUB_OFFLINE=1" in message and "timm/vgg16" in message


def test_pretrained_unreachable_hub_fails_fast(monkeypatch, empty_hf_cache):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    assert not hub_offline()
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="cannot be reached"):
        archs.create_model("resunet34", 4, encoder="resnet10t", pretrained=True)
    assert time.perf_counter() - start < 2.0


def test_pretrained_offline_uses_local_hf_cache(monkeypatch, empty_hf_cache):
    """Offline but cached: pretrained=True must load the cached file, not refuse."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    torch.manual_seed(5)
    ref = timm.create_model("resnet10t", pretrained=False).eval()
    save_state_dict(ref, snapshot / "model.safetensors")

    model = archs.create_model("resunet34", 4, encoder="resnet10t", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for g, w in zip(model.encoder(x), ref.forward_intermediates(x, intermediates_only=True)):
            assert torch.equal(g, w)


def test_pretrained_offline_other_tag_cached_still_fails(monkeypatch, empty_hf_cache):
    """A cached file of another tag is not the one timm would load: refuse, naming the repo."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = empty_hf_cache / "models--timm--resnet10t.other_tag" / "snapshots" / "abc"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"")
    hub_id = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    with pytest.raises(PretrainedWeightsError, match=hub_id):
        archs.create_model("resunet34", 4, encoder="resnet10t", pretrained=True)


def test_unet_has_no_pretrained_option():
    with pytest.raises(TypeError, match="valid options"):
        archs.create_model("resuneta_d6", 4, weights="x.pth")


def test_resunet34_with_13_bands_gets_timms_adapted_first_conv(tmp_path):
    """A local RGB resnet34 file on a 13-band model: timm adapts the first conv
    (``adapt_input_conv``: the RGB kernel repeated over the bands, scaled by 3/13); every
    other encoder tensor loads unchanged, and a 3-band model takes the file as it is."""
    from safetensors.torch import load_file
    from timm.models._manipulate import adapt_input_conv

    torch.manual_seed(34)
    path = save_state_dict(timm.create_model("resnet34"), tmp_path / "resnet34.safetensors")
    saved = load_file(str(path))
    rgb_kernel = saved["conv1.weight"]
    assert rgb_kernel.shape == (64, 3, 7, 7)

    multi = archs.create_model("resunet34", 4, 13, weights=path)
    first = multi.encoder.conv1.weight.detach()
    assert first.shape == (64, 13, 7, 7)
    assert torch.equal(first, adapt_input_conv(13, rgb_kernel.clone()))
    torch.testing.assert_close(first[:, :3], rgb_kernel * 3 / 13)  # what timm's rule means
    torch.testing.assert_close(first[:, 12], rgb_kernel[:, 0] * 3 / 13)
    assert torch.equal(multi.encoder.layer4[2].conv2.weight, saved["layer4.2.conv2.weight"])

    rgb = archs.create_model("resunet34", 4, 3, weights=path)
    for name, tensor in rgb.encoder.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert torch.equal(rgb.encoder.conv1.weight, rgb_kernel)
