"""The one strict parser for whole numbers that come from outside: control
properties, signal numbers, pids, and the numbers in config values.

Python's own tools are too lenient for input from an untrusted peer:
`str.isdigit()` is true for "²" (which `int()` then refuses: a traceback where an
error reply was due), `int()` accepts "١٢" (Arabic-Indic digits), "1_000" and
surrounding spaces, and converting 5,000 digits raises a ValueError of its own
(CPython's limit on int/str conversion).  Here a whole number is a JSON integer
(not a bool, not a float, not even 2.0) or a string of ASCII digits with an
optional sign, at most MAX_DIGITS of them; anything else is a ValueError whose
message can go back to the client as it is.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DIGITS = 18     # every bound sockvisor checks fits; 10**18 < 2**63
_DIGITS = re.compile(r"[+-]?[0-9]{1,%d}" % MAX_DIGITS, re.ASCII)
_UNSIGNED = re.compile(r"[0-9]{1,%d}" % MAX_DIGITS, re.ASCII)


def parse(value: Any, what: str = "value", low: int | None = None,
          high: int | None = None) -> int:
    """`value` as an int within [low, high], or ValueError saying why not."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what} must be a whole number, got {show(value)}")
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError(f"{what} must be a whole number (ASCII digits, at most "
                             f"{MAX_DIGITS}), got {show(value)}")
        value = int(value)
    elif value.bit_length() > 62:
        raise ValueError(f"{what} is out of range")
    if low is not None and value < low:
        raise ValueError(f"{what} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{what} must be at most {high}, got {value}")
    return value


def show(value: Any) -> str:
    """A short repr of client input for an error message."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "a number out of range"   # repr of 4,000 digits is no help
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_digits(text: str) -> bool:
    """Plain ASCII digits, at most MAX_DIGITS: a number rather than a name
    (`uid = 1000`, `stop_signal = 15`).  isdigit() alone is true for "²"."""
    return bool(_UNSIGNED.fullmatch(text))
