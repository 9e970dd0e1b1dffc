"""Check that every shard of a folder or URL is exactly what the builder wrote.

The same as ``terraseg verify``; the code is :mod:`engine.commands.verify_shards`.
"""

import sys

from engine.commands.verify_shards import main

if __name__ == "__main__":
    sys.exit(main())
