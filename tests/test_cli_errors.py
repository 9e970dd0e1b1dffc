"""The scripts as a user meets them: one-line errors, defaults in --help, quoted sbatch commands.

Every user-fixable problem ends as ``error: <one line>`` on stderr and exit code 2; the SLURM
scripts pass every value as its own argument, so nothing inside a path is ever executed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    """Load ``launch/<name>.py`` as a module (its ``main(argv)`` is called in-process)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fails(capsys, name: str, *argv: str) -> str:
    """Run a script that must refuse its input; return its one error line."""
    assert script(name).main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def help_text(capsys, name: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        script(name).main(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("predict", ["--tile TILE", "(default: 1024,", "(default: 0.25)", "(default: 16384)",
                     "(default: gaussian)", "(default: index)"]),
        ("evaluate", ["(default: test)", "(default: 4)", "(default: 2)", "(default: no)"]),
        ("show", ["(default: val)", "(default: 0)", "(default: 1024)", "(default: auto)"]),
        ("summary", ["(default: 8)", "(default: 512)", "(default: 3)"]),
        ("plot_history", ["(default: the run folder)"]),
        ("make_synthetic", ["(default: 4)", "(default: 3)", "(default: 512)", "(default: jpg)",
                            "(default: 0.1)"]),
    ],
)  # fmt: skip
def test_help_shows_the_defaults(capsys, name, expected):
    text = " ".join(help_text(capsys, name).split())
    for piece in expected:
        assert " ".join(piece.split()) in text, (name, piece)


def _tiny_run(tmp_path: Path) -> Path:
    import archs
    from engine.train.export import save_exported

    spec = {"arch": "unet", "num_classes": 3, "in_channels": 3, "options": {"base_width": 4}}
    model = archs.create_model("unet", 3, 3, base_width=4)
    manifest = {
        "classes": [{"name": n, "color": c} for n, c in
                    (("water", "#0000FF"), ("land", "#00FF00"), ("road", "#FF0000"))],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.2, 0.2, 0.2],
    }  # fmt: skip
    save_exported(tmp_path / "run" / "best", model, spec, {}, manifest)
    return tmp_path / "run"


def test_summary_of_a_run_describes_the_trained_model(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    import archs
    from archs.summary import summarize_model

    expected = summarize_model("unet", num_classes=3, size=64, base_width=4).params
    assert expected < archs.summary.summarize_model("unet", num_classes=3, size=64).params
    for target in (run, run / "best", run / "best" / "model.safetensors"):
        assert script("summary").main([str(target), "--size", "64"]) == 0
        out = capsys.readouterr().out
        assert "arch: unet" in out and "options: base_width=4" in out
        assert "classes: 3 (water, land, road)" in out and "(matches the" in out
        assert f"{expected / 1e6:.2f}M" in out and "3x64x64" in out
    assert "no such run folder" in fails(capsys, "summary", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "neither an export folder" in fails(capsys, "summary", str(tmp_path / "empty"))


def test_predict_bad_settings_are_one_line(tmp_path, capsys):
    run = _tiny_run(tmp_path)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "a.png")
    base = ["--model", str(run), "--input", str(tmp_path / "a.png"), "--no-progress"]
    out = ["--out", str(tmp_path / "out")]
    assert "not a device name" in fails(capsys, "predict", *base, *out, "--device", "gpu7")
    assert "tile must be >= 1" in fails(capsys, "predict", *base, *out, "--tile", "0")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.access(tmp_path / "ro", os.W_OK):  # running as root: permissions do not bind
            return
        err = fails(capsys, "predict", *base, "--out", str(tmp_path / "ro" / "sub"))
        assert f"--out {tmp_path / 'ro' / 'sub'}: cannot create the folder" in err
    finally:
        os.chmod(tmp_path / "ro", stat.S_IRWXU)


def test_show_index_past_the_end_and_short_shards(synthetic_shards, tmp_path, capsys):
    from engine.data.shards.manifest import load_manifest

    count = load_manifest(synthetic_shards).split("val").num_samples
    out = str(tmp_path / "x.png")
    err = fails(capsys, "show", "--shards", str(synthetic_shards), "--index", str(count),
                "--out", out)  # fmt: skip
    assert err == (
        f"error: --index {count}: the val split of {synthetic_shards} has {count} samples "
        f"(0..{count - 1})"
    )
    # A manifest that counts more samples than its shards hold (a truncated copy).
    copy = tmp_path / "shards"
    shutil.copytree(synthetic_shards, copy)
    data = json.loads((copy / "dataset.json").read_text())
    data["splits"]["val"]["shard_samples"][-1] += 3
    data["splits"]["val"]["num_samples"] = count + 3
    (copy / "dataset.json").write_text(json.dumps(data))
    err = fails(capsys, "show", "--shards", str(copy), "--index", str(count + 1), "--out", out)
    assert str(copy) in err
    (tmp_path / "folder.png").mkdir()
    err = fails(capsys, "show", "--shards", str(synthetic_shards), "--out",
                str(tmp_path / "folder.png"))  # fmt: skip
    assert "is a folder" in err
    assert not Path(out).exists()


def test_plot_history_and_make_synthetic_refuse_bad_outputs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("step,split,loss\n1,train,0.5\n")
    (tmp_path / "file").write_text("keep me")
    err = fails(capsys, "plot_history", str(run), "--out", str(tmp_path / "file"))
    assert err == f"error: --out {tmp_path / 'file'}: is a file, not a folder"
    assert "history file not found" in fails(capsys, "plot_history", str(tmp_path))

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    err = fails(capsys, "make_synthetic", "--out", str(mine), "--groups", "1", "--per-group", "1")
    assert "holds other files (notes.txt)" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert "is a file" in fails(capsys, "make_synthetic", "--out", str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "keep me"


# --- SLURM scripts -------------------------------------------------------------------------

STUBS = {
    # srun: drop its own options, then run the command on "this node".
    "srun": '#!/bin/bash\nwhile [[ $1 == -* ]]; do shift; done\nexec "$@"\n',
    "scontrol": "#!/bin/bash\n[[ $1 == show ]] && echo node-a\nexit 0\n",
    # accelerate: record every argument, NUL-separated, exactly as received.
    "accelerate": '#!/bin/bash\nprintf \'%s\\0\' "$@" > "$ARGS_OUT"\n',
}


def _run_sbatch(tmp_path: Path, name: str, env: dict[str, str], *extra: str):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for stub, text in STUBS.items():
        (bin_dir / stub).write_text(text)
        (bin_dir / stub).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    base = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "ARGS_OUT": str(tmp_path / "args"),
        "SLURM_JOB_NAME": "terraseg",
        "SLURM_JOB_ID": "42",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "GPUS_PER_NODE": "4",
    }
    done = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm" / f"{name}.sbatch"), *extra],
        cwd=work,
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    recorded = None
    if (tmp_path / "args").is_file():
        recorded = (tmp_path / "args").read_bytes().decode().split("\0")[:-1]
    return done, recorded, work


@pytest.mark.parametrize("name", ["single-node", "multinode"])
def test_sbatch_passes_hostile_paths_as_plain_arguments(tmp_path, name):
    config = "configs/my run $(touch pwned).yaml"
    shards = "/data/sh ards`touch pwned`;touch pwned"
    run_dir = "runs/it's a run $(touch pwned)"
    extra = ("--set", "train.note=a b $(touch pwned) *")
    env = {"CONFIG": config, "SHARDS": shards, "RUN_DIR": run_dir}
    done, recorded, work = _run_sbatch(tmp_path, name, env, *extra)
    assert done.returncode == 0, done.stderr
    assert not (work / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert (work / run_dir).is_dir()  # created under its literal name
    train = ["launch/train.py", "--config", config, "--out", run_dir, "--set",
             f"data.shards={shards}", "--resume", "latest", *extra]  # fmt: skip
    assert recorded[0] == "launch"
    assert recorded[-len(train) :] == train
    if name == "multinode":
        assert recorded[1:3] == ["--machine_rank", "1"]
        assert recorded[recorded.index("--num_processes") + 1] == "8"
        assert recorded[recorded.index("--main_process_ip") + 1] == "node-a"


@pytest.mark.parametrize("name", ["single-node", "multinode"])
def test_sbatch_refuses_counts_that_are_not_numbers(tmp_path, name):
    env = {"CONFIG": "c.yaml", "SHARDS": "s", "GPUS_PER_NODE": "x[$(touch pwned)]"}
    done, recorded, work = _run_sbatch(tmp_path, name, env)
    assert done.returncode == 2 and recorded is None
    assert "error: GPUS_PER_NODE must be a whole number" in done.stderr
    assert not (work / "pwned").exists()
