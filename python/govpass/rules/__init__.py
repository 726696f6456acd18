"""Kernel interception rules (iptables / nftables), planned as data and then applied.

Planning is pure (:mod:`.iptables`, :mod:`.nftables`); :mod:`.detect` probes which
backend works here; :mod:`.manager` installs, removes and shows.
"""

from govpass.rules.detect import (
    BackendName,
    BackendStatus,
    Detection,
    detect,
    unavailable_reason,
)
from govpass.rules.manager import (
    Installed,
    InstallResult,
    RemoveResult,
    install,
    inventory,
    preflight,
    remove,
    render_plan,
    show,
)
from govpass.rules.runner import CommandResult, Runner
from govpass.rules.spec import RuleSpec, RuleSpecError

__all__ = [
    "BackendName",
    "BackendStatus",
    "CommandResult",
    "Detection",
    "InstallResult",
    "Installed",
    "RemoveResult",
    "RuleSpec",
    "RuleSpecError",
    "Runner",
    "detect",
    "install",
    "inventory",
    "preflight",
    "remove",
    "render_plan",
    "show",
    "unavailable_reason",
]
