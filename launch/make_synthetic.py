"""Write a synthetic land-cover dataset in the Dubai layout (no download needed).

The same as ``terraseg synthetic``; the code is :mod:`engine.commands.make_synthetic`.
"""

import sys

from engine.commands.make_synthetic import main

if __name__ == "__main__":
    sys.exit(main())
