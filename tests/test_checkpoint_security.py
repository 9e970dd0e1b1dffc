"""Checkpoints and exports can be trusted: no pickles, finite weights, named errors, full disks.

Every file of a real checkpoint and of a real export is replaced, one at a time, by a pickle
whose ``__reduce__`` would create a marker file; loading must refuse it by name and the
marker must never appear.
"""

import errno
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny, make_tiny_dataset, tiny_config

from engine.errors import UserError
from engine.train import state_io
from engine.train.checkpoint import CheckpointError, find_latest, list_checkpoints
from engine.train.export import ExportError, load_exported, save_exported
from engine.train.loop import train
from engine.train.state_io import DiskFullError

CHECKPOINT_FILES = [
    "model.safetensors",
    "optimizer.safetensors",
    "rng-0.safetensors",
    "trainer_state.json",
]
EXPORT_FILES = ["config.yaml", "dataset.json", "model.json", "model.safetensors"]


class Planted:
    """A pickle payload: unpickling it creates ``marker`` (as a shell command could)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def payload(marker: Path, size: int, protocol: int) -> bytes:
    """A live pickle padded to ``size`` bytes (so a size record cannot catch it)."""
    data = pickle.dumps(Planted(marker), protocol=protocol)
    return data + b" " * max(size - len(data), 0)


def short(*overrides):
    return ("train.epochs=1", "train.steps_per_epoch=2", "train.log_every=1") + overrides


@pytest.fixture(scope="module")
def trained(synthetic_shards, tmp_path_factory):
    """A 2-step run: one checkpoint (step 2) and a best export."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(synthetic_shards, *short()), run)
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def test_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(payload(marker, 500, pickle.HIGHEST_PROTOCOL))
    assert marker.exists(), "the planted pickle would not run: the tests below prove nothing"


def test_checkpoint_holds_no_pickle(trained):
    checkpoint = find_latest(trained)
    assert sorted(p.name for p in checkpoint.iterdir()) == CHECKPOINT_FILES
    for name in CHECKPOINT_FILES[:-1]:
        head = (checkpoint / name).read_bytes()[:9]
        assert head[8:9] == b"{", f"{name} is not a safetensors file"


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_planted_in_any_checkpoint_file_is_refused(
    trained, synthetic_shards, tmp_path, protocol
):
    config = tiny_config(synthetic_shards, *short())
    for name in CHECKPOINT_FILES:
        run = copy_run(trained, tmp_path / name)
        checkpoint = find_latest(run)
        target = checkpoint / name
        marker = tmp_path / f"ran-{name}"
        target.write_bytes(payload(marker, target.stat().st_size, protocol))
        history = (run / "history.csv").read_bytes()
        config_yaml = (run / "config.yaml").read_bytes()
        with pytest.raises(CheckpointError, match=name) as refused:
            train(config, run, resume=str(checkpoint))
        assert "\n" not in str(refused.value)
        # --resume latest with every checkpoint broken: an error naming them, no fresh start.
        with pytest.raises(CheckpointError, match=f"no usable checkpoint.*{name}"):
            train(config, run, resume="latest")
        assert not marker.exists(), f"the pickle planted in {name} ran"
        assert (run / "history.csv").read_bytes() == history
        assert (run / "config.yaml").read_bytes() == config_yaml


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_planted_in_any_export_file_is_refused(trained, tmp_path, protocol):
    for name in EXPORT_FILES:
        best = tmp_path / name / "best"
        shutil.copytree(trained / "best", best)
        marker = tmp_path / f"ran-{name}"
        (best / name).write_bytes(payload(marker, (best / name).stat().st_size, protocol))
        with pytest.raises(ExportError, match=name) as refused:
            load_exported(best)
        assert "\n" not in str(refused.value)
        assert not marker.exists(), f"the pickle planted in {name} ran"


def test_old_accelerate_pickles_in_a_checkpoint_are_never_opened(
    trained, synthetic_shards, tmp_path
):
    """The pickles accelerate used to write (and load) sit there unread; the resume works."""
    run = copy_run(trained, tmp_path)
    checkpoint = find_latest(run)
    marker = tmp_path / "ran"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
        (checkpoint / name).write_bytes(payload(marker, 0, pickle.HIGHEST_PROTOCOL))
    result = train(tiny_config(synthetic_shards, *short()), run, resume="latest")
    assert result.metrics["steps"] == 2
    assert not marker.exists()


def nan_weights(path: Path) -> None:
    """Overwrite a safetensors file's tensor bytes with float32 NaNs (same size, same header)."""
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    body = np.full((len(data) - start) // 4 + 1, np.nan, np.float32).tobytes()
    path.write_bytes(data[:start] + body[: len(data) - start])


def test_nan_weights_are_refused_on_resume_and_on_load(trained, synthetic_shards, tmp_path):
    run = copy_run(trained, tmp_path)
    checkpoint = find_latest(run)
    size = (checkpoint / "model.safetensors").stat().st_size
    nan_weights(checkpoint / "model.safetensors")
    assert (checkpoint / "model.safetensors").stat().st_size == size
    assert find_latest(run) == checkpoint  # the size record cannot tell
    history = (run / "history.csv").read_bytes()
    config = tiny_config(synthetic_shards, *short())
    with pytest.raises(CheckpointError, match="model.safetensors: .*NaN or inf"):
        train(config, run, resume=str(checkpoint))
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        train(config, run, resume="latest")
    assert (run / "history.csv").read_bytes() == history
    nan_weights(run / "best" / "model.safetensors")
    with pytest.raises(ExportError, match="model.safetensors: .*NaN or inf"):
        load_exported(run)


def test_resume_with_shards_of_another_class_count_is_refused(trained, tmp_path):
    other = tmp_path / "three-classes"
    build_tiny(make_tiny_dataset(tmp_path / "tiny"), other)
    run = copy_run(trained, tmp_path)
    with pytest.raises(CheckpointError, match="has 7 classes but the shards .* have 3") as refused:
        train(tiny_config(other, *short("data.crop_size=32")), run, resume="latest")
    assert "\n" not in str(refused.value)


class FullDisk(io.FileIO):
    """A file on a disk that fills half-way through the first write."""

    def write(self, data):
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def fill_disk(monkeypatch, names):
    """Make ``state_io``'s writes of files called ``names`` hit a full disk."""

    def opener(path, mode="r", *args, **kwargs):
        if Path(path).name in names:
            return FullDisk(path, mode.replace("b", ""))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(state_io, "open", opener, raising=False)


def test_full_disk_while_checkpointing(synthetic_shards, tmp_path, monkeypatch):
    fill_disk(monkeypatch, {"optimizer.safetensors"})
    run = tmp_path / "run"
    config = tiny_config(synthetic_shards, "train.epochs=1", "train.steps_per_epoch=1")
    with pytest.raises(DiskFullError, match="optimizer.safetensors: no space left on device") as e:
        train(config, run, resume=None)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert list((run / "checkpoints").iterdir()) == []  # the partial folder is gone
    assert list_checkpoints(run) == []


def test_full_disk_while_exporting_keeps_the_previous_export(trained, tmp_path, monkeypatch):
    exported = load_exported(trained)
    best = tmp_path / "best"
    shutil.copytree(trained / "best", best)
    before = {p.name: p.read_bytes() for p in best.iterdir()}
    fill_disk(monkeypatch, {"model.safetensors"})
    with pytest.raises(DiskFullError, match="model.safetensors: no space left on device"):
        save_exported(best, exported.model, exported.spec, exported.config, exported.manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no staging folder left
    assert {p.name: p.read_bytes() for p in best.iterdir()} == before


def test_state_round_trip_is_exact(tmp_path):
    """Weights, optimiser, schedule and the Python/NumPy/torch RNG streams resume exactly."""
    import random

    import torch
    from accelerate import Accelerator
    from torch import nn

    from engine.train.checkpoint import (
        load_checkpoint_weights,
        open_checkpoint,
        restore_training_state,
        save_checkpoint,
    )

    def build(seed):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9), fused=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
        return model, optimizer, scheduler

    accelerator = Accelerator(cpu=True)
    model, optimizer, scheduler = build(0)
    for _ in range(3):
        model(torch.randn(2, 3, 8, 8)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    spec = {"arch": "probe", "num_classes": 4, "in_channels": 3, "options": {}}
    state = {"step": 3, "best_miou": 0.5, "best_step": 2, "bad_steps": 0, "model": spec}
    keep = dict(model=model, optimizer=optimizer, scheduler=scheduler)
    folder = save_checkpoint(accelerator, tmp_path, state, 2, **keep)
    draws = (torch.rand(4), random.random(), np.random.rand(3))
    other, other_optimizer, other_scheduler = build(1)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    checkpoint = open_checkpoint(folder)
    load_checkpoint_weights(checkpoint, other)
    restore_training_state(checkpoint, accelerator, other_optimizer, other_scheduler)
    assert torch.equal(torch.rand(4), draws[0]) and random.random() == draws[1]
    np.testing.assert_array_equal(np.random.rand(3), draws[2])
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
    assert other_scheduler.state_dict() == scheduler.state_dict()
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    assert loaded["param_groups"] == saved["param_groups"]
    for index, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    assert checkpoint.state["step"] == 3 and checkpoint.state["best_miou"] == 0.5
