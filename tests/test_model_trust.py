"""Model options and shared exports are checked before a network is built (issue #22).

Every registered option has a declared type and range; a ``model.json`` or weights file
from someone else is checked field by field, and its safetensors header against the
network built on the ``meta`` device, before a byte of the real network is allocated.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import archs
from archs.summary import format_option_table
from engine.errors import UserError
from engine.train.config import ConfigError, load_config
from engine.train.config_check import check_model_options
from engine.train.export import ExportError, load_exported, save_exported
from engine.train.run_summary import RunSummaryError, summarize_run

REPO = Path(__file__).resolve().parents[1]
MANIFEST = {
    "classes": [{"name": n, "color": "#000000"} for n in ("a", "b", "c")],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.2, 0.2, 0.2],
}
SPEC = {
    "arch": "unet",
    "num_classes": 3,
    "in_channels": 3,
    "options": {"base_width": 4, "depth": 2},
}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny, valid UNet export."""
    torch.manual_seed(0)
    model = archs.create_model("unet", 3, 3, base_width=4, depth=2).eval()
    return save_exported(tmp_path_factory.mktemp("run") / "best", model, SPEC, {}, MANIFEST)


def copy_export(export: Path, tmp_path: Path, spec: object = None) -> Path:
    best = tmp_path / "best"
    best.mkdir()
    for path in export.iterdir():
        (best / path.name).write_bytes(path.read_bytes())
    if spec is not None:
        (best / "model.json").write_text(json.dumps(spec))
    return best


def refused(best: Path, match: str) -> str:
    with pytest.raises(ExportError, match=match) as info:
        load_exported(best)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    return message


# --- the registry's declarations -------------------------------------------------------


def test_every_option_of_every_model_is_declared_and_its_default_passes():
    for name in archs.list_models():
        table = archs.option_table(name)
        assert list(table) == list(archs.model_options(name))
        archs.check_options(name, archs.model_options(name))


def test_a_model_registered_with_an_undeclared_option_is_a_bug_caught_at_import():
    def toy(num_classes, in_channels=3, *, width: int = 8, depth: int = 2):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match=r"undeclared \['depth'\]"):
        archs.register_model({"width": archs.Option(int, 1, 64)})(toy)
    with pytest.raises(ValueError, match="width=8 of toy is outside 16..64"):
        archs.register_model(
            {"width": archs.Option(int, 16, 64), "depth": archs.Option(int, 1, 4)}
        )(toy)
    assert not archs.is_model("toy")


@pytest.mark.parametrize("kind", [int, float, str])
def test_a_number_or_name_option_without_a_range_is_a_declaration_bug(kind):
    with pytest.raises(ValueError, match=rf"Option\({kind.__name__}\) needs low and high"):
        archs.Option(kind)
    with pytest.raises(ValueError, match="needs low and high"):
        archs.Option(kind, 1)
    assert archs.Option(kind, choices=(1,)).choices == (1,)
    assert archs.Option(bool).low is None


def test_every_shipped_config_passes_the_declarations():
    configs = sorted((REPO / "launch" / "configs").rglob("*.yaml"))
    checked = 0
    for path in configs:
        model = (yaml.safe_load(path.read_text()) or {}).get("model")
        if model:
            archs.check_options(model["arch"], model.get("options") or {})
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        (
            "unet",
            {"base_width": 4096},
            ValueError,
            "option base_width=4096 of unet is outside 1..512",
        ),
        (
            "unet",
            {"base_width": "64"},
            TypeError,
            "base_width='64' of unet must be an int, got str",
        ),
        ("unet", {"depth": True}, TypeError, "depth=True of unet must be an int, got bool"),
        ("unet", {"depth": 2.0}, TypeError, "depth=2.0 of unet must be an int, got float"),
        ("unet", {"bilinear": 1}, TypeError, "bilinear=1 of unet must be a bool, got int"),
        ("fcn8s", {"drop_rate": 1.5}, ValueError, "drop_rate=1.5 of fcn8s is outside 0.0..1.0"),
        ("fcn8s", {"drop_rate": float("nan")}, ValueError, "drop_rate=nan of fcn8s is outside"),
        ("fcn8s", {"backbone": "vgg16; rm -rf"}, ValueError, "must be a name of 1..64"),
        ("fcn8s", {"weights": 5}, TypeError, "weights=5 of fcn8s must be a file path, got int"),
        ("resunet34", {"decoder_channels": [16] * 4}, ValueError, "must have 5 items, got 4"),
        ("resunet34", {"decoder_channels": "16"}, TypeError, "must be a list, got str"),
        (
            "resunet34",
            {"head_kernel": 5},
            ValueError,
            "head_kernel=5 of resunet34 is not one of 1, 3",
        ),
        ("resuneta_d6", {"dilations": [[1] * 9] * 6}, ValueError, "must have 1..8 items, got 9"),
        (
            "resuneta_d7",
            {"psp_depth": 40},
            ValueError,
            "psp_depth=40 of resuneta_d7 is outside 1..6",
        ),
    ],
)
def test_out_of_range_or_wrong_typed_options_are_named_before_anything_is_built(
    name, options, error, message
):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        archs.create_model(name, 3, **options)
    assert isinstance(info.value, archs.ModelSpecError)


@pytest.mark.parametrize(
    ("num_classes", "in_channels", "message"),
    [
        (256, 3, "num_classes=256 of unet is outside 1..255"),
        (3, 1025, "in_channels=1025 of unet is outside 1..1024"),
        ("3", 3, "num_classes='3' of unet must be an int"),
    ],
)
def test_num_classes_and_in_channels_are_bounded(num_classes, in_channels, message):
    with pytest.raises(archs.ModelSpecError, match=message):
        archs.create_model("unet", num_classes, in_channels, base_width=4)


def test_a_network_too_large_in_total_is_refused_on_the_meta_device():
    """Each option in range, together absurd: counted on ``meta`` in milliseconds."""
    process = psutil.Process()
    before, start = process.memory_info().rss, time.perf_counter()
    with pytest.raises(
        archs.ModelSpecError, match=r"would hold 509,667 M parameters, over the limit"
    ):
        archs.create_model("unet", 3, base_width=512, depth=8)
    assert time.perf_counter() - start < 5
    assert process.memory_info().rss - before < 200 << 20


def test_the_config_check_names_the_option(tmp_path):
    config = load_config("launch/configs/tiny-cpu.yaml", ["model.options.base_width=4096"])
    with pytest.raises(
        ConfigError, match="model.options: option base_width=4096 of unet is outside 1..512"
    ):
        check_model_options(config)
    config = load_config("launch/configs/tiny-cpu.yaml", ["model.options.bilinear='yes'"])
    with pytest.raises(ConfigError, match="bilinear='yes' of unet must be a bool"):
        check_model_options(config)


def test_docs_table_is_the_registry():
    docs = (REPO / "docs" / "archs.md").read_text()
    assert format_option_table() in docs


# --- model.json ---------------------------------------------------------------------------


def test_base_width_4096_in_model_json_is_one_line_fast_and_small(export, tmp_path):
    best = copy_export(export, tmp_path, {**SPEC, "options": {"base_width": 4096}})
    process = psutil.Process()
    before, start = process.memory_info().rss, time.perf_counter()
    message = refused(best, "model.json: option base_width=4096 of unet is outside 1..512")
    assert time.perf_counter() - start < 5
    assert process.memory_info().rss - before < 200 << 20
    assert message.startswith(str(best / "model.json"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_classes": "6"}, "field num_classes must be an int in 1..255, got '6'"),
        ({"num_classes": True}, "field num_classes must be an int in 1..255, got True"),
        ({"in_channels": 4096}, "field in_channels must be an int in 1..1024, got 4096"),
        ({"options": []}, "field options must be a mapping, got list"),
        ({"arch": 5}, "field arch must be one of fcn32s, .*, got 5"),
        ({"arch": "deeplab"}, "field arch must be one of .*, got 'deeplab'"),
        (
            {"options": {"base_width": 4, "depthh": 2}},
            r"model .unet. does not accept option\(s\) \[.depthh.\]",
        ),
        ({"bands": {"red": 1}}, "field bands must be a list of band records"),
        ({"bands": [1, 2, 3]}, "field bands must be a list of band records"),
    ],
)
def test_wrong_types_in_model_json_are_one_line(export, tmp_path, change, message):
    refused(copy_export(export, tmp_path, {**SPEC, **change}), "model.json: " + message)


def test_model_json_that_is_not_an_object_or_too_large(export, tmp_path, monkeypatch):
    best = copy_export(export, tmp_path, [SPEC])
    refused(best, "model.json: model spec must be a JSON object, got list")
    (best / "model.json").write_text(json.dumps(SPEC) + " " * 5000)
    monkeypatch.setenv("TERRASEG_MAX_METADATA_BYTES", "4096")
    refused(best, "model.json: .* over the 4096-byte limit")


def test_weight_options_in_model_json_never_fetch_or_read_anything(tmp_path, monkeypatch):
    """``pretrained``/``weights`` only chose initial weights: loading leaves them out."""
    torch.manual_seed(0)
    options = {"encoder": "resnet10t", "decoder_channels": [8, 8, 8, 8, 8]}
    model = archs.create_model("resunet34", 3, 3, **options).eval()
    spec = {"arch": "resunet34", "num_classes": 3, "in_channels": 3, "options": options}
    best = save_exported(tmp_path / "best", model, spec, {}, MANIFEST)
    hostile = {**options, "pretrained": True, "weights": str(tmp_path / "no-such-file.pth")}
    (best / "model.json").write_text(json.dumps({**spec, "options": hostile}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_exported(best)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


# --- the weights -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("head.weight", lambda t: t.bool(), r"head.weight is BOOL, expected F32"),
        ("head.weight", lambda t: t.double(), r"head.weight is F64, expected F32"),
        (
            "head.weight",
            lambda t: t[:2],
            r"head.weight has shape \[2, 4, 1, 1\], expected \[3, 4, 1, 1\]",
        ),
        ("inc.0.weight", None, r"1 missing \(first: inc.0.weight\)"),
        ("extra", lambda t: torch.zeros(2), r"1 unexpected \(first: extra\)"),
    ],
)
def test_weights_that_differ_from_the_config_are_refused_before_building(
    export, tmp_path, name, make, message
):
    best = copy_export(export, tmp_path)
    state = load_file(best / "model.safetensors")
    if make is None:
        del state[name]
    else:
        state[name] = make(state.get(name, torch.zeros(1))).contiguous()
    save_file(state, best / "model.safetensors")
    refused(best, "model.safetensors: weights do not match unet .*" + message)


def test_a_header_claiming_a_huge_length_is_refused(export, tmp_path):
    best = copy_export(export, tmp_path)
    (best / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    refused(best, r"model.safetensors: safetensors header claims 4611686018427387904 bytes, over")
    (best / "model.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    refused(best, r"model.safetensors: not a safetensors file")
    (best / "model.safetensors").write_bytes(b"abc")
    refused(best, r"model.safetensors: not a safetensors file \(3 bytes\)")


def test_an_old_1x1_head_export_still_loads(tmp_path):
    """ResUNet-34's adaptation to the pre-#16 head happens on the meta network too."""
    torch.manual_seed(0)
    options = {"encoder": "resnet10t", "decoder_channels": [8, 8, 8, 8, 8]}
    old = archs.create_model("resunet34", 3, 3, head_kernel=1, **options).eval()
    spec = {"arch": "resunet34", "num_classes": 3, "in_channels": 3, "options": options}
    best = save_exported(tmp_path / "best", old, spec, {}, MANIFEST)
    loaded = load_exported(best)
    assert loaded.model.head.kernel_size == (1, 1)


def test_the_run_summary_checks_the_same_way(export, tmp_path):
    best = copy_export(export, tmp_path, {**SPEC, "options": {"base_width": 4096}})
    with pytest.raises(RunSummaryError, match="model.json: option base_width=4096 of unet"):
        summarize_run(best)
    (best / "model.json").write_text(json.dumps(SPEC))
    (best / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(RunSummaryError, match="header claims"):
        summarize_run(best)
