"""Which operating system this is: the one place govpass reads ``sys.platform``.

Everything that differs by platform asks here (``is_linux()``, ...), so a grep
for these names finds every platform-specific branch. The answer is read at
each call, not at import: tests that set ``sys.platform`` see their value.
"""

from __future__ import annotations

import sys
from typing import Literal

OsName = Literal["linux", "windows", "freebsd", "openbsd", "other"]


def os_name(platform: str | None = None) -> OsName:
    """``platform`` (default: this machine's ``sys.platform``) as one of govpass's names."""
    p = sys.platform if platform is None else platform
    if p.startswith("linux"):
        return "linux"
    if p == "win32":
        return "windows"
    if p.startswith("freebsd"):
        return "freebsd"
    if p.startswith("openbsd"):
        return "openbsd"
    return "other"


def is_linux(platform: str | None = None) -> bool:
    return os_name(platform) == "linux"


def is_windows(platform: str | None = None) -> bool:
    return os_name(platform) == "windows"


def is_freebsd(platform: str | None = None) -> bool:
    return os_name(platform) == "freebsd"


def is_openbsd(platform: str | None = None) -> bool:
    return os_name(platform) == "openbsd"


def platform_text() -> str:
    """This machine's platform as Python names it, for messages."""
    return sys.platform
