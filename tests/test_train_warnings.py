"""What the trainer tells the user: data warnings (once), one-line errors, launch/train.py."""

import csv
import importlib.util
import json
import shutil

import pytest
from conftest import REPO, build_scene_shards, tiny_args, tiny_config

from engine.data.shards.manifest import load_manifest
from engine.train.config import ConfigError, load_config
from engine.train.loop import train
from engine.train.preflight import data_warnings

TINY = REPO / "launch/configs/tiny-cpu.yaml"


def train_script():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_warnings_for_good_data(synthetic_shards):
    assert data_warnings(tiny_config(synthetic_shards), load_manifest(synthetic_shards)) == []


def test_a_crop_larger_than_the_tiles_is_refused_naming_both(synthetic_shards, tmp_path):
    config = tiny_config(synthetic_shards, "data.crop_size=128")
    with pytest.raises(ConfigError) as refused:
        train(config, tmp_path / "run")
    assert str(refused.value) == (
        f"data.crop_size = 128 is larger than the tiles of {synthetic_shards / 'dataset.json'} "
        "(tile_size 64): use --set data.crop_size=64 or less, or rebuild the shards with a "
        "--tile of at least 128"
    )
    assert not (tmp_path / "run").exists()
    train(tiny_config(synthetic_shards, "data.crop_size=64", "train.epochs=1"), tmp_path / "ok")


def test_classes_rare_in_train_but_present_in_val_or_test_warn(synthetic_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    manifest = json.loads((shards / "dataset.json").read_text())
    pixels = manifest["class_pixels"]
    # water absent from train, woodland at 0.007 % of it, road just above the 0.1 % line
    pixels["train"][4], pixels["train"][5] = 0, 9
    total = sum(pixels["train"]) - pixels["train"][2]
    pixels["train"][2] = int(total * 0.0011 / (1 - 0.0011)) + 1
    assert pixels["val"][4] > 0 and pixels["val"][5] > 0 and pixels["val"][2] > 0
    (shards / "dataset.json").write_text(json.dumps(manifest))
    [warning] = data_warnings(tiny_config(shards), load_manifest(shards))
    assert "but present in val/test: 'water' (0.000%), 'woodland' (0.007%);" in warning
    assert "'road'" not in warning


def test_no_val_split_warns_once_and_the_final_row_is_marked_best(
    synthetic_scenes, tmp_path, capsys
):
    shards = build_scene_shards(synthetic_scenes, tmp_path / "shards", val=0.0, test=0.2)
    assert not load_manifest(shards).has_split("val")
    result = train(tiny_config(shards), tmp_path / "run")
    err = capsys.readouterr().err
    assert err.count("warning: no validation split: best/ will be the final weights") == 1
    with open(tmp_path / "run" / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The best model is the final one: its test evaluation sits at the last step.
    assert [(r["step"], r["split"]) for r in rows if r["split"] != "train"] == [("8", "test@best")]
    assert result.metrics["split"] == "test" and result.metrics["best_step"] == -1


def test_shard_folder_is_required_and_a_missing_one_is_named(synthetic_shards, tmp_path):
    without = [o for o in tiny_args(synthetic_shards) if not o.startswith("data.shards=")]
    with pytest.raises(ConfigError, match=r"^data\.shards is not set: add --set data\.shards=DIR"):
        train(load_config(TINY, without), tmp_path / "run")
    missing = tmp_path / "no-such-shards"
    with pytest.raises(ConfigError, match=f"^data.shards = {missing}: no such folder$"):
        train(tiny_config(missing), tmp_path / "run")
    assert not (tmp_path / "run").exists(), "a refused run leaves no folder behind"


def test_a_loss_that_does_not_fit_the_model_is_one_line(synthetic_shards, tmp_path):
    config = tiny_config(synthetic_shards, "model.arch=resuneta_d6_mtsk", "loss.spec=ce+dice")
    with pytest.raises(ConfigError) as caught:
        train(config, tmp_path / "run")
    assert str(caught.value) == (
        "loss.spec = 'ce+dice' does not fit model.arch = 'resuneta_d6_mtsk' (a multitask "
        "model): add --set loss.spec=multitask"
    )
    assert not (tmp_path / "run").exists()


def test_train_script_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        train_script().main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--overwrite" in out and "(default: [])" in out  # switches and unset options show none


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=-0.01"], "optim.lr must be > 0, got -0.01"),
        (["optim.betas=5"], "--set 'optim.betas=5': optim.betas must be a list of numbers"),
        (["data.num_workers=-1"], "data.num_workers must be ≥ 0, got -1"),
        (["model.arch=unet2"], "model.arch = 'unet2' is not known; choose from ["),
        (["model.options.depthh=3"], "model.options ['depthh'] not accepted by 'unet'; it takes"),
        (["model.pretrained=true"], "model.pretrained is set but 'unet' has no encoder weights"),
        (["data.shards="], "data.shards is not set: add --set data.shards=DIR"),
        (["data.shards=/no/such/shards"], "data.shards = /no/such/shards: no such folder"),
        (["model.arch=resuneta_d6_mtsk", "loss.spec=dice"], "add --set loss.spec=multitask"),
        (["seed=4294967296"], "seed must be at most 4294967295 (NumPy seeds are 32-bit)"),
        (["data.batch_size=100000000"], "data.batch_size must be at most 4096 (samples per"),
        (["data.crop_size=20000"], "data.crop_size must be at most 8192 (pixels a side)"),
        (["data.crop_size=100000"], "data.crop_size must be at most 8192 (pixels a side)"),
        (["data.crop_size=100"], "data.crop_size must be divisible by 32, got 100"),
        (["data.eval_batch_size=5000"], "data.eval_batch_size must be at most 4096"),
        (["train.grad_accum=100000"], "train.grad_accum must be at most 1024"),
        (["data.num_workers=1000"], "data.num_workers must be at most 128"),
        # The tiles are known once the manifest is read, before the run folder is made.
        (["data.crop_size=128"], "data.crop_size = 128 is larger than the tiles of "),
    ],
)
def test_train_script_prints_one_line_errors_and_exits_2(
    synthetic_shards, tmp_path, capsys, overrides, message
):
    args = ["--config", str(TINY), "--out", str(tmp_path / "run")]
    for override in tiny_args(synthetic_shards, *overrides):
        args += ["--set", override]
    assert train_script().main(args) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "run").exists()


def test_run_folder_rules(tmp_path):
    from engine.train.preflight import RunDirError, check_run_dir, clear_run

    check_run_dir(tmp_path / "new", None, overwrite=False)  # missing: fine
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", None, overwrite=False)  # empty: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        check_run_dir(tmp_path / "file", None, overwrite=True)
    run = tmp_path / "run"  # a run stopped before its first history row
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    (run / "data.txt").write_text("not ours")
    with pytest.raises(RunDirError, match="holds a run already; add --resume latest"):
        check_run_dir(run, None, overwrite=False)
    check_run_dir(run, "latest", overwrite=False)
    check_run_dir(run, None, overwrite=True)
    clear_run(run)
    assert [p.name for p in run.iterdir()] == ["data.txt"]
    with pytest.raises(RunDirError, match="not empty and not a terraseg run"):
        check_run_dir(run, None, overwrite=True)
    with pytest.raises(RunDirError, match="not a terraseg run; nothing removed"):
        clear_run(run)
