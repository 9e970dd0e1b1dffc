"""Validation during training: evaluate a split, record it, export the best model, final metrics.

Every rank evaluates its share of the split (exactly once over all ranks); the main process
writes the history row, the tracker's tables and panels, ``RUN/best`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from safetensors.torch import load_file

from engine.errors import UserError
from engine.evaluate.metrics import summary_line
from engine.evaluate.shard_eval import EvalResult, EvalSettings, evaluate_split
from engine.train.checkpoint import any_rank
from engine.train.export import ExportError, save_exported
from engine.train.setup import Run, build_model
from engine.train.state_io import all_finite
from engine.train.stopping import TrainingDiverged

log = logging.getLogger("terraseg.train")


def evaluate(run: Run, split: str, network: torch.nn.Module | None = None) -> EvalResult:
    """Evaluate ``network`` (default: the model being trained) on a split; back to train mode."""
    config = run.config
    result = evaluate_split(
        network if network is not None else run.model,
        run.manifest,
        split,
        EvalSettings(
            batch_size=config.data.eval_batch_size,
            device=run.device,
            num_workers=config.data.num_workers,
            rank=run.accelerator.process_index,
            world_size=run.accelerator.num_processes,
            autocast_dtype=run.autocast_dtype,
            channels_last=run.channels_last,
        ),
        examples=config.train.panels if run.tracker.active else 0,
        train_crop=config.data.crop_size,
    )
    run.model.train()
    return result


def record_eval(run: Run, split: str, result: EvalResult, *, best: bool = False) -> None:
    """Write an evaluation to the history, the tracker (with panels) and the console.

    Args:
        run: The run.
        split: The evaluated split.
        result: Its evaluation.
        best: The final evaluation of the best model: the history row's split is
            ``"<split>@best"`` and its step the best step (the last step when there was no
            val split), so that plots draw it as a marker there, not as a jump at the end.
    """
    m, step, tracker = result.metrics, run.state.step, run.tracker
    row_step = step
    if best:
        split = f"{split}@best"
        row_step = run.state.best_step if run.state.best_step >= 0 else step
    row = {
        "step": row_step,
        "epoch": row_step / run.config.steps_per_epoch,
        "split": split,
        "miou": m.miou,
        "mean_f1": m.mean_f1,
        "overall_accuracy": m.overall_accuracy,
        "kappa": m.kappa,
    }
    row |= {f"iou/{c}": v for c, v in zip(m.class_names, m.iou)}
    row |= {f"f1/{c}": v for c, v in zip(m.class_names, m.f1)}
    run.history.write(row)
    # The tracker's steps only grow: the best model's scores are logged at the current step.
    tracker.log({f"{split}/{k}": v for k, v in row.items() if k not in ("step", "split")}, step)
    tracker.log_table(
        f"{split}/per_class",
        ["class", "iou", "f1", "precision", "recall", "support"],
        [
            [r["name"], r["iou"], r["f1"], r["precision"], r["recall"], r["support"]]
            for r in m.per_class
        ],
        step,
    )
    if tracker.active and result.examples:
        from engine.render.figures import panel

        manifest = run.manifest
        images = [
            panel(
                e.image,
                e.truth,
                e.prediction,
                manifest.class_names,
                manifest.palette,
                ignore_index=manifest.ignore_index,
                title=e.key,
            )
            for e in result.examples
        ]
        tracker.log_images(f"{split}/panels", images, [e.key for e in result.examples], step)
    if run.main:
        print(f"step {row_step} {split}: {summary_line(m.to_dict())}", flush=True)


def export_best(run: Run) -> None:
    """Write the model being trained to ``RUN/best`` (main process; all ranks wait).

    Raises:
        TrainingDiverged: when the weights are not finite (checked on every rank, on the
            device, before anything is written; ``RUN/best`` stays as it was).
    """
    if not all_finite(run.accelerator.unwrap_model(run.model).state_dict().values()):
        run.accelerator.wait_for_everyone()
        raise TrainingDiverged(
            run.state.step,
            f"the model's weights or buffers are no longer finite; {run.run_dir / 'best'} is "
            "left as it was; lower optim.lr or set optim.grad_clip",
        )
    error: Exception | None = None
    if run.main:
        try:
            save_exported(
                run.run_dir / "best",
                run.accelerator.unwrap_model(run.model),
                run.model_spec,
                run.config.to_dict(),
                run.manifest.data,
            )
        except (OSError, UserError) as caught:  # every rank must hear of it, or they hang
            error = caught
    if any_rank(run.accelerator, error is not None):
        raise error or ExportError(f"{run.run_dir / 'best'}: the main process failed to export")


def validate_and_export(run: Run) -> None:
    """Evaluate the val split; export the model to ``RUN/best`` when its mIoU is the best."""
    result = evaluate(run, run.config.data.val_split)
    record_eval(run, run.config.data.val_split, result)
    if result.metrics.miou > run.state.best_miou:
        run.state.best_miou, run.state.best_step = result.metrics.miou, run.state.step
        export_best(run)


def final_metrics(run: Run) -> dict[str, Any]:
    """Evaluate the test split (else val) once with the best model; write metrics.json."""
    config, manifest, state = run.config, run.manifest, run.state
    if state.best_step < 0:  # no val split: the final weights are the best we have
        export_best(run)
    best, _ = build_model(config, manifest, initial_weights=False)  # the best weights replace them
    best.load_state_dict(load_file(str(run.run_dir / "best" / "model.safetensors")))
    best = best.to(run.device)
    if run.channels_last:
        best = best.to(memory_format=torch.channels_last)
    split = next(
        (s for s in (config.data.test_split, config.data.val_split) if s and manifest.has_split(s)),
        None,
    )
    final: dict[str, Any] = {"split": split, "best_step": state.best_step, "steps": state.step}
    final["best_choice"] = run.best_choice  # a weak val split, said with every final score
    if split is not None:
        result = evaluate(run, split, best)
        record_eval(run, split, result, best=True)
        final |= result.metrics.to_dict()
    if run.main:
        temporary = run.run_dir / ".metrics.json.tmp"
        temporary.write_text(json.dumps(final, indent=2) + "\n")
        os.replace(temporary, run.run_dir / "metrics.json")
        try:
            from engine.render.history_plots import plot_history

            plot_history(run.run_dir / "history.csv", run.run_dir)
        except Exception as error:  # plots are a convenience; never lose a finished run to them
            log.warning("could not plot history: %s", error)
    return final
