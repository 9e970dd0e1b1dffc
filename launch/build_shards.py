"""Pack image/mask pairs into webdataset shards with a dataset.json manifest.

The same as ``terraseg build``; the code is :mod:`engine.commands.build_shards`.
"""

import sys

from engine.commands.build_shards import main

if __name__ == "__main__":
    sys.exit(main())
