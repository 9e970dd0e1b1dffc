"""Print parameters, MACs/GFLOPs and output shapes of terraseg architectures, or of a run.

The same as ``terraseg summary``; the code is :mod:`engine.commands.summary`.
"""

import sys

from engine.commands.summary import main

if __name__ == "__main__":
    sys.exit(main())
