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


def effective_capabilities() -> int:
    """The CapEff bit set of this process (0 when unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def missing_capabilities() -> list[str]:
    """Names of the needed Linux capabilities this process lacks (empty for root)."""
    if is_admin():
        return []
    caps = effective_capabilities()
    return [name for name, bit in NEEDED if not caps >> bit & 1]
