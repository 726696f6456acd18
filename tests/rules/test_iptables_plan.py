"""The planned iptables argv lists, and what their u32 expressions match on real bytes."""

from __future__ import annotations

import ssl
import struct

import pytest
from govpass.rules import RuleSpec
from govpass.rules import iptables as ipt
from hypothesis import given
from hypothesis import strategies as st
from rules_u32 import u32_match

V4 = ipt.U32_CLIENT_HELLO_V4
V6 = ipt.U32_CLIENT_HELLO_V6
PSH_ACK, ACK, SYN = 0x18, 0x10, 0x02


def client_hello() -> bytes:
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="test.example")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


HELLO = client_hello()


def tcp(payload: bytes, doff: int = 5, flags: int = PSH_ACK) -> bytes:
    options = b"\x01" * (doff * 4 - 20)  # NOPs
    head = struct.pack("!HHIIBBHHH", 40000, 443, 1, 1, doff << 4, flags, 64240, 0, 0)
    return head + options + payload


def ipv4(segment: bytes, ihl: int = 5, frag: int = 0) -> bytes:
    options = b"\x01" * (ihl * 4 - 20)
    total = ihl * 4 + len(segment)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, 6, 0,
                       bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]))  # fmt: skip
    return head + options + segment


def ipv6(segment: bytes, next_header: int = 6) -> bytes:
    src = bytes.fromhex("20010db8010000000000000000000001")
    dst = bytes.fromhex("20010db8010000000000000000000002")
    return struct.pack("!IHBB", 0x60000000, len(segment), next_header, 64) + src + dst + segment


# ---------------------------------------------------------------- exact plans


def test_host_ipv4_exact() -> None:
    q = ["-j", "NFQUEUE", "--queue-num", "200", "--queue-bypass"]
    pre = ["iptables", "-w", "-t", "mangle"]
    assert ipt.plan_install(RuleSpec(), "ipv4") == [
        [*pre, "-N", "GOVPASS"],
        [*pre, "-N", "GOVPASS_POST"],
        [*pre, "-A", "GOVPASS", "-m", "mark", "--mark", "0x10000000/0x10000000", "-j", "RETURN"],
        [*pre, "-A", "GOVPASS", "-o", "lo", "-j", "RETURN"],
        [*pre, "-A", "GOVPASS", "-p", "tcp", "-m", "tcp", "--tcp-flags", "SYN", "SYN",
         "-j", "RETURN"],
        [*pre, "-A", "GOVPASS", "-m", "connbytes", "--connbytes", "12:",
         "--connbytes-dir", "original", "--connbytes-mode", "packets", "-j", "RETURN"],
        [*pre, "-A", "GOVPASS", "-m", "connmark", "--mark", "0x20000000/0x20000000", *q],
        [*pre, "-A", "GOVPASS", "-m", "u32", "--u32", V4,
         "-j", "CONNMARK", "--or-mark", "0x20000000"],
        [*pre, "-A", "GOVPASS", "-m", "u32", "--u32", V4, *q],
        [*pre, "-A", "GOVPASS_POST", "-m", "mark", "--mark", "0x10000000/0x10000000",
         "-m", "connmark", "--mark", "0x20000000/0x20000000",
         "-j", "CONNMARK", "--and-mark", "0xdfffffff"],
        [*pre, "-I", "OUTPUT", "1", "-p", "tcp", "-m", "tcp", "--dport", "443", "-j", "GOVPASS"],
        [*pre, "-I", "POSTROUTING", "1", "-p", "tcp", "-m", "tcp", "--dport", "443",
         "-j", "GOVPASS_POST"],
    ]  # fmt: skip


def test_u32_expressions_text() -> None:
    assert V4 == (
        "4&0x1FFF=0&&0>>22&0x3C@12>>26&0x3C@0>>16=0x1603&&0>>22&0x3C@12>>26&0x3C@2&0xFF=0x1"
    )
    assert V6 == "4>>8&0xFF=0x6&&52>>26&0x3C@40>>16=0x1603&&52>>26&0x3C@42&0xFF=0x1"


def test_ipv6_uses_ip6tables_and_v6_u32() -> None:
    plan = ipt.plan_install(RuleSpec(), "ipv6")
    assert {argv[0] for argv in plan} == {"ip6tables"}
    u32 = [argv[argv.index("--u32") + 1] for argv in plan if "--u32" in argv]
    assert u32 == [V6, V6]
    assert V4 not in " ".join(" ".join(a) for a in plan)


def test_binary_override() -> None:
    plan = ipt.plan_install(RuleSpec(), "ipv6", "ip6tables-legacy")
    assert {argv[0] for argv in plan} == {"ip6tables-legacy"}
    assert ipt.binary_for("ipv4", "nft") == "iptables-nft"


def test_router_mode_jumps_from_forward_per_wan() -> None:
    spec = RuleSpec(mode="router", interfaces=("wan0", "ppp+"))
    jumps = ipt.jump_rules(spec)
    assert jumps == [
        ["-I", "FORWARD", "1", "-o", "wan0", "-p", "tcp", "-m", "tcp", "--dport", "443",
         "-j", "GOVPASS"],
        ["-I", "FORWARD", "1", "-o", "ppp+", "-p", "tcp", "-m", "tcp", "--dport", "443",
         "-j", "GOVPASS"],
        ["-I", "POSTROUTING", "1", "-p", "tcp", "-m", "tcp", "--dport", "443",
         "-j", "GOVPASS_POST"],
    ]  # fmt: skip
    body = ipt.chain_rules(spec, "ipv4")
    assert ["-A", "GOVPASS", "-o", "lo", "-j", "RETURN"] not in body  # no loopback on FORWARD


def test_host_mode_egress_interfaces() -> None:
    jumps = ipt.jump_rules(RuleSpec(interfaces=("eth0",)))
    assert jumps[0][:5] == ["-I", "OUTPUT", "1", "-o", "eth0"]
    assert len(jumps) == 2


def test_exclusions_come_after_loopback_and_before_queueing() -> None:
    body = ipt.chain_rules(RuleSpec(exclude_interfaces=("wg0", "tun+")), "ipv4")
    flat = [" ".join(r) for r in body]
    assert flat[1] == "-A GOVPASS -o lo -j RETURN"
    assert flat[2] == "-A GOVPASS -o wg0 -j RETURN"
    assert flat[3] == "-A GOVPASS -o tun+ -j RETURN"
    assert all("NFQUEUE" not in r for r in flat[:6])


def test_queue_balance_and_no_bypass() -> None:
    spec = RuleSpec(queue_num=10, queue_count=4, bypass=False)
    queued = [r for r in ipt.chain_rules(spec, "ipv4") if "NFQUEUE" in r]
    assert len(queued) == 2
    for rule in queued:
        assert rule[rule.index("-j") :] == ["-j", "NFQUEUE", "--queue-balance", "10:13"]


def test_custom_marks_ports_and_bound() -> None:
    spec = RuleSpec(mark=0x4, watch_mark=0x80, ports=(443, 8443), max_packets=6)
    text = " ".join(" ".join(a) for a in ipt.plan_install(spec, "ipv4"))
    assert "--mark 0x4/0x4 -j RETURN" in text
    assert "-m connmark --mark 0x80/0x80 -j NFQUEUE" in text
    assert "--or-mark 0x80" in text
    assert "--and-mark 0xffffff7f" in text
    assert "--connbytes 6:" in text
    assert "-m multiport --dports 443,8443 -j GOVPASS" in text


def test_order_of_chain() -> None:
    body = [" ".join(r) for r in ipt.chain_rules(RuleSpec(), "ipv4")]
    kinds = ["mark", "lo", "SYN", "connbytes", "connmark", "CONNMARK", "NFQUEUE"]
    found = []
    for rule in body:
        for kind in kinds:
            if kind in rule and kind not in found:
                found.append(kind)
                break
    assert found == kinds


def test_probe_plan_uses_spare_chain_only() -> None:
    load, unload = ipt.plan_probe(RuleSpec(), "ipv4", "iptables-nft")
    chains = {argv[argv.index("-t") + 3] for argv in load}
    assert chains == {"GOVPASS_PROBE"}
    assert not any(a in ("OUTPUT", "POSTROUTING", "GOVPASS") for argv in load for a in argv)
    assert unload[-1][-2:] == ["-X", "GOVPASS_PROBE"]


# ------------------------------------------------------- iptables-save parsing

SAVE = """# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j GOVPASS
COMMIT
*mangle
:PREROUTING ACCEPT [10:600]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:GOVPASS - [0:0]
:GOVPASS_POST - [0:0]
:OTHER - [0:0]
[5:300] -A OUTPUT -p tcp -m tcp --dport 443 -j GOVPASS
-A OUTPUT -o wan9 -j GOVPASS
-A OUTPUT -j OTHER
-A POSTROUTING -p tcp -m tcp --dport 443 -j GOVPASS_POST
-A GOVPASS -m u32 --u32 "0x4&0x1fff=0x0" -j NFQUEUE --queue-num 200
COMMIT
"""


def test_parse_save_and_plan_remove() -> None:
    state = ipt.parse_save(SAVE)
    assert state.chains == ("GOVPASS", "GOVPASS_POST")
    assert len(state.jumps) == 3  # the filter-table line is not ours to touch
    assert state.rules[0][-3:] == ("NFQUEUE", "--queue-num", "200")
    assert "0x4&0x1fff=0x0" in state.rules[0]
    cmds = ipt.plan_remove(state, "iptables-nft")
    pre = ["iptables-nft", "-w", "-t", "mangle"]
    assert cmds == [
        [*pre, "-D", "OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "443", "-j", "GOVPASS"],
        [*pre, "-D", "OUTPUT", "-o", "wan9", "-j", "GOVPASS"],
        [*pre, "-D", "POSTROUTING", "-p", "tcp", "-m", "tcp", "--dport", "443",
         "-j", "GOVPASS_POST"],
        [*pre, "-F", "GOVPASS"],
        [*pre, "-F", "GOVPASS_POST"],
        [*pre, "-X", "GOVPASS"],
        [*pre, "-X", "GOVPASS_POST"],
    ]  # fmt: skip


def test_parse_save_empty() -> None:
    assert ipt.parse_save("").empty
    assert ipt.parse_save("*mangle\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n").empty


# ------------------------------------------------- u32 semantics on real bytes


@pytest.mark.parametrize("ihl", [5, 6, 15])
@pytest.mark.parametrize("doff", [5, 8, 15])
def test_v4_matches_client_hello_any_header_length(ihl: int, doff: int) -> None:
    assert u32_match(V4, ipv4(tcp(HELLO, doff), ihl))


@pytest.mark.parametrize("doff", [5, 8, 15])
def test_v6_matches_client_hello(doff: int) -> None:
    assert u32_match(V6, ipv6(tcp(HELLO, doff)))


@pytest.mark.parametrize("build", [ipv4, ipv6])
def test_never_syn_or_pure_ack(build: object) -> None:
    expr = V4 if build is ipv4 else V6
    for flags in (SYN, SYN | ACK, ACK, ACK | 0x01, ACK | 0x04):
        for doff in (5, 8, 10):
            assert not u32_match(expr, build(tcp(b"", doff, flags)))  # type: ignore[operator]


def test_short_payload_never_matches() -> None:
    for n in range(6):
        assert not u32_match(V4, ipv4(tcp(HELLO[:n])))
        assert not u32_match(V6, ipv6(tcp(HELLO[:n])))
    assert u32_match(V4, ipv4(tcp(HELLO[:6])))


def test_other_records_do_not_match() -> None:
    app_data = bytes([0x17, 0x03, 0x03, 0x00, 0x20]) + b"\x01" * 32
    server_hello = bytes([0x16, 0x03, 0x03, 0x00, 0x40, 0x02]) + b"\x00" * 64
    http = b"GET / HTTP/1.1\r\nHost: test.example\r\n\r\n"
    for payload in (app_data, server_hello, http, HELLO[6:]):
        assert not u32_match(V4, ipv4(tcp(payload)))
        assert not u32_match(V6, ipv6(tcp(payload)))


def test_v4_non_first_fragment_never_matches() -> None:
    # bytes at the "payload" position of a later fragment are arbitrary data
    assert not u32_match(V4, ipv4(tcp(HELLO), frag=0x00B9))
    assert u32_match(V4, ipv4(tcp(HELLO), frag=0x2000))  # MF set, offset 0: first fragment


def test_v6_extension_header_never_matches() -> None:
    assert not u32_match(V6, ipv6(tcp(HELLO), next_header=0))


@given(
    payload=st.binary(min_size=0, max_size=64),
    ihl=st.integers(5, 15),
    doff=st.integers(5, 15),
    flags=st.sampled_from([ACK, PSH_ACK, ACK | 0x01]),
)
def test_v4_matches_exactly_the_three_bytes(
    payload: bytes, ihl: int, doff: int, flags: int
) -> None:
    expected = len(payload) >= 6 and payload[0] == 0x16 and payload[1] == 3 and payload[5] == 1
    assert u32_match(V4, ipv4(tcp(payload, doff, flags), ihl)) == expected


@given(
    head=st.tuples(st.just(0x16), st.just(0x03), st.integers(0, 255), st.integers(0, 255),
                   st.integers(0, 255), st.just(0x01)),
    tail=st.binary(max_size=32),
    doff=st.integers(5, 15),
)  # fmt: skip
def test_v6_matches_any_hello_like_head(head: tuple[int, ...], tail: bytes, doff: int) -> None:
    assert u32_match(V6, ipv6(tcp(bytes(head) + tail, doff)))


def test_router_queues_are_balanced_by_address_pair_and_the_docs_say_so() -> None:
    from pathlib import Path

    from govpass.rules import nftables as nft
    from govpass.settings import SETTINGS

    spec = RuleSpec(mode="router", interfaces=("wan0",), queue_num=10, queue_count=4)
    targets = {tuple(r[r.index("-j") :]) for r in ipt.chain_rules(spec, "ipv4") if "NFQUEUE" in r}
    # The kernel's hash of --queue-balance (and of nft's range without `fanout`)
    # covers addresses and protocol only; per-CPU fanout would split flows.
    assert targets == {("-j", "NFQUEUE", "--queue-balance", "10:13", "--queue-bypass")}
    assert "fanout" not in nft.queue_statement(spec)
    workers = next(s for s in SETTINGS if s.name == "workers")
    assert "address pair" in workers.help and "not ports" in workers.help
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `workers` |"))
    assert "address pair" in row and "not the ports" in row
    assert "flow hash" not in readme
