"""govpass.rules.from_config: a configuration's rules and firewall choice."""

from __future__ import annotations

import pytest
from govpass.config import load
from govpass.interfaces import Detection
from govpass.rules.from_config import WATCH_RESEND_MS, firewall_preference, rule_spec


@pytest.mark.parametrize(
    ("firewall", "preference"),
    [("auto", None), ("none", None), ("nftables", "nftables"), ("iptables", "iptables")],
)
def test_firewall_preference(firewall: str, preference: str | None) -> None:
    assert firewall_preference(load(env={}, flags={"firewall": firewall})) == preference


def test_rule_spec_carries_the_settings() -> None:
    config = load(
        env={},
        flags={
            "mode": "router",
            "iface": "wan0",
            "ports": "443,8443",
            "block-quic": "all",
            "prefilter": "conntrack",
            "queue-num": "300",
            "workers": "3",
            "collect-timeout": "100",
        },
    )
    spec = rule_spec(config, detection=Detection())
    assert spec.mode == "router" and spec.interfaces == ("wan0",)
    assert spec.ports == (443, 8443)
    assert spec.block_quic == "all" and spec.prefilter == "conntrack"
    assert (spec.queue_num, spec.queue_count) == (300, 3)
    assert spec.prefilter_age_ms == 200 and not spec.inbound
    assert spec.kernel_split is None


def test_learning_watches_replies_for_as_long_as_hellos_are_resent() -> None:
    spec = rule_spec(load(env={}, flags={"strategy": "auto"}), detection=Detection())
    assert spec.inbound and spec.prefilter_age_ms == WATCH_RESEND_MS
