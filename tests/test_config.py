"""Config loading, overrides and validation; learning-rate schedules."""

import pytest

from engine.train.config import ConfigError, config_from_dict, load_config
from engine.train.optim import lr_factor

TINY = "launch/configs/tiny-cpu.yaml"


def test_overrides_parse_yaml_values_and_merge_free_form_options():
    config = load_config(TINY, ["optim.lr=3e-4", "train.compile=true", "model.options.depth=3"])
    assert config.optim.lr == 3e-4 and config.train.compile is True
    assert config.model.options == {"base_width": 8, "depth": 3}
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "unknown key 'optim.lrr'"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("optim.name=adam", "optim.name = 'adam'; choose from"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("data.batch_size=0", "data.batch_size must be a positive integer"),
        ("data.crop_size=100", "divisible by 32"),
        ("optim", "expected key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train\.epoch'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path("launch/configs").glob("*.yaml"))
    assert len(configs) >= 9
    for path in configs:
        load_config(path)


def test_schedules():
    config = load_config(TINY, ["schedule.warmup_steps=10"]).schedule
    assert [lr_factor(s, 110, config) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert lr_factor(10, 110, config) == 1.0 and lr_factor(109, 110, config) < 0.05
    config.name = "cosine"
    assert lr_factor(60, 110, config) == pytest.approx(0.5)
    config.name, config.step_size, config.gamma = "step", 20, 0.5
    assert [lr_factor(s, 110, config) for s in (10, 29, 30, 50)] == [1.0, 1.0, 0.5, 0.25]
