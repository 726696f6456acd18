"""The inbound path for auto-learning (RuleSpec.inbound): the planned rules, what
their u32 expression matches on real bytes, and, in network namespaces, which
reply packets actually reach the queue (a few per connection, never bulk data)."""

from __future__ import annotations

import socket
import struct
import sys
import time
from collections.abc import Iterator

import pytest
from govpass.rules import RuleSpec, install, remove
from govpass.rules import iptables as ipt
from govpass.rules import nftables as nft
from govpass.rules.spec import INBOUND_PACKETS
from rules_lab import Lab
from rules_u32 import u32_match

Q = ["-j", "NFQUEUE", "--queue-num", "200", "--queue-bypass"]
SERVER_HELLO = bytes([0x16, 0x03, 0x03, 0x00, 0x7A, 0x02]) + b"\x03\x03" + b"\x00" * 120


def reply_tcp(payload: bytes, flags: int = 0x18, doff: int = 5) -> bytes:
    head = struct.pack("!HHIIBBHHH", 443, 40000, 1, 1, doff << 4, flags, 64240, 0, 0)
    return head + b"\x01" * (doff * 4 - 20) + payload


def v4(segment: bytes, ihl: int = 5) -> bytes:
    total = ihl * 4 + len(segment)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, 0, 64, 6, 0,
                       bytes([203, 0, 113, 9]), bytes([198, 51, 100, 2]))  # fmt: skip
    return head + b"\x01" * (ihl * 4 - 20) + segment


def v6(segment: bytes) -> bytes:
    addr = bytes.fromhex("20010db8000000000000000000000009")
    return struct.pack("!IHBB", 0x60000000, len(segment), 6, 64) + addr + addr + segment


# ---------------------------------------------------------------- plans


def test_off_by_default() -> None:
    spec = RuleSpec()
    assert not spec.inbound
    text = " ".join(" ".join(a) for a in ipt.plan_install(spec, "ipv4"))
    assert "GOVPASS_IN" not in text and "INPUT" not in text
    assert "govpass_in" not in nft.render_table(spec)


def test_host_plan_exact() -> None:
    spec = RuleSpec(inbound=True)
    body = ipt.inbound_rules(spec, "ipv4")
    assert body == [
        ["-A", "GOVPASS_IN", "-i", "lo", "-j", "RETURN"],
        ["-A", "GOVPASS_IN", "-m", "connbytes", "--connbytes", f"{INBOUND_PACKETS + 1}:",
         "--connbytes-dir", "reply", "--connbytes-mode", "packets", "-j", "RETURN"],
        ["-A", "GOVPASS_IN", "-p", "tcp", "-m", "tcp", "--tcp-flags", "RST", "RST", *Q],
        ["-A", "GOVPASS_IN", "-m", "u32", "--u32", ipt.U32_TLS_RECORD_V4, *Q],
    ]  # fmt: skip
    plan = ipt.plan_install(spec, "ipv4")
    args = [a[4:] for a in plan]
    assert args.index(["-N", "GOVPASS_IN"]) < args.index(body[0])
    assert args[-1] == ["-I", "INPUT", "1", "-p", "tcp", "-m", "tcp", "--sport", "443",
                        "-j", "GOVPASS_IN"]  # fmt: skip
    # the chain is filled before anything jumps to it
    assert max(args.index(r) for r in body) < args.index(args[-1])


def test_router_plan_per_wan_interface() -> None:
    spec = RuleSpec(
        inbound=True, mode="router", interfaces=("wan0", "ppp+"), exclude_interfaces=("wg0",),
        ports=(443, 8443), queue_count=2,
    )  # fmt: skip
    jumps = [j for j in ipt.jump_rules(spec) if j[-1] == "GOVPASS_IN"]
    assert jumps == [
        ["-I", "FORWARD", "1", "-i", "wan0", "-p", "tcp", "-m", "multiport",
         "--sports", "443,8443", "-j", "GOVPASS_IN"],
        ["-I", "FORWARD", "1", "-i", "ppp+", "-p", "tcp", "-m", "multiport",
         "--sports", "443,8443", "-j", "GOVPASS_IN"],
    ]  # fmt: skip
    body = [" ".join(r) for r in ipt.inbound_rules(spec, "ipv6")]
    assert "-A GOVPASS_IN -i lo -j RETURN" not in body
    assert body[0] == "-A GOVPASS_IN -i wg0 -j RETURN"
    assert body[-1].endswith(f"{ipt.U32_TLS_RECORD_V6} -j NFQUEUE --queue-balance 200:201 "
                             "--queue-bypass")  # fmt: skip


def test_probe_loads_inbound_rules_into_the_spare_chain() -> None:
    load, _ = ipt.plan_probe(RuleSpec(inbound=True), "ipv4", "iptables-nft")
    text = [" ".join(a) for a in load]
    assert any("--connbytes-dir reply" in t and "GOVPASS_PROBE" in t for t in text)
    assert not any("GOVPASS_IN" in t or "INPUT" in t for t in text)


def test_leftover_inbound_chain_is_removed() -> None:
    save = """*mangle
:INPUT ACCEPT [0:0]
:GOVPASS_IN - [0:0]
-A INPUT -p tcp -m tcp --sport 443 -j GOVPASS_IN
-A GOVPASS_IN -p tcp -m tcp --tcp-flags RST RST -j NFQUEUE --queue-num 200
COMMIT
"""
    state = ipt.parse_save(save)
    assert state.chains == ("GOVPASS_IN",) and len(state.jumps) == 1
    cmds = [" ".join(c[4:]) for c in ipt.plan_remove(state, "iptables")]
    assert cmds == [
        "-D INPUT -p tcp -m tcp --sport 443 -j GOVPASS_IN",
        "-F GOVPASS_IN",
        "-X GOVPASS_IN",
    ]


def test_nft_inbound_chains() -> None:
    host = nft.render_table(RuleSpec(inbound=True))
    assert "\tchain inbound {\n\t\ttype filter hook input priority mangle; policy accept;\n" in host
    assert "\t\tmeta l4proto tcp tcp sport 443 jump govpass_in\n" in host
    assert nft.inbound_body(RuleSpec(inbound=True)) == [
        'iifname "lo" return',
        f"ct reply packets > {INBOUND_PACKETS} return",
        "tcp flags & rst == rst counter queue num 200 bypass",
        "@ih,0,16 0x1603 counter queue num 200 bypass",
    ]
    router = nft.render_table(
        RuleSpec(inbound=True, mode="router", interfaces=("wan0",), ipv6=False)
    )
    assert "type filter hook forward priority mangle; policy accept;" in router
    assert (
        'iifname "wan0" meta nfproto ipv4 meta l4proto tcp tcp sport 443 jump govpass_in' in router
    )


# ---------------------------------------------------------------- u32 on real bytes


@pytest.mark.parametrize("ihl", [5, 6, 15])
@pytest.mark.parametrize("doff", [5, 8, 15])
def test_tls_record_expression_matches_a_server_hello(ihl: int, doff: int) -> None:
    assert u32_match(ipt.U32_TLS_RECORD_V4, v4(reply_tcp(SERVER_HELLO, doff=doff), ihl))
    assert u32_match(ipt.U32_TLS_RECORD_V6, v6(reply_tcp(SERVER_HELLO, doff=doff)))


def test_tls_record_expression_rejects_other_replies() -> None:
    app_data = bytes([0x17, 0x03, 0x03, 0x00, 0x20]) + b"\x01" * 32
    ccs = bytes([0x14, 0x03, 0x03, 0x00, 0x01, 0x01])
    for payload in (b"", app_data, ccs, b"HTTP/1.1 200 OK\r\n", SERVER_HELLO[:3]):
        assert not u32_match(ipt.U32_TLS_RECORD_V4, v4(reply_tcp(payload)))
        assert not u32_match(ipt.U32_TLS_RECORD_V6, v6(reply_tcp(payload)))
    for flags in (0x12, 0x10, 0x14, 0x04):  # SYN-ACK, ACK, RST-ACK, RST without data
        assert not u32_match(ipt.U32_TLS_RECORD_V4, v4(reply_tcp(b"", flags)))


# ---------------------------------------------------------------- real kernel


@pytest.fixture(params=["host", "router"])
def topo(request: pytest.FixtureRequest) -> Lab:
    lab: Lab = request.getfixturevalue("lab" if request.param == "host" else "router_lab")
    return lab


@pytest.fixture
def inbound_installed(topo: Lab, request: pytest.FixtureRequest) -> Iterator[str]:
    lab, backend = topo, request.param
    spec = RuleSpec(queue_num=200, mark=0x10000000, ports=(443, 8443), inbound=True)
    if lab.router is not None:
        assert lab.wan_dev is not None
        spec = RuleSpec(
            queue_num=200, mark=0x10000000, ports=(443, 8443), inbound=True,
            mode="router", interfaces=(lab.wan_dev,),
        )  # fmt: skip
    result = install(spec, lab.gateway.runner, backend)
    assert result.backend == backend
    try:
        yield backend
    finally:
        remove(lab.gateway.runner)


@pytest.mark.netns
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("inbound_installed", ["iptables-nft", "iptables-legacy"], indirect=True)
def test_only_first_replies_reach_the_queue(topo: Lab, inbound_installed: str, family: str) -> None:
    from test_netns_traffic import Consumer, run_client, server_addr

    lab = topo
    consumer = Consumer(lab)
    host = server_addr(lab, family)
    tls = run_client(lab, "tls", host, "443", lab.cafile, "3")
    bulk = run_client(lab, "bulk", host, "443", lab.cafile, str(1 << 20))
    plain = run_client(lab, "plain", host, "443", lab.cafile)
    assert bulk["downloaded"] == 1 << 20 and plain["reply"] == "PLAIN hello, not tls"
    # a refused connection: its RST is the first reply
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    code = (
        "import socket\n"
        f"s = socket.socket({int(af)}, socket.SOCK_STREAM)\n"
        f"try: s.connect(('{host}', 8443))\n"
        "except ConnectionRefusedError: print('refused')\n"
    )
    assert lab.client.run(sys.executable, "-c", code).stdout.strip() == "refused"
    time.sleep(0.2)
    packets = consumer.packets()
    inbound = [p for p in packets if p.get("sport") in (443, 8443)]
    by_conn: dict[int, list[dict[str, object]]] = {}
    for p in inbound:
        by_conn.setdefault(int(p["dport"]), []).append(p)  # type: ignore[call-overload]
    for port in [*tls["ports"], *bulk["ports"]]:
        heads = [p["head"] for p in by_conn.get(port, [])]
        assert 1 <= len(heads) <= INBOUND_PACKETS, (port, heads)
        assert all(str(h).startswith("1603") for h in heads), heads
    assert by_conn.get(plain["ports"][0], []) == [], "plain-TCP replies queued"
    rsts = [p for p in inbound if p["sport"] == 8443]
    assert len(rsts) == 1 and int(rsts[0]["flags"]) & 0x04, rsts  # type: ignore[call-overload]
    # the outbound path is unchanged: one ClientHello per TLS connection
    outbound = [p for p in packets if p.get("dport") == 443]
    assert len(outbound) == len(tls["ports"]) + len(bulk["ports"])
