"""Inspect masks: encoding, every colour/value with pixel count, share and file count.

Example:
    python launch/inspect_masks.py "data/Tile */masks/*.png" --write-classes classes.yaml
"""

import argparse
import sys
from pathlib import Path

from engine.data.mask_inspect import draft_classes_yaml, inspect_masks
from engine.data.pairing import PairingError, expand_glob


class HelpFormatter(argparse.RawTextHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the description's line breaks and show every default that is set."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("masks", nargs="+", help="mask files or globs (quote globs)")
    parser.add_argument("--write-classes", type=Path, help="write a draft classes file here")
    parser.add_argument("--workers", type=int, default=1, help="processes reading masks")
    args = parser.parse_args()
    try:
        paths = sorted({p for pattern in args.masks for p in expand_glob(pattern, "masks")})
    except PairingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = inspect_masks(paths, workers=args.workers)
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(report.kinds.items()))
    print(f"{report.num_files} masks ({kinds}); encoding: {report.encoding}")
    print(report.table())
    if args.write_classes:
        args.write_classes.write_text(draft_classes_yaml(report))
        print(f"draft classes file written to {args.write_classes}: edit names and ignore values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
