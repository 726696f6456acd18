"""`govpass doctor --json`: the checks as one JSON document for scripts.

The document is an array with one object per check, in the order the text mode
prints them. Each object has exactly these keys:

* ``name`` (string): what was checked, e.g. ``"nfqueue"``, ``"offload eth0"``;
* ``status`` (string): ``"ok"``, ``"warn"`` or ``"fail"``;
* ``detail`` (string): what was found;
* ``fix`` (string): what to do about it, ``""`` when there is nothing to do.

Names and details quote interfaces, files and other commands' output: every
string is escaped as JSON escapes it with only ASCII out (control characters and
anything past ASCII as ``\\uNNNN``), and bytes that were not UTF-8 (kept by Python
as lone surrogates) come out as the text ``\\udcNN``, never as a lone surrogate,
which strict JSON readers refuse. Strings are not cut (the text mode cuts them).

The exit status is the text mode's: 1 when any check has status ``"fail"``, else 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from govpass.doctor import Check

KEYS = ("name", "status", "detail", "fix")


def exit_status(results: Sequence[Check]) -> int:
    """1 when a check failed, else 0 (warnings do not fail)."""
    return 1 if any(r.status == "fail" for r in results) else 0


def _text(value: str) -> str:
    # backslashreplace turns a lone surrogate into the six characters "\udcNN".
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def document(results: Sequence[Check]) -> str:
    rows = [
        {"name": _text(r.name), "status": r.status, "detail": _text(r.detail), "fix": _text(r.fix)}
        for r in results
    ]
    return json.dumps(rows, indent=2, ensure_ascii=True)
