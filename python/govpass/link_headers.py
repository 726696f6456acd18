"""Link-layer headers of captured frames: where the IP packet lies, and how a new
IP packet is put behind a captured frame's header.

Covered: Ethernet with any stack of 802.1Q / 802.1ad / 0x9100 tags (up to
``MAX_VLAN_TAGS``), PPPoE session frames (ethertype 0x8864) behind those, Linux
cooked captures (SLL, SLL2: a PPP interface there has ARPHRD_PPP and an ethertype
in the protocol field; an Ethernet one may carry PPPoE or a tag put back by
libpcap), bare PPP (with or without the ff 03 address and control bytes, with or
without a direction byte), PPPoE without Ethernet, BSD/OpenBSD loopback and raw IP.

A frame whose header is cut short, whose PPPoE length disagrees with the IP packet
it carries, or that holds anything but IPv4/IPv6 is "no IP": the caller copies it
unchanged. Only the PPPoE header has a length field; a new packet behind it gets
its own length there (:func:`wrap`).
"""

from __future__ import annotations

from dataclasses import dataclass

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9  # PPP, with or without the HDLC-like ff 03 in front
LINKTYPE_RAW_BSD = 12  # DLT_RAW on most BSDs; seen in files written there
LINKTYPE_RAW_OPENBSD = 14
LINKTYPE_PPP_HDLC = 50  # PPP in HDLC-like framing (ff 03); Cisco's 0f/8f form is not read
LINKTYPE_PPP_ETHER = 51  # PPPoE header first, no Ethernet header
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_PPP_PPPD = 166  # direction byte (0 in, 1 out) in place of ff, then 03
LINKTYPE_PPP_WITH_DIR = 204  # direction byte, then a LINKTYPE_PPP frame
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

LINK_NAMES: dict[int, str] = {
    LINKTYPE_NULL: "null",
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_PPP: "ppp",
    LINKTYPE_RAW_BSD: "raw",
    LINKTYPE_RAW_OPENBSD: "raw",
    LINKTYPE_PPP_HDLC: "ppp-hdlc",
    LINKTYPE_PPP_ETHER: "pppoe",
    LINKTYPE_RAW: "raw",
    LINKTYPE_LOOP: "loop",
    LINKTYPE_LINUX_SLL: "linux-sll",
    LINKTYPE_PPP_PPPD: "ppp-pppd",
    LINKTYPE_PPP_WITH_DIR: "ppp-with-dir",
    LINKTYPE_IPV4: "raw-ipv4",
    LINKTYPE_IPV6: "raw-ipv6",
    LINKTYPE_LINUX_SLL2: "linux-sll2",
}

RAW_LINKTYPES = (
    LINKTYPE_RAW,
    LINKTYPE_RAW_BSD,
    LINKTYPE_RAW_OPENBSD,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_PPPOE_SESSION = 0x8864
ETHERTYPE_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
# Real stacks have one to three tags; a frame with more is taken for garbage.
MAX_VLAN_TAGS = 8

PPPOE_HEADER_LEN = 6
PPPOE_VER_TYPE = 0x11
PPPOE_CODE_SESSION = 0x00
PPP_IPV4 = 0x0021
PPP_IPV6 = 0x0057
PPP_ADDRESS_CONTROL = b"\xff\x03"
PPP_CONTROL = 0x03

# AF_INET is 2 everywhere; AF_INET6 is 10 (Linux), 24 (NetBSD/OpenBSD), 28 (FreeBSD),
# 30 (macOS).
AF_INET_VALUES = (2,)
AF_INET6_VALUES = (10, 24, 28, 30)


class UnsupportedLinkType(ValueError):
    """A link type this module does not read."""


@dataclass(frozen=True)
class Located:
    """Where the IP packet lies in a frame: ``frame[start:end]``. ``pppoe_length_at``
    is the offset of the PPPoE length field in the header, when there is one."""

    start: int
    end: int
    pppoe_length_at: int | None = None


def locate(linktype: int, frame: bytes) -> Located | None:
    """Where the IP packet is in `frame`, or None when the frame carries none (or
    its header cannot be trusted)."""
    if linktype in RAW_LINKTYPES:
        return _ip_at(frame, 0)
    if linktype == LINKTYPE_ETHERNET:
        return _after_ethertype(frame, 12, 14)
    if linktype == LINKTYPE_LINUX_SLL:
        return _after_ethertype(frame, 14, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _after_ethertype(frame, 0, 20) if len(frame) >= 20 else None
    if linktype == LINKTYPE_PPP_ETHER:
        return _pppoe(frame, 0)
    if linktype == LINKTYPE_PPP:
        return _ppp(frame, 0, optional_address=True)
    if linktype == LINKTYPE_PPP_HDLC:
        return _ppp(frame, 0, optional_address=False)
    if linktype == LINKTYPE_PPP_WITH_DIR:
        return _ppp(frame, 1, optional_address=True) if frame[:1] in (b"\x00", b"\x01") else None
    if linktype == LINKTYPE_PPP_PPPD:
        if len(frame) < 2 or frame[0] > 1 or frame[1] != PPP_CONTROL:
            return None
        return _ppp_protocol(frame, 2)
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return _loopback(frame)
    raise UnsupportedLinkType(f"link type {linktype} is not supported")


def wrap(header: bytes, pppoe_length_at: int | None, packet: bytes) -> bytes:
    """`packet` behind a captured frame's link `header`, with the PPPoE length (if
    the header has one) made that of the new payload."""
    if pppoe_length_at is None:
        return header + packet
    length = len(header) - (pppoe_length_at + 2) + len(packet)
    if length > 0xFFFF:
        raise ValueError(f"a {len(packet)}-byte packet does not fit in a PPPoE frame")
    return (
        header[:pppoe_length_at]
        + length.to_bytes(2, "big")
        + header[pppoe_length_at + 2 :]
        + packet
    )


def _ethertype(frame: bytes, at: int) -> int | None:
    if len(frame) < at + 2:
        return None
    return int.from_bytes(frame[at : at + 2], "big")


def _after_ethertype(frame: bytes, type_at: int, payload_at: int) -> Located | None:
    """The payload of an ethertype at `type_at`, through any VLAN tags: each tag
    puts 2 bytes of tag control and the next ethertype in front of the payload."""
    ethertype = _ethertype(frame, type_at)
    tags = 0
    while ethertype in ETHERTYPE_VLAN_TAGS:
        tags += 1
        if tags > MAX_VLAN_TAGS:
            return None
        ethertype = _ethertype(frame, payload_at + 2)
        payload_at += 4
    if ethertype == ETHERTYPE_PPPOE_SESSION:
        return _pppoe(frame, payload_at)
    if ethertype == ETHERTYPE_IPV4:
        return _ip_at(frame, payload_at, version=4)
    if ethertype == ETHERTYPE_IPV6:
        return _ip_at(frame, payload_at, version=6)
    return None


def _ip_at(frame: bytes, start: int, version: int | None = None) -> Located | None:
    if len(frame) <= start:
        return None
    found = frame[start] >> 4
    if found not in (4, 6) or (version is not None and found != version):
        return None
    return Located(start, len(frame))


def _pppoe(frame: bytes, at: int) -> Located | None:
    """A PPPoE session header at `at`; its length must cover exactly the PPP
    protocol field and the IP packet's own length."""
    payload_at = at + PPPOE_HEADER_LEN
    if len(frame) < payload_at:
        return None
    if frame[at] != PPPOE_VER_TYPE or frame[at + 1] != PPPOE_CODE_SESSION:
        return None
    length = int.from_bytes(frame[at + 4 : at + 6], "big")
    end = payload_at + length
    if end > len(frame):
        return None
    inner = _ppp_protocol(frame[:end], payload_at)
    if inner is None or _ip_length(frame[inner.start : end]) != end - inner.start:
        return None
    return Located(inner.start, end, at + 4)


def _ppp(frame: bytes, at: int, optional_address: bool) -> Located | None:
    if frame[at : at + 2] == PPP_ADDRESS_CONTROL:
        return _ppp_protocol(frame, at + 2)
    return _ppp_protocol(frame, at) if optional_address else None


def _ppp_protocol(frame: bytes, at: int) -> Located | None:
    """A PPP protocol field at `at`: two bytes, or one when compressed (RFC 1661
    6.5: a protocol number's first byte is even, the last odd)."""
    if len(frame) <= at:
        return None
    if frame[at] & 1:
        protocol, start = frame[at], at + 1
    elif len(frame) >= at + 2:
        protocol, start = int.from_bytes(frame[at : at + 2], "big"), at + 2
    else:
        return None
    if protocol == PPP_IPV4:
        return _ip_at(frame, start, version=4)
    if protocol == PPP_IPV6:
        return _ip_at(frame, start, version=6)
    return None


def _ip_length(ip: bytes) -> int | None:
    """The length an IP header says its packet has."""
    if len(ip) >= 20 and ip[0] >> 4 == 4:
        return int.from_bytes(ip[2:4], "big")
    if len(ip) >= 40 and ip[0] >> 4 == 6:
        return 40 + int.from_bytes(ip[4:6], "big")
    return None


def _loopback(frame: bytes) -> Located | None:
    if len(frame) < 5:
        return None
    families = {int.from_bytes(frame[:4], "big"), int.from_bytes(frame[:4], "little")}
    version = frame[4] >> 4
    if version == 4 and families & set(AF_INET_VALUES):
        return Located(4, len(frame))
    if version == 6 and families & set(AF_INET6_VALUES):
        return Located(4, len(frame))
    return None
