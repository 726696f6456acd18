"""The rules a configuration asks for: its RuleSpec and its firewall choice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from govpass import interfaces
from govpass.rules.detect import Preference
from govpass.rules.spec import KernelSplitGate, RuleSpec
from govpass.targeting import learns_strategies, uses_auto

if TYPE_CHECKING:
    from govpass.config import Config

# Resends of a hello happen after about 0.2, 0.6, 1.4, 3 s: enough for auto_retrans.
WATCH_RESEND_MS = 5000


def rule_spec(
    config: Config,
    detection: interfaces.Detection | None = None,
    gate: KernelSplitGate | None = None,
) -> RuleSpec:
    """The rules for `config`. Detected tunnel and VPN interfaces are added to
    the exclusions (unless listed in `iface`); pass `detection` to reuse one.
    `gate` (a KernelSplitGate) leaves whole one-packet hellos to the kernel split."""
    if detection is None:
        detection = interfaces.detect()
    excluded = interfaces.exclusions(detection, config.iface, config.exclude_iface)
    # auto-learning and --strategy auto read the first replies
    watching = uses_auto(config) or learns_strategies(config)
    # Later packets of a record are queued for twice the collect timeout at most; a
    # watched flow's for as long as the stack resends an unanswered hello, also from
    # inside the record (a censor that drops only the segment with the name).
    age_ms = max(1, int(config.collect_timeout * 2))
    if watching:
        age_ms = max(age_ms, WATCH_RESEND_MS)
    return RuleSpec(
        queue_num=config.queue_num,
        queue_count=config.worker_count,
        mark=config.mark,
        watch_mark=config.watch_mark,
        ports=config.port_numbers,
        mode=config.mode,
        interfaces=config.iface,
        exclude_interfaces=excluded,
        ipv4=True,
        ipv6=config.ipv6,
        inbound=watching,
        block_quic=config.block_quic,
        prefilter=config.prefilter,
        prefilter_age_ms=age_ms,
        kernel_split=gate,
    )


def firewall_preference(config: Config) -> Preference | None:
    """The firewall backend `firewall` names; None for auto (the first that works)
    and for none (govpass installs nothing, so there is nothing to choose)."""
    if config.firewall == "nftables" or config.firewall == "iptables":
        return config.firewall
    return None
