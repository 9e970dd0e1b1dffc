"""Train a segmentation model on terraseg shards.

The same as ``terraseg train``; the code is :mod:`engine.commands.train`.
Under accelerate: ``accelerate launch launch/train.py …`` (or ``accelerate launch -m
engine.commands train …``) runs it on every process.
"""

import sys

from engine.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
