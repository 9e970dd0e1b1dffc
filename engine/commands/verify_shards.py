"""Check that every shard of a folder or URL is exactly what the builder wrote.

Streams each shard once (folders, http(s)://, s3://, pipe:) and compares its SHA-256 and
size with the ``shard_sha256`` / ``shard_bytes`` that ``dataset.json`` recorded at build.
Prints one line per shard, ``ok`` or ``MISMATCH`` with both digests.

Exit status: 0 every shard matches, 1 some shard differs or cannot be read, 2 bad input
(no manifest, a malformed one, or one without digests: rebuild with this version).

Example:
    python launch/verify_shards.py shards/dubai
    python launch/verify_shards.py s3://bucket/shards/dubai
"""

import argparse
import sys

from engine.cli import HelpFormatter
from engine.data.shards.verify import verify_shards
from engine.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("shards", metavar="FOLDER_OR_URL", help="shard folder or URL")
    args = parser.parse_args(argv)
    try:
        checks = verify_shards(args.shards, lambda check: print(check.line(), flush=True))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    bad = sum(not check.ok for check in checks)
    print(f"{len(checks) - bad} of {len(checks)} shards match {args.shards}")
    return 1 if bad else 0
