"""A checkpoint's trainer_state.json and RNG files are data: checked field by field before use.

A real 2-step run (a checkpoint at each step) is copied and its files edited the way a
hostile or broken writer would; every problem is one line naming the file and the field,
``--resume latest`` never turns a hostile state into a fresh start, and nothing in the run
folder changes.
"""

import importlib.util
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, tiny_args, tiny_config

from engine.train import state_io
from engine.train.checkpoint import CheckpointError, list_checkpoints, open_checkpoint, read_state
from engine.train.loop import train


def short(*overrides):
    return (
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "data.val_split=",
    ) + overrides


@pytest.fixture(scope="module")
def trained(synthetic_shards, tmp_path_factory):
    """A 2-step run with a checkpoint at step 1 and at step 2."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(synthetic_shards, *short()), run)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000001", "step-00000002"]
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def edit_state(folder: Path, **fields) -> None:
    """Set (or, with ``...``, remove) fields of a checkpoint's trainer_state.json."""
    path = folder / "trainer_state.json"
    state = json.loads(path.read_text())
    for key, value in fields.items():
        if value is ...:
            del state[key]
        else:
            state[key] = value
    path.write_text(json.dumps(state))


def replace_file(folder: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and record its new size, as a forger would."""
    (folder / name).write_bytes(data)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["files"][name] = len(data)
    (folder / "trainer_state.json").write_text(json.dumps(state))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def train_script(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("train_script", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def script_args(shards: Path, run: Path, *extra: str) -> list[str]:
    args = ["--config", str(REPO / "launch/configs/tiny-cpu.yaml"), "--out", str(run)]
    for override in tiny_args(shards, *short()):
        args += ["--set", override]
    return [*args, *extra]


INTEGER = r"must be an integer in \[0, 1000000000000\]"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"step": -5}, rf"'step' {INTEGER}, got -5"),
        ({"step": True}, rf"'step' {INTEGER}, got True"),
        ({"step": 2.0}, rf"'step' {INTEGER}, got 2\.0"),
        ({"step": "2"}, rf"'step' {INTEGER}, got '2'"),
        ({"step": 10**13}, rf"'step' {INTEGER}, got 10000000000000"),
        ({"step": 1}, r"'step' is 1 but the folder is step 2"),
        ({"epoch": True}, r"'epoch' must be an integer in \[0, 2\], got True"),
        ({"best_step": 3}, r"'best_step' must be an integer in \[-1, 2\], got 3"),
        ({"bad_steps": -1}, r"'bad_steps' must be an integer in \[0, 2\], got -1"),
        ({"seed": 2**32}, r"'seed' must be an integer in \[0, 4294967295\], got 4294967296"),
        ({"world_size": 0}, r"'world_size' must be an integer in \[1, 65536\], got 0"),
        ({"global_batch": True}, r"'global_batch' must be an integer in \[1, 1000000000000\]"),
        ({"best_miou": 1.5}, r"'best_miou' must be a number in \[0, 1\] \(or -1: none yet\)"),
        ({"best_miou": "0.5"}, r"'best_miou' must be a number in \[0, 1\].*got '0\.5'"),
        ({"best_miou": False}, r"'best_miou' must be a number in \[0, 1\].*got False"),
        ({"bad_steps": ...}, r"field\(s\) \['bad_steps'\] missing"),
        ({"exec": "touch /tmp/x"}, r"unknown field\(s\) \['exec'\]"),
        ({"format": "2"}, r"checkpoint format '2', this terraseg reads format 2 only"),
        ({"format": 2.0}, r"checkpoint format 2\.0, this terraseg reads format 2 only"),
        ({"model": []}, r"'model' must be an object"),
        ({"model": {"num_classes": True}}, r"'model\.num_classes' must be an integer"),
        ({"files": []}, r"'files' must be an object of file names and sizes"),
        ({"files": {"../../../etc/passwd": 1}}, r"'files' lists '\.\./\.\./\.\./etc/passwd'"),
        ({"files": {"model.safetensors": "big"}}, r"'files' gives model\.safetensors the size"),
        ({"files": {"model.safetensors": 1}}, r"'files' does not list optimizer\.safetensors"),
    ],
)
def test_hostile_state_fields_are_refused_naming_the_file_and_field(run, fields, message):
    folder = list_checkpoints(run)[-1]
    edit_state(folder, **fields)
    with pytest.raises(CheckpointError, match=message) as refused:
        read_state(folder)
    text = str(refused.value)
    assert text.startswith(f"{folder / 'trainer_state.json'}: ") and "\n" not in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"step": NaN}', r"not valid JSON \(NaN is not JSON\)"),
        ('{"step": 2, "best_miou": 1e400}', r"'best_miou' must be a number in \[0, 1\]"),
        ('[{"step": 2}]', r"checkpoint state must be a JSON object, got list"),
        ("[" * 100_000 + "]" * 100_000, r"JSON nested too deeply"),
    ],
)
def test_non_finite_or_malformed_json_is_refused(run, raw, message):
    folder = list_checkpoints(run)[-1]
    if "1e400" in raw:  # a finite-looking number that parses to inf
        state = json.loads((folder / "trainer_state.json").read_text())
        raw = json.dumps(state).replace('"best_miou": -1.0', '"best_miou": 1e400')
        assert "1e400" in raw
    (folder / "trainer_state.json").write_text(raw)
    with pytest.raises(CheckpointError, match=message) as refused:
        read_state(folder)
    assert str(refused.value).startswith(f"{folder / 'trainer_state.json'}: ")


def test_an_oversized_state_file_is_refused_before_it_is_read(run, monkeypatch):
    folder = list_checkpoints(run)[-1]
    monkeypatch.setenv("TERRASEG_MAX_METADATA_BYTES", "64")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: \d+ bytes is over the 64"):
        read_state(folder)


@pytest.mark.slow
def test_step_minus_5_is_never_resumed_nor_a_fresh_start(run, synthetic_shards, capsys):
    """The issue's case: ``step: -5`` resumed and wrote ``step--0000002``, exit 0."""
    newest = list_checkpoints(run)[-1]
    edit_state(newest, step=-5)
    before = snapshot(run)
    # An explicit folder: one line naming the file and the field, nothing written.
    assert train_script(script_args(synthetic_shards, run, "--resume", str(newest))) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"error: {newest / 'trainer_state.json'}: 'step' must be an integer in "
        "[0, 1000000000000], got -5"
    )
    assert snapshot(run) == before
    # latest: a hostile state is skipped like a corrupt one (with a warning that names it);
    # the run goes on from the previous checkpoint, not from step -5 and not from scratch.
    assert train_script(script_args(synthetic_shards, run, "--resume", "latest")) == 0
    captured = capsys.readouterr()
    assert f"resumed from {run / 'checkpoints' / 'step-00000001'} at step 1" in captured.out
    assert not list(run.glob("checkpoints/step--*"))
    # When every checkpoint is hostile, latest is an error listing them: no fresh start.
    for folder in list_checkpoints(run):
        edit_state(folder, step=-5)
    before = snapshot(run)
    assert train_script(script_args(synthetic_shards, run, "--resume", "latest")) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"error: {run / 'checkpoints'}: no usable checkpoint among 2 (")
    assert last.count("'step' must be an integer in [0, 1000000000000], got -5") == 2
    assert snapshot(run) == before


def test_a_checkpoint_past_the_runs_total_steps_is_an_error_not_skipped(
    run, synthetic_shards, tmp_path
):
    before = snapshot(run)
    shorter = tiny_config(synthetic_shards, *short("train.steps_per_epoch=1"))
    with pytest.raises(CheckpointError) as refused:
        train(shorter, run, resume="latest")
    assert str(refused.value) == (
        f"{run / 'checkpoints' / 'step-00000002' / 'trainer_state.json'}: 'step' 2 is past "
        "this run's 1 steps (train.epochs × train.steps_per_epoch); raise train.epochs to "
        "continue it"
    )
    assert snapshot(run) == before


def rng_state(**changes):
    """This process's RNG states as a checkpoint stores them, with ``changes`` applied."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    return {**state, **changes}


def numpy_state(**changes):
    name, key, position, has_gauss, cached = np.random.get_state()
    fields = dict(name=name, key=key, position=position, has_gauss=has_gauss, cached=cached)
    return tuple({**fields, **changes}.values())


@pytest.mark.parametrize(
    ("rng", "message"),
    [
        (rng_state(torch=torch.get_rng_state()[:100]), "malformed torch RNG state (100 bytes"),
        (rng_state(torch=torch.get_rng_state().float()), "malformed torch RNG state (not a 1-D"),
        (rng_state(torch=torch.zeros(2, 2528, dtype=torch.uint8)), "torch RNG state (not a 1-D"),
        (rng_state(numpy=numpy_state(position=10**6)), "malformed numpy RNG state (the posit"),
        (rng_state(numpy=numpy_state(key=np.zeros(5, np.uint32))), "numpy RNG state (the key"),
        (rng_state(numpy=numpy_state(key=np.zeros(624))), "numpy RNG state (the key must be"),
        (rng_state(numpy=numpy_state(name="PCG64")), "numpy RNG state (not an MT19937 state)"),
        (rng_state(python=(3, (1,) * 100, None)), "malformed python RNG state (625 integers"),
        (rng_state(python=(2, random.getstate()[1], None)), "python RNG state (not a version-3"),
        (rng_state(python=(3, random.getstate()[1], "x")), "python RNG state (the cached Gaus"),
        (rng_state(cuda=[torch.zeros(3, dtype=torch.uint8)]), "malformed cuda RNG state (3 byt"),
        (rng_state(cuda="x"), "malformed cuda RNG state (not a list of per-device states)"),
        (rng_state(extra=1), "RNG state must hold python, numpy and torch (and cuda), got ["),
        ([1, 2, 3], "RNG state must hold python, numpy and torch (and cuda), got 'list'"),
    ],
)
def test_rng_states_of_the_wrong_shape_or_type_are_refused_naming_the_file(
    run, tmp_path, rng, message
):
    folder = list_checkpoints(run)[-1]
    forged = tmp_path / "rng.safetensors"
    state_io.save_state(forged, rng)
    replace_file(folder, "rng-0.safetensors", forged.read_bytes())
    with pytest.raises(CheckpointError) as refused:
        open_checkpoint(folder)
    text = str(refused.value)
    assert text.startswith(f"{folder / 'rng-0.safetensors'}: ") and message in text, text
    assert "\n" not in text


def test_a_truncated_rng_file_is_named_whether_its_size_was_recorded_or_not(run):
    folder = list_checkpoints(run)[-1]
    rng = folder / "rng-0.safetensors"
    data = rng.read_bytes()
    rng.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="rng-0.safetensors: missing or truncated"):
        open_checkpoint(folder)
    replace_file(folder, "rng-0.safetensors", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="rng-0.safetensors: not a safetensors file"):
        open_checkpoint(folder)
    replace_file(folder, "rng-0.safetensors", data[:7])
    with pytest.raises(CheckpointError, match="rng-0.safetensors: not a safetensors file"):
        open_checkpoint(folder)


@pytest.mark.slow
def test_a_forged_rng_file_through_the_script_is_one_line_and_changes_nothing(
    run, synthetic_shards, tmp_path, capsys
):
    folder = list_checkpoints(run)[-1]
    forged = tmp_path / "rng.safetensors"
    state_io.save_state(forged, rng_state(numpy=numpy_state(position=10**6)))
    replace_file(folder, "rng-0.safetensors", forged.read_bytes())
    before = snapshot(run)
    assert train_script(script_args(synthetic_shards, run, "--resume", str(folder))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {folder / 'rng-0.safetensors'}: malformed")
    assert snapshot(run) == before


def test_state_metadata_nested_too_deeply_is_a_named_error(tmp_path):
    """The JSON inside a state file's safetensors header is metadata too (was a RecursionError)."""
    from safetensors.torch import save_file

    path = tmp_path / "optimizer.safetensors"
    deep = "[" * 100_000 + "]" * 100_000
    save_file({"t0": torch.zeros(1)}, str(path), metadata={state_io.META_KEY: deep})
    with pytest.raises(state_io.StateFileError, match="optimizer.safetensors: JSON nested too"):
        state_io.load_state(path)
    save_file({"t0": torch.zeros(1)}, str(path), metadata={state_io.META_KEY: '{"a": NaN}'})
    with pytest.raises(state_io.StateFileError, match=r"not valid JSON \(NaN is not JSON\)"):
        state_io.load_state(path)
