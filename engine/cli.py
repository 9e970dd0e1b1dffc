"""What every ``launch/`` script shares: help that shows defaults.

A leaf module (it imports nothing from ``engine``), so scripts of every stage use it.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawTextHelpFormatter):
    """Keeps the description's and options' line breaks and shows each option's default.

    Options without a default (``None``), switches (``False``) and required options show
    none; help text that already names its default is left as written.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.required
        if not hidden and action.default is not argparse.SUPPRESS and "default" not in text:
            text += " (default: %(default)s)"
        return text
