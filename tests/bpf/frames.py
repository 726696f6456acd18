"""Ethernet frames of outbound TCP packets for the eBPF program tests (scapy)."""

from __future__ import annotations

import struct

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
