"""Render masks, predictions and image | truth | prediction | error panels, with a legend.

The same as ``terraseg show``; the code is :mod:`engine.commands.show`.
"""

import sys

from engine.commands.show import main

if __name__ == "__main__":
    sys.exit(main())
