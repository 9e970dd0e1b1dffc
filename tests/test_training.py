"""The training loop on CPU: run-directory contract, accumulation, exact resume, faults."""

import copy
import csv
import json

import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, tiny_args, tiny_config
from torch import nn

from engine.data.shards.manifest import load_manifest
from engine.evaluate.shard_eval import evaluate_split
from engine.train.checkpoint import find_latest, list_checkpoints, read_state
from engine.train.export import load_exported
from engine.train.loop import train
from engine.train.loss_factory import build_loss
from engine.train.step import forward_backward
from engine.train.stopping import EXIT_DIVERGED, EXIT_PREEMPTED, TrainingDiverged


def history(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_directory_contract(synthetic_shards, tmp_path):
    config = tiny_config(synthetic_shards, "train.keep_checkpoints=1", "log.wandb=offline")
    result = train(config, tmp_path / "run")
    run = tmp_path / "run"
    expected = ["config.yaml", "history.csv", "metrics.json", "loss.png", "miou.png"]
    expected += [
        f"best/{n}" for n in ("model.safetensors", "model.json", "config.yaml", "dataset.json")
    ]
    for name in expected:
        assert (run / name).is_file(), name
    assert [p.name for p in list_checkpoints(run)] == ["step-00000008"]
    assert read_state(find_latest(run))["step"] == 8
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["steps"] == 8
    assert {"miou", "overall_accuracy", "kappa", "per_class"} <= set(metrics)
    assert len(metrics["per_class"]) == 7
    rows = history(run)
    keys = [(r["step"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert [r["step"] for r in rows if r["split"] == "train"] == ["2", "4", "6", "8"]
    assert [r["step"] for r in rows if r["split"] == "val"] == ["4", "8"]
    # The best model's final test evaluation is one row at the best step, marked as such.
    assert [r["step"] for r in rows if r["split"] == "test@best"] == [str(metrics["best_step"])]
    assert {r["split"] for r in rows} == {"train", "val", "test@best"}
    assert all(
        float(r["images_per_s"]) > 0 and 0 <= float(r["data_wait"]) <= 1
        for r in rows
        if r["split"] == "train"
    )
    # The exported best model loads without accelerate and reproduces the reported test scores.
    exported = load_exported(run)
    manifest = load_manifest(synthetic_shards)
    scores = evaluate_split(exported.model, manifest, "test")
    assert scores.metrics.miou == pytest.approx(metrics["miou"], abs=1e-12)
    assert metrics["best_step"] in (4, 8) and result.model.training
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run not written"


class PixelNet(nn.Module):
    """Deterministic and batch-independent (no batch norm): accumulation must be exact."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, x):
        return self.body(x)


def test_gradient_accumulation_4x2_matches_batch_8():
    # Cross-entropy is a mean over pixels, so with equal micro-batches and no ignored pixels
    # the mean of the 4 micro-batch gradients is the gradient of the batch of 8.
    torch.manual_seed(0)
    model = PixelNet()
    reference = copy.deepcopy(model)
    inputs = torch.randn(8, 3, 16, 16)
    targets = torch.randint(0, 4, (8, 16, 16))
    loss_fn = build_loss("ce", 4)
    loss_fn(reference(inputs), targets).backward()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4)
    model = accelerator.prepare(model)
    for chunk in range(4):
        part = slice(2 * chunk, 2 * chunk + 2)
        forward_backward(accelerator, model, loss_fn, inputs[part], targets[part])
        assert accelerator.sync_gradients == (chunk == 3)
    for accumulated, full in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(accumulated.grad, full.grad, rtol=1e-5, atol=1e-7)


def test_resume_continues_exactly(synthetic_shards, tmp_path):
    config = tiny_config(synthetic_shards, "train.checkpoint_every=2")
    train(config, tmp_path / "straight")
    straight = history(tmp_path / "straight")
    interrupted = tiny_config(
        synthetic_shards, "train.checkpoint_every=2", "train.stop_after_steps=4"
    )
    with pytest.raises(SystemExit) as stopped:
        train(interrupted, tmp_path / "resumed")
    assert stopped.value.code == EXIT_PREEMPTED
    assert read_state(find_latest(tmp_path / "resumed"))["step"] == 4
    train(config, tmp_path / "resumed", resume="latest")
    resumed = history(tmp_path / "resumed")
    train_rows = [r for r in resumed if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == ["2", "4", "6", "8"]  # no gap, no duplicate
    reference = [r for r in straight if r["split"] == "train"]
    for a, b in zip(train_rows, reference):
        assert float(a["lr"]) == pytest.approx(float(b["lr"]), rel=1e-9)
        # Resumed at an epoch boundary: same data, same augmentation, same states.
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
    final = {r["split"]: r["miou"] for r in resumed if r["step"] == "8" and r["split"] != "train"}
    assert final == {
        r["split"]: r["miou"] for r in straight if r["step"] == "8" and r["split"] != "train"
    }


def test_non_finite_steps_stop_training_and_keep_last_checkpoint(
    synthetic_shards, tmp_path, monkeypatch
):
    # No validation: NaN inputs also poison the batch-norm statistics, and the export at step 4
    # would refuse those (see test_huge_learning_rate_...); here the step counter is tested.
    config = tiny_config(
        synthetic_shards, "train.checkpoint_every=2", "train.max_bad_steps=3", "data.val_split="
    )
    from engine.train import step as trainer

    real = trainer.forward_backward
    calls = {"n": 0}

    def poisoned(accelerator, model, loss_fn, inputs, targets):
        calls["n"] += 1
        if calls["n"] > 2:  # from the third step on, the loss is NaN
            inputs = inputs * float("nan")
        return real(accelerator, model, loss_fn, inputs, targets)

    monkeypatch.setattr(trainer, "forward_backward", poisoned)
    # Steps 3.. are bad; the host looks at sync points only (here every 2 steps, the
    # checkpoints): at step 4 it sees 2 bad steps (no checkpoint), at step 6 four.
    with pytest.raises(TrainingDiverged, match="at step 6 .4 consecutive non-finite steps"):
        train(config, tmp_path / "run")
    latest = find_latest(tmp_path / "run")
    assert read_state(latest)["step"] == 2
    from safetensors.torch import load_file

    weights = load_file(str(latest / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


DIVERGING = (
    "optim.name=sgd",
    "optim.lr=1e12",
    "optim.grad_clip=0",
    "train.checkpoint_every=1",
    "train.eval_every=1",
    "train.log_every=1",
)


def test_huge_learning_rate_diverges_without_saving_non_finite_weights(synthetic_shards, tmp_path):
    """SGD at lr 1e12 without clipping: step 1 is finite (huge), step 2 overflows the weights.

    The gradient norm of step 2 is finite, so only the weight check stops the run: nothing
    non-finite is written, the step-1 checkpoint stays the latest and ``best`` keeps step 1.
    """
    config = tiny_config(synthetic_shards, *DIVERGING)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"^training diverged at step 2 \(.* no longer fin"):
        train(config, run)
    from safetensors.torch import load_file

    assert [p.name for p in list_checkpoints(run)] == ["step-00000001"]
    latest = load_file(str(find_latest(run) / "model.safetensors"))
    best = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in latest.values() if t.is_floating_point())
    assert max(float(t.abs().max()) for t in latest.values() if t.is_floating_point()) > 1e6
    assert best.keys() == latest.keys()
    assert all(torch.equal(best[k], latest[k]) for k in best)  # best is still step 1
    assert not list(run.glob("checkpoints/.tmp-*")) and not list(run.glob(".best*"))


@pytest.mark.slow
def test_divergence_is_one_line_and_exit_code_3_from_the_script(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", str(REPO / "launch/configs/tiny-cpu.yaml"), "--out", str(run)]
    for override in tiny_args(synthetic_shards, *DIVERGING):
        args += ["--set", override]
    assert _train_script_main(args) == EXIT_DIVERGED == 3
    err = capsys.readouterr().err
    # One error line, the last one (after the progress bar's), and no traceback.
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert err.splitlines()[-1] == (
        "error: training diverged at step 2 (the model's weights or buffers or the optimiser "
        "state are no longer finite, nothing saved; lower optim.lr or set optim.grad_clip); "
        f"the last finite checkpoint is {run / 'checkpoints' / 'step-00000001'}"
    )
    # Before the first checkpoint (due at step 4), the line says that none was saved.
    fresh = ["--set", "train.checkpoint_every=4", "--set", "train.eval_every=4"]
    assert _train_script_main([*args, "--overwrite", *fresh]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    last = err.splitlines()[-1]
    assert last.startswith("error: training diverged at step 4 (the model's weights or buffers")
    assert last.endswith("lower optim.lr or set optim.grad_clip); no checkpoint was saved")
    assert not list_checkpoints(run)


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_skip_leaves_parameters_and_state_untouched(fused):
    """Fused optimisers skip on the device (``found_inf``), others on the host."""
    from engine.train.step import NonFiniteSkip

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    skip = NonFiniteSkip(optimizer, fp16=False, bad_steps=0, device=torch.device("cpu"))
    assert (skip.inner is not None) == fused

    def step(poison: bool) -> None:
        loss = model(torch.randn(8, 4)).square().mean() * (float("nan") if poison else 1.0)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        skip.step(~torch.isfinite(norm))
        optimizer.zero_grad(set_to_none=True)

    step(poison=False)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]
    steps = [float(optimizer.state[p]["step"]) for p in model.parameters()]
    for _ in range(3):
        step(poison=True)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(
        torch.equal(m, optimizer.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters())
    )
    assert [float(optimizer.state[p]["step"]) for p in model.parameters()] == steps
    assert skip.read() == (3, 3, 3)  # current run, skipped since the last read, longest run
    step(poison=False)
    assert not any(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert skip.read() == (0, 0, 3)  # the run was still open at the last read


def test_corrupt_checkpoint_is_skipped(synthetic_shards, tmp_path):
    config = tiny_config(synthetic_shards, "train.checkpoint_every=2", "train.keep_checkpoints=3")
    with pytest.raises(SystemExit):
        train(
            tiny_config(
                synthetic_shards,
                "train.checkpoint_every=2",
                "train.keep_checkpoints=3",
                "train.stop_after_steps=4",
            ),
            tmp_path / "run",
        )
    newest = find_latest(tmp_path / "run")
    assert newest.name == "step-00000004"
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:100])  # a write cut short
    assert find_latest(tmp_path / "run").name == "step-00000002"
    train(config, tmp_path / "run", resume="latest")
    assert [r["step"] for r in history(tmp_path / "run") if r["split"] == "train"] == [
        "2",
        "4",
        "6",
        "8",
    ]


def _train_script_main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_run_folder_is_never_overwritten(synthetic_shards, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--config", str(REPO / "launch/configs/tiny-cpu.yaml"), "--out", str(run)]
    for override in tiny_args(synthetic_shards, "train.epochs=1", "train.steps_per_epoch=2"):
        args += ["--set", override]
    assert _train_script_main(args) == 0
    first = (run / "history.csv").read_text()
    capsys.readouterr()
    # A second run into the same folder is refused in one line that names the fix.
    assert _train_script_main(args) == 2
    assert capsys.readouterr().err == (
        f"error: --out {run}: holds a run already; add --resume latest to continue it or "
        "--overwrite to replace it, or choose a new folder\n"
    )
    assert (run / "history.csv").read_text() == first
    # --overwrite never touches a folder that holds no terraseg run.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    other_args = [*args[:3], str(other), *args[4:]]
    for option in ("--overwrite", "--resume=latest"):
        assert _train_script_main([*other_args, option]) == 2
        assert "not empty and not a terraseg run" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    # --overwrite replaces the run's own files and keeps the rest.
    (run / "notes.txt").write_text("keep")
    assert _train_script_main([*args, "--overwrite", "--set", "train.log_every=1"]) == 0
    assert (run / "notes.txt").read_text() == "keep"
    assert [r["step"] for r in history(run) if r["split"] == "train"] == ["1", "2"]
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]


def test_resume_of_a_1x1_head_checkpoint_keeps_training_its_head(synthetic_shards, tmp_path):
    """A ResUNet-34 checkpoint written before the 3x3 head (issue #16: options without
    ``head_kernel``, a 1x1 head) resumes under today's default and keeps optimising that head."""
    from engine.train.checkpoint import MODEL_NAME
    from engine.train.state_io import load_tensors

    def config(*overrides):
        cfg = tiny_config(synthetic_shards, "model.arch=resunet34", *overrides)
        cfg.model.options = {"encoder": "resnet10t", "decoder_channels": [16, 16, 8, 8, 8]}
        return cfg

    old = config("train.checkpoint_every=2", "train.stop_after_steps=2")
    old.model.options["head_kernel"] = 1
    with pytest.raises(SystemExit):
        train(old, tmp_path / "run")
    latest = find_latest(tmp_path / "run")
    state = json.loads((latest / "trainer_state.json").read_text())
    del state["model"]["options"]["head_kernel"]  # what the code before the 3x3 head wrote
    (latest / "trainer_state.json").write_text(json.dumps(state))
    head_before, _ = load_tensors(latest / MODEL_NAME)

    train(config("train.checkpoint_every=2"), tmp_path / "run", resume="latest")
    head_after, _ = load_tensors(find_latest(tmp_path / "run") / MODEL_NAME)
    assert read_state(find_latest(tmp_path / "run"))["step"] == 8
    assert head_after["head.weight"].shape == head_before["head.weight"].shape
    assert head_after["head.weight"].shape[-2:] == (1, 1)
    assert not torch.equal(head_after["head.weight"], head_before["head.weight"])  # trained
    exported = load_exported(tmp_path / "run")
    assert exported.model.head.kernel_size == (1, 1)
