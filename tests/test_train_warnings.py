"""What the trainer tells the user: data warnings (once), one-line errors, launch/train.py."""

import csv
import importlib.util
import json
import shutil

import numpy as np
import pytest
import yaml
from conftest import CLASSES, COLOURS, REPO, build_scene_shards, build_tiny, tiny_args, tiny_config
from conftest import write_pair as write_png_pair

from engine.data.build.advice import split_warnings
from engine.data.shards.manifest import load_manifest
from engine.train.config import ConfigError, load_config
from engine.train.loop import train
from engine.train.preflight import best_choice_note, data_warnings

TINY = REPO / "launch/configs/tiny-cpu.yaml"


def train_script():
    spec = importlib.util.spec_from_file_location("train_script", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_warnings_for_good_data(synthetic_shards):
    # Its val split (18 tiles) has every class; its test split lacks some (warned: below).
    config = tiny_config(synthetic_shards, "data.test_split=")
    manifest = load_manifest(synthetic_shards)
    assert data_warnings(config, manifest) == [] and best_choice_note(config, manifest) is None
    assert not [w for w in split_warnings(manifest.data) if "val split" in w]


def write_two_tile_groups(root, without_blue=()):
    """4 groups of one 32x64 image (2 tiles of 32): red, green, and blue unless ``without_blue``."""
    rng = np.random.default_rng(0)
    for group in range(4):
        index = np.zeros((32, 64), np.int64)
        index[:, 32:] = 1
        if f"Tile {group}" not in without_blue:
            index[8:16, 8:16] = index[8:16, 40:48] = 2  # blue in both tiles
        image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        write_png_pair(root, f"Tile {group}", "part_0", image, np.array(COLOURS, np.uint8)[index])
    (root / "classes.yaml").write_text(yaml.safe_dump(CLASSES))


@pytest.mark.slow
def test_a_two_tile_val_split_without_a_train_class_warns_at_build_at_train_and_in_the_summary(
    tmp_path, capsys
):
    write_two_tile_groups(tmp_path / "all")
    val_groups = build_tiny(tmp_path / "all", tmp_path / "first")["splits"]["val"]["groups"]
    capsys.readouterr()
    write_two_tile_groups(tmp_path / "data", without_blue=val_groups)
    manifest = build_tiny(tmp_path / "data", tmp_path / "shards")
    assert manifest["splits"]["val"]["groups"] == val_groups  # the split follows the names
    assert manifest["splits"]["val"]["num_samples"] == 2
    gaps = "only 2 tiles (fewer than 8) and no pixels of 'blue', which train has"
    assert f"warning: the val split has {gaps}: training picks its best checkpoint on this " in (
        capsys.readouterr().err
    )
    args = ["--config", str(TINY), "--out", str(tmp_path / "run")]
    for override in tiny_args(tmp_path / "shards", "data.crop_size=32"):
        args += ["--set", override]
    assert train_script().main(args) == 0
    out, err = capsys.readouterr()
    warning = f"warning: val split 'val' has {gaps}: the best checkpoint (best/) is chosen on it"
    assert err.count(warning) == 1
    note = f"best checkpoint chosen on val split 'val', which has {gaps}"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["best_choice"] == note
    last = out.strip().splitlines()[-1]
    assert last.startswith("test: mIoU ") and last.endswith(f"; note: {note}")


def test_a_val_split_missing_a_train_class_warns_and_is_noted(synthetic_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    data = json.loads((shards / "dataset.json").read_text())
    pixels, names = data["class_pixels"], [c["name"] for c in data["classes"]]
    present = [i for i, n in enumerate(pixels["val"]) if n and pixels["train"][i]]
    gone, kept = present[0], present[1]
    pixels["val"][gone] = 0
    pixels["test"] = [n if i != kept else 0 for i, n in enumerate(pixels["train"])]
    (shards / "dataset.json").write_text(json.dumps(data))
    config, manifest = tiny_config(shards), load_manifest(shards)
    gap = f"no pixels of {names[gone]!r}, which train has"
    assert data_warnings(config, manifest) == [
        f"val split 'val' has {gap}: the best checkpoint (best/) is chosen on it, so that "
        "choice is weak; rebuild the shards with a larger --val (or more, smaller groups)",
        f"test split 'test' has no pixels of {names[kept]!r}, which train has: the final "
        "scores say nothing about them",
    ]
    note = f"best checkpoint chosen on val split 'val', which has {gap}"
    assert best_choice_note(config, manifest) == note
    built = split_warnings(manifest.data)  # what the builder says of such a build
    assert len(built) == 2 and built[0].startswith(f"the val split has {gap}: training picks")
    assert built[1].startswith(f"the test split has no pixels of {names[kept]!r}, which train")


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
    warnings = data_warnings(tiny_config(shards), load_manifest(shards))
    [warning] = [w for w in warnings if not w.startswith("test split 'test' has no pixels")]
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
    note = "no val split: best/ is the final model, not a chosen one"
    assert result.metrics["best_choice"] == note


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
