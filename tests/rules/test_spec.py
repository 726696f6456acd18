from __future__ import annotations

import dataclasses

import pytest
from govpass.errors import FirewallError, GovpassError
from govpass.rules import RuleSpec, RuleSpecError


def test_defaults() -> None:
    spec = RuleSpec()
    assert spec.mark == 0x10000000
    assert spec.watch_mark == 0x20000000
    assert spec.ports == (443,)
    assert spec.mode == "host"
    assert spec.families == ("ipv4", "ipv6")
    assert spec.bypass is True
    assert spec.queue_last == spec.queue_num
    assert spec.watch_clear_mask == 0xDFFFFFFF


def test_frozen_and_hashable() -> None:
    spec = RuleSpec(ports=[443, 853], interfaces=["eth0"])  # type: ignore[arg-type]
    assert spec.ports == (443, 853) and spec.interfaces == ("eth0",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.mark = 1  # type: ignore[misc]
    assert hash(spec) == hash(RuleSpec(ports=(443, 853), interfaces=("eth0",)))


def test_watch_clear_mask_is_32_bit_complement() -> None:
    assert RuleSpec(watch_mark=0x1).watch_clear_mask == 0xFFFFFFFE
    assert RuleSpec(watch_mark=0x80000000).watch_clear_mask == 0x7FFFFFFF


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"queue_num": 65536}, "queue_num"),
        ({"queue_num": 65535, "queue_count": 2}, "queue_count"),
        ({"queue_count": 0}, "queue_count"),
        ({"mark": 0}, "mark"),
        ({"watch_mark": 1 << 32}, "watch_mark"),
        ({"ports": ()}, "ports"),
        ({"ports": (0,)}, "port"),
        ({"ports": (443, 443)}, "duplicates"),
        ({"ports": tuple(range(1, 17))}, "at most 15"),
        ({"mode": "bridge"}, "mode"),
        ({"mode": "router"}, "WAN interface"),
        ({"interfaces": ("a b",)}, "invalid interface"),
        ({"interfaces": ("x" * 16,)}, "invalid interface"),
        ({"exclude_interfaces": ("e+th",)}, "invalid interface"),
        ({"interfaces": ("eth0",), "exclude_interfaces": ("eth0",)}, "both"),
        ({"ipv4": False, "ipv6": False}, "ipv4"),
        ({"max_packets": 0}, "max_packets"),
    ],
)
def test_invalid(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(RuleSpecError, match=fragment) as err:
        RuleSpec(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err.value, FirewallError)
    assert isinstance(err.value, GovpassError)
    assert isinstance(err.value, ValueError)


def test_wildcard_interface_allowed() -> None:
    assert RuleSpec(mode="router", interfaces=("ppp+",)).interfaces == ("ppp+",)


def test_block_quic_adds_a_drop_chain_for_udp_initials() -> None:
    from govpass.rules import iptables as ipt
    from govpass.rules import nftables as nft

    spec = RuleSpec(block_quic="all", exclude_interfaces=("wg0",))
    v4 = [" ".join(a) for a in ipt.plan_install(spec, "ipv4")]
    assert "iptables -w -t mangle -N GOVPASS_QUIC" in v4
    assert "iptables -w -t mangle -A GOVPASS_QUIC -o wg0 -j RETURN" in v4
    assert any("--u32 4&0x1FFF=0&&0>>22&0x3C@8>>24&0xF0=0xC0:0xD0 -j DROP" in a for a in v4)
    assert "iptables -w -t mangle -I OUTPUT 1 -p udp -m udp --dport 443 -j GOVPASS_QUIC" in v4
    v6 = " ".join(" ".join(a) for a in ipt.plan_install(spec, "ipv6"))
    assert "4>>8&0xFF=0x11&&48>>24&0xF0=0xC0:0xD0" in v6
    table = nft.render_table(spec)
    assert "meta l4proto udp udp dport 443 jump govpass_quic" in table
    assert "@th,64,8 & 0xf0 { 0xc0, 0xd0 } drop" in table
    assert "GOVPASS_QUIC" not in " ".join(" ".join(a) for a in ipt.plan_install(RuleSpec(), "ipv4"))
