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
        ("optim.lr=-0.01", r"optim\.lr must be > 0, got -0\.01"),
        ("optim.lr=nan", r"optim\.lr must be > 0"),
        ("optim.betas=5", r"optim\.betas must be a list of numbers, got 5"),
        ("optim.betas=[0.9, 1.0]", r"optim\.betas must be two numbers in \[0, 1\)"),
        ("optim.betas=[0.9]", r"optim\.betas must be two numbers"),
        ("optim.weight_decay=-1e-4", r"optim\.weight_decay must be ≥ 0"),
        ("data.num_workers=-1", r"data\.num_workers must be ≥ 0, got -1"),
        ("data.crop_size=64.5", r"data\.crop_size must be an integer, got 64\.5"),
        ("train.max_bad_steps=0", "train.max_bad_steps must be a positive integer, got 0"),
        ("train.grad_accum=0", "train.grad_accum must be a positive integer"),
        ("train.steps_per_epoch=0", "train.steps_per_epoch must be a positive integer"),
        ("train.epochs=true", "train.epochs must be an integer, got True"),
        ("data.hflip=maybe", "data.hflip must be true or false, got 'maybe'"),
        ("data.hflip=yes", "data.hflip must be true or false, got 'yes'"),
        ("data.hflip=1", "data.hflip must be true or false, got 1"),
        ("model.arch=unet3", r"model\.arch = 'unet3' is not known; choose from \[.*'unet'.*\]"),
        ("loss.spec=ce+dise", r"loss\.spec = 'ce\+dise': unknown loss 'dise'"),
        ("seed=-1", r"seed must be ≥ 0, got -1"),
        ("seed=4294967296", r"seed must be at most 4294967295 \(NumPy seeds are 32-bit\)"),
        ("data.batch_size=4097", r"data\.batch_size must be at most 4096 .*got 4097"),
        ("data.eval_batch_size=100000", r"data\.eval_batch_size must be at most 4096"),
        ("data.crop_size=8224", r"data\.crop_size must be at most 8192 .*got 8224"),
        ("data.num_workers=129", r"data\.num_workers must be at most 128"),
        ("data.shuffle_buffer=16385", r"data\.shuffle_buffer must be at most 16384"),
        ("train.grad_accum=1025", r"train\.grad_accum must be at most 1024"),
        ("train.keep_checkpoints=1001", r"train\.keep_checkpoints must be at most 1000"),
        ("train.panels=65", r"train\.panels must be at most 64"),
        ("train.dist_timeout_s=100000000000000000000", r"dist_timeout_s must be at most 604800"),
        ("train.epochs=1000000000001", r"train\.epochs must be a positive integer \(at most"),
        ("train.epochs=many", r"train\.epochs must be an integer, got 'many'"),
        ("train.steps_per_epoch=-1", r"\(at most 1000000000000\) or auto, got -1"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_the_schedule_is_auto_unless_numbers_are_set_and_set_numbers_are_kept(tmp_path):
    from engine.train.config_types import Config

    assert (Config().train.epochs, Config().train.steps_per_epoch) == ("auto", "auto")
    assert load_config(TINY).train.epochs == "auto"  # the first config users run plans
    with pytest.raises(ValueError, match="planned when training starts"):
        _ = load_config(TINY).total_steps
    config = load_config(TINY, ["train.epochs=7", "train.steps_per_epoch=13"])
    assert (config.train.epochs, config.train.steps_per_epoch, config.total_steps) == (7, 13, 91)
    assert config_from_dict(load_config(TINY).to_dict()).train.steps_per_epoch == "auto"
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("train: {epochs: auto, steps_per_epoch: 9}\n")
    train = load_config(mixed).train
    assert (train.epochs, train.steps_per_epoch) == ("auto", 9)
    assert load_config("unet").total_steps == 100 * 500  # shipped recipes keep their numbers
    too_many = ["train.epochs=1000000000000", "train.steps_per_epoch=2"]
    with pytest.raises(ConfigError, match=r"train\.epochs × train\.steps_per_epoch must be at"):
        load_config(TINY, too_many)


def test_every_error_is_one_line_and_a_user_error():
    from engine.errors import UserError

    for override in ("optim.lr=-0.01", "optim.betas=5", "model.arch=nope", "data.hflip=maybe"):
        with pytest.raises(UserError) as caught:
            load_config(TINY, [override])
        assert "\n" not in str(caught.value), override


def test_the_largest_allowed_values_load():
    bounds = [
        "seed=4294967295", "data.batch_size=4096", "data.eval_batch_size=4096",
        "data.crop_size=8192", "data.num_workers=128", "data.shuffle_buffer=16384",
        "train.grad_accum=1024", "train.keep_checkpoints=1000", "train.panels=64",
        "train.dist_timeout_s=604800", "seed=0",
    ]  # fmt: skip
    config = load_config(TINY, bounds)
    assert (config.seed, config.data.batch_size, config.data.crop_size) == (0, 4096, 8192)


def test_yaml_1_1_booleans_are_text_for_text_fields(tmp_path):
    # YAML 1.1 reads no/off/yes/on as booleans: "train.mixed_precision = False" used to fail.
    assert load_config(TINY, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(TINY, ["name=off", "data.shards=001"]).name == "off"
    assert load_config(TINY, ["data.shards=001"]).data.shards == "001"  # not the number 1
    assert load_config(TINY, ["train.mixed_precision='bf16'"]).train.mixed_precision == "bf16"
    path = tmp_path / "c.yaml"
    path.write_text("name: yes\ntrain:\n  mixed_precision: no\ndata:\n  hflip: false\n")
    config = load_config(path)
    assert (config.name, config.train.mixed_precision, config.data.hflip) == ("yes", "no", False)
    path.write_text("name: true\n")
    with pytest.raises(ConfigError, match="c.yaml: name = true is read as a boolean.*'\"true\"'"):
        load_config(path)
    path.write_text("data:\n  vflip: on\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: data\.vflip must be true or false, got 'on'"):
        load_config(path)
    # A YAML 1.1 reader's False (e.g. from another tool) is "no" where "no" is a choice...
    assert config_from_dict({"train": {"mixed_precision": False}}).train.mixed_precision == "no"
    # ... and elsewhere refused with the quoting that fixes it.
    with pytest.raises(ConfigError, match="log.wandb = false is read as a boolean.*'\"false\"'"):
        config_from_dict({"log": {"wandb": False}})


def test_switching_to_a_multitask_arch_picks_the_multitask_loss():
    assert load_config(TINY).loss.spec == "ce+dice"
    config = load_config(TINY, ["model.arch=resuneta_d6_mtsk"])
    assert config.loss.spec == "multitask"
    back = load_config("launch/configs/resuneta_d6_mtsk.yaml", ["model.arch=unet"])
    assert back.loss.spec == "ce"
    # A loss set explicitly is kept (the trainer refuses the mismatch in one line).
    explicit = load_config(TINY, ["model.arch=resuneta_d6_mtsk", "loss.spec=ce+dice"])
    assert explicit.loss.spec == "ce+dice"


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
