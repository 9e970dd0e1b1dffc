"""Numbers from the environment (``TERRASEG_*`` limits, deadlines and retries), checked.

One reader for every setting, so each says the same thing when it is wrong:
``NAME='x' is not a number`` or ``NAME='-1' must be > 0``, raised as the caller's own
one-line error class.
"""

from __future__ import annotations

import math
import os

from engine.errors import UserError


def env_number(
    name: str,
    default: float,
    *,
    error: type[Exception] = UserError,
    integer: bool = False,
    positive: bool = False,
) -> float:
    """The number in the environment variable ``name``, ``default`` when unset or empty.

    Args:
        name: The variable.
        default: Its value when unset or empty.
        error: The exception raised for a bad value (a one-line message naming ``name``).
        integer: Require a whole number (returned as an ``int``).
        positive: Require ``> 0`` (else ``>= 0``). Infinite and NaN values are refused.

    Raises:
        error: for text that is not a (whole) number, or out of range.
    """
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value: float = int(text) if integer else float(text)
    except ValueError as cause:
        kind = "an integer" if integer else "a number"
        raise error(f"{name}={text!r} is not {kind}") from cause
    if not math.isfinite(value) or not (value > 0 if positive else value >= 0):
        raise error(f"{name}={text!r} must be {'> 0' if positive else '>= 0'}")
    return value
