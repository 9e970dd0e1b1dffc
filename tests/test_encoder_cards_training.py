"""A weight card end to end: config, training a few steps, export, reload without the file."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_config
from test_encoder_cards import published_state, write
from test_multiband_training import _train_losses, write_v3_shards

import archs
from engine.train.config import ConfigError, load_config
from engine.train.config_check import check_model_options
from engine.train.export import load_exported
from engine.train.loop import train

CARD = "ssl4eo_s12_s2_resnet18_moco"
NAMES = ["B02", "B03", "B04", "B08"]


def s2_shards(tmp_path):
    shards = write_v3_shards(tmp_path / "shards", "uint16", bands=len(NAMES))
    manifest = json.loads((shards / "dataset.json").read_text())
    for record, name in zip(manifest["bands"], NAMES, strict=True):
        record["name"] = name
    (shards / "dataset.json").write_text(json.dumps(manifest))
    return shards


def card_config(shards, weights, *overrides):
    config = tiny_config(
        shards, "data.crop_size=32", "train.epochs=1", "train.steps_per_epoch=3",
        "train.log_every=1", "schedule.warmup_steps=1", "model.arch=unet_resnet18",
        f"model.weights.card={CARD}", f"model.weights.path={weights}", *overrides,
    )  # fmt: skip
    config.model.options = {"decoder_channels": [16, 16, 8, 8, 8]}
    return config


def test_a_card_trains_exports_and_reloads_without_the_weight_file(tmp_path, capsys):
    shards = s2_shards(tmp_path)
    state = published_state(CARD, head=False)
    weights = write(state, tmp_path / "resnet18_sentinel2_all_moco.pth")
    result = train(card_config(shards, weights), tmp_path / "run")
    out = capsys.readouterr().out
    report = f"weight card {CARD}: 4 of 4 bands matched (B02, B03, B04, B08)"
    assert out.count(report) == 1  # printed once
    losses = _train_losses(tmp_path / "run")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    spec = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    assert spec["options"]["input_card"] == CARD and "weights" not in spec["options"]
    weights.unlink()  # the export carries everything, the card's file is not read again
    exported = load_exported(tmp_path / "run")
    stage = exported.model.input_stage
    stds = [b.std for b in exported.normalization.bands]
    torch.testing.assert_close(stage.scale, torch.tensor(stds) / 10000)
    native = torch.randint(0, 10000, (2, 4, 64, 64)).to(torch.uint16)
    x = exported.normalization(native)
    trained = result.model.eval()
    with torch.no_grad():
        assert torch.equal(exported.model(x), trained(x))


def test_card_config_errors_are_one_line_config_errors(tmp_path):
    shards = s2_shards(tmp_path)
    with pytest.raises(ConfigError, match="unknown weight card 'nope'; known cards: imagenet"):
        tiny_config(shards, "model.weights.card=nope", "model.weights.path=x.pth")
    with pytest.raises(ConfigError, match=r"takes \{card: NAME, path: FILE\}"):
        tiny_config(shards, "model.weights.file=x.pth")
    config = tiny_config(shards, f"model.weights.card={CARD}", "model.weights.path=x.pth")
    with pytest.raises(ConfigError, match="'unet' cannot load one; use one of resunet34, unet_"):
        check_model_options(config)
    config = card_config(shards, "")
    with pytest.raises(ConfigError, match="model.weights.path is empty"):
        check_model_options(config)


def test_a_file_of_another_card_stops_training_before_the_run_folder(tmp_path):
    shards = s2_shards(tmp_path)
    weights = write(published_state("imagenet_resnet18", head=True), tmp_path / "r18.pth")
    with pytest.raises(ConfigError, match=f"model.weights: .*r18.pth: not a {CARD} weight file"):
        train(card_config(shards, weights), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_shipped_config_takes_the_path_by_set(tmp_path):
    config = load_config("unet_resnet18_ssl4eo", ["model.weights.path=/data/r18.pth"])
    assert config.model.weights == {"card": CARD, "path": "/data/r18.pth"}
    assert config.model.arch == "unet_resnet18" and archs.get_card(CARD).timm_name == "resnet18"
    plain = load_config("unet_resnet18_ssl4eo", ["model.weights=/data/timm-r18.safetensors"])
    assert plain.model.weights == "/data/timm-r18.safetensors"  # a path keeps today's meaning


def test_a_resumed_card_run_needs_the_weight_file_no_more(tmp_path, capsys):
    shards = s2_shards(tmp_path)
    weights = write(published_state(CARD, head=False), tmp_path / "r18.safetensors")
    first = card_config(shards, weights, "train.checkpoint_every=2", "train.stop_after_steps=2")
    with pytest.raises(SystemExit):
        train(first, tmp_path / "run")
    assert capsys.readouterr().out.count(f"weight card {CARD}:") == 1
    weights.unlink()  # the checkpoint holds the encoder and the input stage
    train(
        card_config(shards, weights, "train.checkpoint_every=2"), tmp_path / "run", resume="latest"
    )
    assert f"weight card {CARD}:" not in capsys.readouterr().out
    exported = load_exported(tmp_path / "run")
    assert exported.spec["options"]["input_card"] == CARD
    assert not torch.equal(exported.model.input_stage.scale, torch.ones(4))
