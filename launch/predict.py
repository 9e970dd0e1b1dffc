"""Predict segmentation masks for images of any size with a trained model.

The same as ``terraseg predict``; the code is :mod:`engine.commands.predict`.
"""

import sys

from engine.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
