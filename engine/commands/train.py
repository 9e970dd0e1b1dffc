r"""Train a segmentation model on terraseg shards.

    terraseg train --config unet --out runs/unet --set data.shards=shards/dubai
    accelerate launch -m engine.commands train --config unet --out runs/unet \
        --set data.shards=shards/dubai --set optim.lr=3e-4 [--resume latest]
    accelerate launch launch/train.py --config launch/configs/unet.yaml ...  # the same

Runs the same on CPU, one GPU, several GPUs and several nodes (see docs/cluster.md).
``--out`` must be new, empty, or a run continued with ``--resume`` or replaced with
``--overwrite``.
"""

import argparse
import os
import sys
import traceback

from engine.cli import HelpFormatter
from engine.errors import UserError
from engine.evaluate.metrics import summary_line
from engine.train.checkpoint import find_latest
from engine.train.config import load_config
from engine.train.loop import train
from engine.train.preflight import check_run_dir, clear_run, is_run
from engine.train.stopping import EXIT_DIVERGED, TrainingDiverged

EXIT_USER_ERROR = 2  # and EXIT_DIVERGED = 3, EXIT_PREEMPTED = 75: see EPILOG
EPILOG = """\
exit codes:
  0   trained; the best weights are in OUT/best
  2   bad input (a setting, file, shard, checkpoint or run folder): one line
      "error: ..."
  3   diverged (non-finite loss or weights): one line "error: training diverged at
      step N (...); the last finite checkpoint is OUT/checkpoints/step-M"; nothing
      non-finite is saved: lower optim.lr or set optim.grad_clip, and start again
      or --resume latest
  75  stopped after a preemption signal (SIGTERM/SIGUSR1), OUT/STOP or
      train.stop_after_steps, with a checkpoint: run again with --resume latest
(accelerate launch and torchrun exit 1 for any failed worker; the line is the same)
"""


def _rank() -> int:
    """The global rank the launcher gave this process (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def _exit_now(code: int) -> None:
    """Exit at once: a failed rank must not wait in teardown for peers that are gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(message: str, code: int) -> int:
    """Print ``error: message``; exit at once when other ranks run (else return ``code``)."""
    print(f"error: {message}", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_now(code)
    return code


def _diverged_line(error: TrainingDiverged, out: str) -> str:
    """The divergence error and the checkpoint to go back to (every checkpoint is finite)."""
    latest = find_latest(out)
    where = f"the last finite checkpoint is {latest}" if latest else "no checkpoint was saved"
    return f"{error}; {where}"


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--config",
        required=True,
        help="experiment YAML, or a shipped config's name ('terraseg configs' lists them)",
    )
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    parser.add_argument("--resume", help="'latest' or a checkpoint folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the terraseg run in --out (never a folder that holds no run)",
    )
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    try:
        config = load_config(args.config, args.overrides)
        if not args.overwrite:
            check_run_dir(args.out, args.resume, overwrite=False)
        elif _rank() == 0:  # the other ranks must not see a half-removed folder
            check_run_dir(args.out, None, overwrite=True)
            if is_run(args.out):
                clear_run(args.out)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    failure = None
    try:
        metrics = train(config, args.out, resume=args.resume).metrics
    except UserError as error:
        failure = str(error), EXIT_USER_ERROR
    except TrainingDiverged as error:
        failure = _diverged_line(error, args.out), EXIT_DIVERGED
    except Exception:
        # A failed rank must exit, not wait in teardown for peers that are gone or stalled
        # (process-group and loader shutdown can block forever); the launcher then stops
        # the other ranks.
        traceback.print_exc()
        _exit_now(1)
    if failure:  # printed after the except block freed the loop's frames and progress bar
        return _fail(*failure)
    summary = [f"{metrics['split']}: {summary_line(metrics)}"] if metrics["split"] else []
    if metrics.get("best_choice"):  # a score is never printed without what it rests on
        summary.append(f"note: {metrics['best_choice']}")
    if summary:
        print("; ".join(summary))
    return 0
