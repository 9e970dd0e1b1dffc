"""Export a trained model to a self-contained ONNX file (QGIS Deepness, onnxruntime).

The same as ``terraseg export``; the code is :mod:`engine.commands.export`.
"""

import sys

from engine.commands.export import main

if __name__ == "__main__":
    sys.exit(main())
