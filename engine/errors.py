"""The one error type every stage raises for bad input, files or settings.

A :class:`UserError` is the user's to fix, not a bug: its message is one line that names the
file (or setting) and the problem. ``launch/`` scripts print it as ``error: <message>`` and
exit with code 2; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input, a bad file or a bad setting; the message names it and the problem."""
