"""Evaluate a trained model on a shard split, or a folder of predictions against masks.

The same as ``terraseg evaluate``; the code is :mod:`engine.commands.evaluate`.
"""

import sys

from engine.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
