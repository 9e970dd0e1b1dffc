"""Inspect masks: encoding, every colour/value with pixel count, share and file count.

The same as ``terraseg inspect``; the code is :mod:`engine.commands.inspect_masks`.
"""

import sys

from engine.commands.inspect_masks import main

if __name__ == "__main__":
    sys.exit(main())
