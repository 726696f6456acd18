"""RuleSpec.block_quic: "off" (no UDP rules), "all" (kernel DROP of QUIC Initials),
"listed" (a UDP flow's first QUIC_PACKETS Initials go to the queue, where govpass
drops those of listed names). The plans, their u32 match on real aioquic Initials,
and, in network namespaces, what the kernel actually queues."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator

import pytest
from govpass.rules import RuleSpec, RuleSpecError, install, remove
from govpass.rules import iptables as ipt
from govpass.rules import nftables as nft
from govpass.rules.detect import nft_error_summary
from govpass.rules.spec import QUIC_PACKETS
from rules_lab import Lab, Netns
from rules_u32 import u32_match

Q = ["-j", "NFQUEUE", "--queue-num", "200", "--queue-bypass"]
FIRST = ["-m", "connbytes", "--connbytes", f"0:{QUIC_PACKETS}", "--connbytes-dir", "original",
         "--connbytes-mode", "packets"]  # fmt: skip


def _text(spec: RuleSpec, family: str = "ipv4") -> str:
    return "\n".join(" ".join(a) for a in ipt.plan_install(spec, family))  # type: ignore[arg-type]


# ---------------------------------------------------------------- plans


def test_modes_and_bool_aliases() -> None:
    assert RuleSpec().block_quic == "off"
    assert RuleSpec(block_quic=True).block_quic == "all"  # type: ignore[arg-type]
    assert RuleSpec(block_quic=False).block_quic == "off"  # type: ignore[arg-type]
    with pytest.raises(RuleSpecError, match="block_quic"):
        RuleSpec(block_quic="some")  # type: ignore[arg-type]


def test_off_installs_no_udp_rules() -> None:
    assert "udp" not in _text(RuleSpec()) and "GOVPASS_QUIC" not in _text(RuleSpec())
    assert "udp" not in nft.render_table(RuleSpec())


def test_listed_queues_the_first_initials_of_a_flow() -> None:
    spec = RuleSpec(block_quic="listed", exclude_interfaces=("wg0",))
    assert ipt.quic_rules(spec, "ipv4") == [
        ["-A", "GOVPASS_QUIC", "-o", "lo", "-j", "RETURN"],
        ["-A", "GOVPASS_QUIC", "-o", "wg0", "-j", "RETURN"],
        ["-A", "GOVPASS_QUIC", *FIRST, "-m", "u32", "--u32", ipt.U32_QUIC_INITIAL_V4, *Q],
    ]
    assert ipt.quic_rules(spec, "ipv6")[-1][-9:-5] == ["-m", "u32", "--u32",
                                                        ipt.U32_QUIC_INITIAL_V6]  # fmt: skip
    args = [a[4:] for a in ipt.plan_install(spec, "ipv4")]
    jump = ["-I", "OUTPUT", "1", "-p", "udp", "-m", "udp", "--dport", "443", "-j", "GOVPASS_QUIC"]
    assert jump in args
    # the chain is filled before anything jumps to it
    assert args.index(ipt.quic_rules(spec, "ipv4")[-1]) < args.index(jump)
    assert "DROP" not in _text(spec)


def test_listed_in_router_mode_with_several_queues() -> None:
    spec = RuleSpec(
        block_quic="listed", mode="router", interfaces=("wan0",), queue_count=4, ports=(443, 8443)
    )
    text = _text(spec, "ipv6")
    assert "-I FORWARD 1 -o wan0 -p udp -m multiport --dports 443,8443 -j GOVPASS_QUIC" in text
    assert "-A GOVPASS_QUIC -o lo" not in text
    assert text.count("--queue-balance 200:203 --queue-bypass") == 3  # TCP twice, QUIC once


def test_all_still_drops_in_the_kernel() -> None:
    spec = RuleSpec(block_quic="all")
    assert ipt.quic_rules(spec, "ipv4")[-1] == [
        "-A", "GOVPASS_QUIC", "-m", "u32", "--u32", ipt.U32_QUIC_INITIAL_V4, "-j", "DROP",
    ]  # fmt: skip
    assert "connbytes --connbytes 0:" not in _text(spec)
    assert nft.quic_body(spec)[-1] == "@th,64,8 & 0xf0 { 0xc0, 0xd0 } drop"


def test_nft_listed_body() -> None:
    spec = RuleSpec(block_quic="listed", queue_count=2)
    assert nft.quic_body(spec) == [
        'oifname "lo" return',
        f"ct original packets < {QUIC_PACKETS + 1} @th,64,8 & 0xf0 {{ 0xc0, 0xd0 }} "
        "counter queue num 200-201 bypass",
    ]
    table = nft.render_table(spec)
    assert "meta l4proto udp udp dport 443 jump govpass_quic" in table
    assert "\tchain govpass_quic {\n" in table


def test_probe_tries_the_listed_rule_in_the_spare_chain() -> None:
    load, _ = ipt.plan_probe(RuleSpec(block_quic="listed"), "ipv4", "iptables-nft")
    rules = [" ".join(a) for a in load if "GOVPASS_PROBE" in a and "u32" in a]
    assert any("connbytes --connbytes 0:8" in r and "NFQUEUE" in r for r in rules)


# ---------------------------------------------------------------- u32 on real Initials


def _initials() -> dict[str, bytes]:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    out = {}
    for name, version in (("v1", 0x00000001), ("v2", 0x6B3343CF)):
        cfg = QuicConfiguration(is_client=True, server_name="blocked.example")
        cfg.supported_versions = [version]
        conn = QuicConnection(configuration=cfg)
        conn.connect(("198.51.100.2", 443), now=0.0)
        out[name] = conn.datagrams_to_send(now=0.0)[0][0]
    return out


def _udp(datagram: bytes, family: str) -> bytes:
    udp = struct.pack("!HHHH", 40000, 443, 8 + len(datagram), 0) + datagram
    if family == "ipv4":
        head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                           bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]))  # fmt: skip
        return head + udp
    addr = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    return struct.pack("!IHBB", 0x60000000, len(udp), 17, 64) + addr + addr + udp


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_u32_matches_real_initials_only(family: str) -> None:
    expr = ipt.U32_QUIC_INITIAL_V4 if family == "ipv4" else ipt.U32_QUIC_INITIAL_V6
    for datagram in _initials().values():
        assert u32_match(expr, _udp(datagram, family))
    short_header = bytes([0x43]) + bytes(40)
    handshake = bytes([0xE0]) + bytes(40)
    for datagram in (short_header, handshake):
        assert not u32_match(expr, _udp(datagram, family))


# ---------------------------------------------------------------- real kernel


@pytest.mark.netns
def test_nft_listed_script_is_valid(netns: Netns) -> None:
    """As test_netns_manager.test_nft_script_is_valid: the kernel checks everything
    but the queue statement (this kernel may lack nft_queue)."""
    spec = RuleSpec(block_quic="listed", queue_count=2, exclude_interfaces=("wg0",))
    script = nft.render_install(spec).replace(nft.queue_statement(spec), "counter")
    res = netns.runner.run(["nft", "-c", "-f", "-"], input_text=script, check=False)
    assert res.ok, nft_error_summary(res.stderr)


@pytest.fixture(params=["host", "router"])
def topo(request: pytest.FixtureRequest) -> Lab:
    lab: Lab = request.getfixturevalue("lab" if request.param == "host" else "router_lab")
    return lab


@pytest.fixture
def listed_installed(topo: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    lab, backend = topo, request.param
    spec = RuleSpec(queue_num=200, mark=0x10000000, block_quic="listed")
    if lab.router is not None:
        assert lab.wan_dev is not None
        spec = RuleSpec(
            queue_num=200, mark=0x10000000, block_quic="listed",
            mode="router", interfaces=(lab.wan_dev,),
        )  # fmt: skip
    result = install(spec, lab.gateway.runner, backend)
    assert result.backend == backend
    try:
        yield backend
    finally:
        remove(lab.gateway.runner)


SEND = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
dst = (sys.argv[1], 443)
# neighbours resolved first (over TCP, which these rules leave alone): a datagram
# sent to an unresolved neighbour may be dropped before the rules see it
socket.create_connection(dst, timeout=5).close()
initial = bytes([0xC3]) + b"\\x00\\x00\\x00\\x01" + bytes(1195)
short = bytes([0x43]) + bytes(59)
socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]  # two flows
for s in socks:
    # Until the first packet's verdict its conntrack entry is unconfirmed, and
    # packets sent meanwhile would each start an entry (and a count) of their own.
    s.sendto(initial, dst)
    time.sleep(0.3)
    for _ in range(11):
        s.sendto(short, dst)
        s.sendto(initial, dst)
    s.sendto(short, dst)
"""


@pytest.mark.netns
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("listed_installed", ["iptables-nft", "iptables-legacy"], indirect=True)
def test_only_a_flows_first_initials_reach_the_queue(
    topo: Lab, listed_installed: str, family: str
) -> None:
    from test_netns_traffic import Consumer, server_addr

    lab = topo
    consumer = Consumer(lab)
    host = server_addr(lab, family)
    lab.client.run(sys.executable, "-c", SEND, host)
    time.sleep(0.2)
    udp = [p for p in consumer.packets() if p["proto"] == 17]
    # two flows, each: 12 Initials and 12 short-header packets interleaved; the
    # conntrack counter includes the short-header ones, so of the first
    # QUIC_PACKETS packets of a flow, the Initials (every other one) are queued
    # and short-header packets never.
    assert len(udp) == 2 * (QUIC_PACKETS // 2), udp
