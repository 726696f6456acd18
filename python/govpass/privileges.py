"""Whether this process may capture and inject: root, or the two capabilities."""

from __future__ import annotations

import os

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NEEDED = (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))


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
    """Names of the needed capabilities this process lacks (empty for root)."""
    if os.geteuid() == 0:
        return []
    caps = effective_capabilities()
    return [name for name, bit in NEEDED if not caps >> bit & 1]
