"""The installed ``terraseg`` command: one entry point, every subcommand, shipped configs."""

import csv
import importlib
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import tiny_args
from launching import accelerate_command, run

import engine
from engine.commands.main import COMMANDS, main
from engine.configs import list_configs, resolve_config, shipped_config
from engine.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_every_subcommand_and_each_one_has_its_own_help(capsys):
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    for name, (module, _) in COMMANDS.items():
        assert f"  {name} " in listing
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: terraseg {name}"), (name, text[:80])
        assert callable(importlib.import_module(f"engine.commands.{module}").main)
    expected = {"inspect", "build", "train", "evaluate", "predict", "show", "summary", "plot"}
    assert expected | {"verify", "configs", "demo"} <= set(COMMANDS)


def test_version_comes_from_one_place(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"terraseg {engine.__version__}"
    assert version("terraseg") == engine.__version__  # pyproject reads engine.__version__


def test_an_unknown_subcommand_is_one_line(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown subcommand 'trian'") and "\n" not in err


def test_the_installed_script_and_the_module_run_the_same_program():
    script = shutil.which("terraseg", path=str(Path(sys.executable).parent))
    assert script, "the terraseg console script is not installed next to this python"
    for command in ([script, "--version"], [sys.executable, "-m", "engine.commands", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0 and done.stdout.strip() == f"terraseg {engine.__version__}"


def test_launch_scripts_are_thin_wrappers_over_the_subcommands():
    for path in sorted((REPO / "launch").glob("*.py")):
        text = path.read_text()
        assert f"from engine.commands.{path.stem} import main" in text, path.name
        code = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
        assert len(text.splitlines()) <= 15, f"{path.name} is more than a wrapper"
        assert code[-1] == 'if __name__ == "__main__":'


def test_shipped_configs_are_listed_printed_and_resolved_by_name(capsys, tmp_path):
    names = list_configs()
    assert {"tiny-cpu", "unet", "resunet34", "dubai/unet-cpu"} <= set(names)
    assert main(["configs"]) == 0 and "tiny-cpu" in capsys.readouterr().out
    assert main(["configs", "show", "resunet34"]) == 0
    assert capsys.readouterr().out == shipped_config("resunet34").read_text()
    assert main(["configs", "show", "nope"]) == 2
    assert load_config("tiny-cpu").model.options == {"base_width": 8}
    assert load_config("resunet34.yaml").model.arch == "resunet34"
    own = tmp_path / "unet"  # a file the user names wins over a shipped name
    own.write_text("model: {arch: unet, options: {base_width: 4}}\n")
    assert resolve_config(own) == own
    assert shipped_config("../pyproject") is None and shipped_config("/etc/passwd") is None


@pytest.mark.slow
def test_training_through_the_command_runs_ddp_on_two_processes(synthetic_shards, tmp_path):
    """``accelerate launch -m engine.commands train`` is the command on every GPU of a node."""
    run_dir = tmp_path / "run"
    args = ["train", "--config", "tiny-cpu", "--out", str(run_dir)]
    for override in tiny_args(synthetic_shards, "data.num_workers=1"):
        args += ["--set", override]
    run(accelerate_command("engine.commands", *args, module=True))
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys)), "a rank other than the main one wrote history"
    states = sorted((run_dir / "checkpoints").glob("step-*/trainer_state.json"))
    assert states and json.loads(states[-1].read_text())["world_size"] == 2
    assert (run_dir / "best" / "model.safetensors").is_file()
