"""What the unsplit attempts say: not blocked, blocked by name, by address, or frozen.

Pure functions over :class:`~govpass.probe.attempt.Outcome` lists, so every rule is
tested without a network.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from govpass.probe.attempt import FREEZE, Outcome

NOT_BLOCKED = "not-blocked"
SNI_BLOCK = "sni"
ADDRESS_BLOCK = "address"
FROZEN = "freeze"
FREEZE_MIN, FREEZE_MAX = 14 * 1024, 24 * 1024  # the 16-20 KB window, with slack


@dataclass(frozen=True)
class Diagnosis:
    block: str  # one of the constants above
    reason: str  # words for the report
    failure: str = ""  # the usual failure kind of the blocked attempts


def summary(outcomes: Sequence[Outcome]) -> str:
    """``"ok 3/3"`` or ``"rst 2/3, timeout 1/3"``."""
    n = len(outcomes)
    counts = Counter(o.kind for o in outcomes)
    return ", ".join(f"{kind} {c}/{n}" for kind, c in counts.most_common())


def diagnose(host: Sequence[Outcome], other_sni: Sequence[Outcome]) -> Diagnosis:
    """``host``: unsplit attempts with the host's name (the last one fetching);
    ``other_sni``: the same address with another name."""
    frozen = [o for o in host if o.kind == FREEZE]
    if frozen:
        kb = min(o.received for o in frozen) // 1024
        where = " (the 16-20 KB pattern of a data-centre block)" if _in_window(frozen) else ""
        return Diagnosis(FROZEN, f"freezes after {kb} KB{where}", FREEZE)
    failed = [o for o in host if not o.ok]
    if not failed:
        return Diagnosis(NOT_BLOCKED, f"not blocked ({summary(host)})")
    kind = Counter(o.kind for o in failed).most_common(1)[0][0]
    if other_sni and all(o.answered for o in other_sni):
        return Diagnosis(SNI_BLOCK, f"blocked by name: {summary(host)}; other name ok", kind)
    if other_sni and any(o.answered for o in other_sni):
        return Diagnosis(
            SNI_BLOCK,
            f"blocked by name: {summary(host)}; other name {summary(other_sni)}",
            kind,
        )
    return Diagnosis(
        ADDRESS_BLOCK,
        f"address blocked: {summary(host)}; another name on the same address: "
        f"{summary(other_sni) or 'not tried'}",
        kind,
    )


def _in_window(frozen: Sequence[Outcome]) -> bool:
    return all(FREEZE_MIN <= o.received <= FREEZE_MAX for o in frozen)
