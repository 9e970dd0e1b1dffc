"""Plot a run's training history (loss, learning rate, mIoU, per-class IoU).

The same as ``terraseg plot``; the code is :mod:`engine.commands.plot_history`.
"""

import sys

from engine.commands.plot_history import main

if __name__ == "__main__":
    sys.exit(main())
