"""Link-layer headers: frames built with dpkt (and by hand where dpkt packs no such
stack) for each encapsulation, located, and new packets wrapped behind them."""

from __future__ import annotations

import struct
from typing import Any

import dpkt
import pytest
from govpass.link_headers import (
    LINK_NAMES,
    MAX_VLAN_TAGS,
    Located,
    UnsupportedLinkType,
    locate,
    wrap,
)

MAC_A, MAC_B = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"


def ipv4(payload: bytes = b"\x16\x03\x01hello") -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=443, seq=1, flags=dpkt.tcp.TH_ACK, data=payload)
    ip = dpkt.ip.IP(src=b"\xc6\x33\x64\x02", dst=b"\xcb\x00\x71\x09", p=6, data=tcp)
    ip.len = len(ip)
    return bytes(ip)


def ipv6(payload: bytes = b"\x16\x03\x01hello") -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=443, seq=1, flags=dpkt.tcp.TH_ACK, data=payload)
    ip = dpkt.ip6.IP6(
        src=bytes.fromhex("20010db8" + "00" * 11 + "02"),
        dst=bytes.fromhex("20010db8" + "00" * 11 + "09"),
        nxt=6,
        hlim=64,
        data=tcp,
    )
    ip.plen = len(tcp)
    return bytes(ip)


def pppoe(ip: bytes, compressed: bool = False, length: int | None = None) -> bytes:
    proto = 0x21 if ip[0] >> 4 == 4 else 0x57
    # dpkt's PPPoE PPP header packs 0x21/0x57 in the compressed form only.
    body = (bytes([proto]) if compressed else struct.pack("!H", proto)) + ip
    session: Any = dpkt.pppoe.PPPoE(session=0x1234, len=len(body) if length is None else length)
    return bytes(session) + body


def tags(*pairs: tuple[int, int]) -> bytes:
    """VLAN tags as (tag ethertype, VLAN id): each is the tag's type then its TCI."""
    return b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in pairs)


def ethernet(inner_type: int, body: bytes, stack: bytes = b"") -> bytes:
    """An Ethernet frame: the first 2 bytes of `stack` (if any) stand where the
    ethertype would, so `stack` is the tag types and TCIs in wire order."""
    return MAC_A + MAC_B + stack + struct.pack("!H", inner_type) + body


def test_dpkt_reads_our_qinq_pppoe_frame_the_same_way() -> None:
    ip = ipv4()
    frame = ethernet(0x8864, pppoe(ip), tags((0x88A8, 100), (0x8100, 7)))
    eth: Any = dpkt.ethernet.Ethernet(frame)
    assert [t.id for t in eth.vlan_tags] == [100, 7]
    assert eth.data.len == 2 + len(ip)
    found = locate(1, frame)
    assert found == Located(len(frame) - len(ip), len(frame), 14 + 8 + 4)
    assert frame[found.start : found.end] == bytes(eth.data.data.data)


@pytest.mark.parametrize("make_ip", [ipv4, ipv6])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(
    "stack",
    [
        b"",
        tags((0x8100, 42)),
        tags((0x88A8, 100), (0x8100, 7)),
        tags((0x9100, 100), (0x8100, 7)),
        tags((0x88A8, 1), (0x88A8, 2), (0x8100, 3)),
    ],
    ids=["untagged", "vlan", "qinq-88a8", "qinq-9100", "three-tags"],
)
def test_pppoe_over_ethernet_and_vlans(make_ip: Any, compressed: bool, stack: bytes) -> None:
    ip = make_ip()
    frame = ethernet(0x8864, pppoe(ip, compressed), stack)
    start = 14 + len(stack) + 6 + (1 if compressed else 2)
    assert locate(1, frame) == Located(start, len(frame), 14 + len(stack) + 4)


def test_ethernet_padding_after_the_pppoe_payload_is_not_ip() -> None:
    ip = ipv4(b"")  # 40 bytes: with PPPoE 62, no padding needed; add some anyway
    frame = ethernet(0x8864, pppoe(ip)) + b"\x00" * 6
    found = locate(1, frame)
    assert found is not None and found.end == len(frame) - 6
    assert frame[found.start : found.end] == ip


@pytest.mark.parametrize("make_ip", [ipv4, ipv6])
def test_plain_ethernet_and_vlans_still_work(make_ip: Any) -> None:
    ip = make_ip()
    ethertype = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
    assert locate(1, ethernet(ethertype, ip)) == Located(14, 14 + len(ip))
    qinq = ethernet(ethertype, ip, tags((0x88A8, 5), (0x8100, 6)))
    assert locate(1, qinq) == Located(22, 22 + len(ip))


def sll(protocol: int, body: bytes, hatype: int = 1, addr: bytes = MAC_A) -> bytes:
    return struct.pack("!HHH8sH", 4, hatype, len(addr), addr, protocol) + body


def sll2(protocol: int, body: bytes, hatype: int = 1, addr: bytes = MAC_A) -> bytes:
    return struct.pack("!HHIHBB8s", protocol, 0, 3, hatype, 4, len(addr), addr) + body


@pytest.mark.parametrize(("linktype", "build", "hdr"), [(113, sll, 16), (276, sll2, 20)])
def test_cooked_captures(linktype: int, build: Any, hdr: int) -> None:
    ip4, ip6 = ipv4(), ipv6()
    # ppp0 on Linux: ARPHRD_PPP (512), no address, the protocol field an ethertype.
    assert locate(linktype, build(0x0800, ip4, 512, b"")) == Located(hdr, hdr + len(ip4))
    assert locate(linktype, build(0x86DD, ip6, 512, b"")) == Located(hdr, hdr + len(ip6))
    # "any" on a router: the Ethernet side's PPPoE session frames, and a VLAN tag
    # libpcap put back (tag type in the protocol field, then TCI and ethertype).
    frame = build(0x8864, pppoe(ip4))
    assert locate(linktype, frame) == Located(hdr + 8, len(frame), hdr + 4)
    tagged = build(0x8100, struct.pack("!HH", 7, 0x8864) + pppoe(ip4))
    assert locate(linktype, tagged) == Located(hdr + 12, len(tagged), hdr + 8)


def test_bare_ppp_link_types() -> None:
    ip = ipv4()
    v6 = ipv6()
    assert locate(9, b"\xff\x03\x00\x21" + ip) == Located(4, 4 + len(ip))
    assert locate(9, b"\x00\x57" + v6) == Located(2, 2 + len(v6))
    assert locate(9, b"\x21" + ip) == Located(1, 1 + len(ip))
    assert locate(50, b"\xff\x03\x00\x21" + ip) == Located(4, 4 + len(ip))
    assert locate(50, b"\x00\x21" + ip) is None  # HDLC framing is not optional there
    assert locate(51, pppoe(ip)) == Located(8, 8 + len(ip), 4)
    assert locate(166, b"\x01\x03\x00\x21" + ip) == Located(4, 4 + len(ip))
    assert locate(166, b"\x02\x03\x00\x21" + ip) is None
    assert locate(204, b"\x00\xff\x03\x00\x21" + ip) == Located(5, 5 + len(ip))
    assert locate(204, b"\x01\x00\x57" + v6) == Located(3, 3 + len(v6))
    assert locate(204, b"\x07\x00\x21" + ip) is None
    # LCP (0xc021) and IPCP (0x8021) carry no IP.
    assert locate(9, b"\xff\x03\xc0\x21\x01\x01\x00\x04") is None
    assert locate(51, pppoe(ip)[:6] + b"\x80\x21" + ip) is None


def test_the_vlan_tag_limit() -> None:
    ip = ipv4()
    at_limit = ethernet(0x0800, ip, tags(*[(0x8100, n) for n in range(MAX_VLAN_TAGS)]))
    assert locate(1, at_limit) == Located(14 + 4 * MAX_VLAN_TAGS, len(at_limit))
    over = ethernet(0x0800, ip, tags(*[(0x8100, n) for n in range(MAX_VLAN_TAGS + 1)]))
    assert locate(1, over) is None
    assert locate(1, MAC_A + MAC_B + b"\x81\x00\x00\x01" * 400) is None


def test_hostile_frames_carry_no_ip() -> None:
    ip = ipv4()
    good = ethernet(0x8864, pppoe(ip), tags((0x88A8, 1), (0x8100, 2)))
    # Cut anywhere inside the headers, or inside the packet the PPPoE length covers.
    for cut in range(len(good)):
        assert locate(1, good[:cut]) is None, cut
    hostile = [
        ethernet(0x8864, pppoe(ip, length=len(ip) + 3)),  # longer than the frame
        ethernet(0x8864, pppoe(ip, length=len(ip) + 1) + b"\x00"),  # longer than the IP
        ethernet(0x8864, pppoe(ip, length=len(ip) - 10)),  # shorter than the IP
        ethernet(0x8864, pppoe(ip, length=0)),
        ethernet(0x8864, pppoe(ip, length=0xFFFF)),
        ethernet(0x8864, b"\x11\x09" + pppoe(ip)[2:]),  # discovery code (PADI)
        ethernet(0x8864, b"\x21" + pppoe(ip)[1:]),  # version 2
        ethernet(0x8863, pppoe(ip)),  # discovery ethertype
        ethernet(0x8864, pppoe(ipv6())[:6] + b"\x00\x21" + ipv6()),  # IPv4 protocol, v6 bytes
        ethernet(0x0800, ipv6()),
        ethernet(0x86DD, b""),
        sll2(0x0800, b"")[:19],
    ]
    for frame in hostile:
        assert locate(1 if frame[:6] == MAC_A else 276, frame) is None, frame.hex()


def test_unknown_link_type_is_an_error() -> None:
    with pytest.raises(UnsupportedLinkType, match="link type 105"):
        locate(105, b"\x00" * 40)
    assert {LINK_NAMES[n] for n in (9, 50, 51, 166, 204)} == {
        "ppp",
        "ppp-hdlc",
        "pppoe",
        "ppp-pppd",
        "ppp-with-dir",
    }


@pytest.mark.parametrize("compressed", [False, True])
def test_wrap_puts_the_new_length_in_the_pppoe_header(compressed: bool) -> None:
    ip = ipv4(b"x" * 900)
    frame = ethernet(0x8864, pppoe(ip, compressed), tags((0x88A8, 100), (0x8100, 7)))
    found = locate(1, frame)
    assert found is not None
    header = frame[: found.start]
    segment = ipv4(b"\x16\x03\x01\x02\x00")
    out = wrap(header, found.pppoe_length_at, segment)
    eth: Any = dpkt.ethernet.Ethernet(out)
    assert [t.id for t in eth.vlan_tags] == [100, 7]
    assert eth.data.len == (1 if compressed else 2) + len(segment)
    assert locate(1, out) == Located(found.start, len(out), found.pppoe_length_at)
    assert out[: found.pppoe_length_at] == header[: found.pppoe_length_at]
    assert wrap(b"\x00\x21", None, segment) == b"\x00\x21" + segment
    with pytest.raises(ValueError, match="does not fit"):
        wrap(header, found.pppoe_length_at, b"\x00" * 0xFFFF)
