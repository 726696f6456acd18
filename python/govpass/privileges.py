"""Whether this process may capture and inject: root or the two capabilities on
Linux, root on FreeBSD, an elevated Administrator token on Windows."""

from __future__ import annotations

import os
import sys

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NEEDED = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))


def is_admin() -> bool:
    """Root (uid 0) on Linux and FreeBSD; on Windows a token in the Administrators
    group that is elevated (what loading the WinDivert driver needs)."""
    if sys.platform == "win32":
        import ctypes

        try:
            return bool(ctypes.windll.shell32.IsUserAnAdmin())  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            return False
    return os.geteuid() == 0


def effective_capabilities() -> int | None:
    """The CapEff bit set of this process (None when unknown: not Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def missing_capabilities() -> list[str]:
    """Names of the needed Linux capabilities this process lacks. Root counts by its
    capabilities, not its uid: root with an emptied bounding set (a container, or
    ``setpriv --bounding-set=-all``) can neither bind a queue nor open a raw socket."""
    caps = effective_capabilities() if sys.platform.startswith("linux") else None
    if caps is None:
        return [] if is_admin() else [name for name, _ in NEEDED]
    return [name for name, bit in NEEDED if not caps >> bit & 1]
