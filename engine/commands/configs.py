"""List the experiment configs that ship with terraseg, or print one to start from.

Examples:
    terraseg configs                       # every shipped config, with its first comment line
    terraseg configs show resunet34 > my.yaml
    terraseg train --config resunet34 ...  # a shipped name works wherever a path does
"""

from __future__ import annotations

import argparse
import sys

from engine.cli import HelpFormatter
from engine.configs import CONFIG_DIR, list_configs, shipped_config


def _summary(name: str) -> str:
    """The config's first comment line (what it is for), or ''."""
    path = shipped_config(name)
    for line in path.read_text().splitlines() if path else []:
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand on ``argv`` (the command line when None); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("action", nargs="?", choices=("list", "show", "path"), default="list")
    parser.add_argument("name", nargs="?", help="a shipped config (for show and path)")
    args = parser.parse_args(argv)
    if args.action == "list":
        names = list_configs()
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {_summary(name)}".rstrip())
        print(f"\n({len(names)} files in {CONFIG_DIR}; 'terraseg configs show NAME' prints one)")
        return 0
    path = shipped_config(args.name or "")
    if path is None:
        print(
            f"error: no shipped config {args.name!r}; one of: {', '.join(list_configs())}",
            file=sys.stderr,
        )
        return 2
    print(path.read_text(), end="") if args.action == "show" else print(path)
    return 0
