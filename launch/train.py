"""Train a segmentation model on terraseg shards.

    accelerate launch launch/train.py --config launch/configs/unet.yaml --out runs/unet \
        --set data.shards=shards/dubai --set optim.lr=3e-4 [--resume latest]

Runs the same on CPU, one GPU, several GPUs and several nodes (see docs/cluster.md).
Exits with code 75 after a preemption checkpoint (SIGTERM/SIGUSR1): run again with
``--resume latest``.
"""

import argparse
import os
import sys
import traceback

from engine.evaluate.metrics import summary_line
from engine.train.config import ConfigError, load_config
from engine.train.loop import train


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment YAML (launch/configs/)")
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
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        metrics = train(config, args.out, resume=args.resume).metrics
    except Exception:
        # A failed rank must exit, not wait in teardown for peers that are gone or stalled
        # (process-group and loader shutdown can block forever); the launcher then stops
        # the other ranks.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if metrics["split"] is not None:
        print(f"{metrics['split']}: {summary_line(metrics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
