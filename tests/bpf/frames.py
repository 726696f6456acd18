"""Ethernet frames of outbound TCP packets for the eBPF program tests (scapy), and
the reading of the frames the programs give back (headers, checksums)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

FAMILIES = ("ipv4", "ipv6")
ADDRS = {"ipv4": ("192.0.2.1", "198.51.100.7"), "ipv6": ("2001:db8::1", "2001:db8:1::7")}
SPORT, DPORT = 40000, 443
ISN = 1_000_000
ETH = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def record(
    length: int = 512, hs_type: int = 0x01, version: bytes = b"\x03\x01", content: int = 0x16
) -> bytes:
    """A record (handshake unless ``content`` says otherwise): 5-byte header announcing
    ``length``, then a body of that size starting with ``hs_type``."""
    body = bytes([hs_type]) + bytes(range(256)) * (length // 256 + 1)
    return bytes([content]) + version + struct.pack("!H", length) + body[:length]


def ip_layer(family: str, **kw: object) -> Packet:
    src, dst = ADDRS[family]
    if family == "ipv4":
        return IP(src=src, dst=dst, **kw)
    return IPv6(src=src, dst=dst, **kw)


def frame(
    family: str,
    payload: bytes = b"",
    seq: int = ISN,
    *,
    sport: int = SPORT,
    dport: int = DPORT,
    flags: str = "PA",
    tcp_options: list[tuple[str, object]] | None = None,
    ip: Packet | None = None,
) -> bytes:
    """An Ethernet frame of a TCP packet from ADDRS[family][0] to [1]."""
    tcp = TCP(sport=sport, dport=dport, seq=seq % 2**32, ack=1, flags=flags)
    if tcp_options:
        tcp.options = tcp_options
    pkt = Ether(**ETH) / (ip if ip is not None else ip_layer(family)) / tcp
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


# ------------------------------------------------------------- reading outputs


@dataclass(frozen=True)
class Parsed:
    family: str
    ip: bytes  # the IP header (IPv4 with options)
    tcp: bytes  # the TCP header with options
    payload: bytes
    frame: bytes

    @property
    def seq(self) -> int:
        return int(struct.unpack_from("!I", self.tcp, 4)[0])

    @property
    def tcp_checksum_offset(self) -> int:
        return 14 + len(self.ip) + 16


def parse(data: bytes) -> Parsed:
    """The frame's headers and payload, by hand; the IP length must cover the frame exactly."""
    ethertype = struct.unpack_from("!H", data, 12)[0]
    if ethertype == 0x0800:
        ihl = (data[14] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 16)[0]
        assert len(data) == 14 + total, "IPv4 total length does not match the frame"
        ip, seg, family = data[14 : 14 + ihl], data[14 + ihl :], "ipv4"
    else:
        assert ethertype == 0x86DD
        plen = struct.unpack_from("!H", data, 18)[0]
        assert len(data) == 14 + 40 + plen, "IPv6 payload length does not match the frame"
        ip, seg, family = data[14:54], data[54:], "ipv6"
    doff = (seg[12] >> 4) * 4
    return Parsed(family, ip, seg[:doff], seg[doff:], data)


def ones_sum(data: bytes) -> int:
    """The 16-bit one's complement sum of ``data`` (zero padded to even length)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksums_ok(p: Parsed) -> tuple[bool, bool]:
    """(IP header checksum right, TCP checksum right), each a full sum over the data."""
    segment = p.tcp + p.payload
    if p.family == "ipv4":
        ip_ok = ones_sum(p.ip) == 0xFFFF
        pseudo = p.ip[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    else:
        ip_ok = True  # no IPv6 header checksum
        pseudo = p.ip[8:40] + struct.pack("!I3xB", len(segment), 6)
    return ip_ok, ones_sum(pseudo + segment) == 0xFFFF


def without_checksums(p: Parsed) -> bytes:
    """The frame with its IPv4 header and TCP checksums zeroed (a right checksum
    may be written as 0x0000 or 0xFFFF; :func:`checksums_ok` checks them)."""
    out = bytearray(p.frame)
    if p.family == "ipv4":
        out[24:26] = b"\0\0"
    out[p.tcp_checksum_offset : p.tcp_checksum_offset + 2] = b"\0\0"
    return bytes(out)
