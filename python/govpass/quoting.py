"""Untrusted values shown in an error message: quoted, escaped, cut to a sane length.

A config value or a list line may be megabytes long or hold terminal escapes;
an error line shows at most ``LIMIT`` characters of it, escaped the way every
untrusted string is (:mod:`govpass.safetext`), and says how much was left out.
This module adds only what a message about a *value* needs: quotes, the length
of what was cut, and a bounded form of non-string TOML values.
"""

from __future__ import annotations

import reprlib
from typing import Any

from govpass import safetext

LIMIT = 60
"""Most characters of one untrusted value an error line shows."""

_NESTED = reprlib.Repr()
_NESTED.maxlevel = 3
_NESTED.maxstring = LIMIT
_NESTED.maxother = LIMIT
_NESTED.maxlist = _NESTED.maxtuple = _NESTED.maxdict = 6


def quote(value: Any, limit: int = LIMIT) -> str:
    """`value` for an error line: a string quoted and escaped, at most `limit` of
    its characters, with the length of the rest; other values in short repr form
    (nesting and length bounded, so a hostile TOML array costs nothing to show)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        if len(value) <= limit:
            return f"'{safetext.text(value, limit + 1)}'"
        return f"'{safetext.text(value[:limit], limit * 4)}'... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr of a 10,000-digit integer raises (and would be no use).
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, bool | int | float) or value is None:
        return _short(repr(value), limit)
    return _short(_NESTED.repr(value), limit)


def escape_text(text: str, limit: int = LIMIT) -> str:
    """`text` unquoted, with unprintable characters escaped, cut to `limit` characters."""
    return safetext.text(text, limit)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def kind_of(value: Any) -> str:
    """What a TOML value is, in the words of its format (for 'got an array')."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
