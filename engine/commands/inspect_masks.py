"""Inspect masks: encoding, every colour/value with pixel count, share and file count.

Example:
    python launch/inspect_masks.py "data/Tile */masks/*.png" --write-classes classes.yaml
"""

import argparse
import os
import sys
from pathlib import Path

from engine.cli import HelpFormatter
from engine.data.sources.mask_inspect import draft_classes_yaml, inspect_masks
from engine.data.sources.pairing import PairingError, expand_glob, unique_files
from engine.data.sources.pictures import ImageReadError


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("masks", nargs="+", help="mask files or globs (quote globs)")
    parser.add_argument("--write-classes", type=Path, help="write a draft classes file here")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --write-classes file"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes reading masks")
    args = parser.parse_args(argv)
    target = args.write_classes
    try:
        if target and target.exists() and not args.overwrite:
            raise PairingError(
                f"{target}: already exists (it may hold your edits); pass --overwrite or "
                "choose another path"
            )
        paths = unique_files([p for pattern in args.masks for p in expand_glob(pattern, "masks")])
        report = inspect_masks(paths, workers=args.workers)
    except (ImageReadError, PairingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kinds.items()))
    print(f"{report.num_files} masks ({kinds}); encoding: {report.encoding}")
    print(report.table())
    if target:
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        partial.write_text(draft_classes_yaml(report))
        os.replace(partial, target)  # never a half-written classes file
        print(f"draft classes file written to {target}: edit names and ignore values")
    return 0
