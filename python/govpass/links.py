"""The network interfaces of this namespace, from rtnetlink (Linux only).

:func:`dump` lists them (index, name, link type) with one RTM_GETLINK dump;
:class:`LinkWatcher` is a socket that becomes readable when an interface
appears, changes or goes away. Both ask the kernel of the calling process's
network namespace, unlike ``/sys/class/net``, which shows the namespace that
mounted it.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from govpass.errors import GovpassError

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTMGRP_LINK = 0x1
IFLA_IFNAME, IFLA_LINKINFO = 3, 18
IFLA_INFO_KIND = 1  # inside IFLA_LINKINFO: the driver's name ("veth", "ifb", ...)
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTA = struct.Struct("=HH")  # length, type

# Link types (ARPHRD_*) and where their packets' IP header starts on egress.
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
_L2_BYTES = {
    ARPHRD_ETHER: 14,
    512: 0,  # PPP (pppoe's ppp0 too: the PPP header comes later)
    519: 0,  # raw IP
    768: 0,  # IPIP tunnel
    769: 0,  # IPv6-in-IPv6 tunnel
    776: 0,  # SIT
    65534: 0,  # none: tun, wireguard
}


class LinkError(GovpassError, OSError):
    """rtnetlink could not be asked."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: int  # ARPHRD_* link type
    driver: str = ""  # IFLA_INFO_KIND of a software device ("ifb", "veth"), "" for hardware

    @property
    def l2_bytes(self) -> int | None:
        """Bytes before the IP header of a packet leaving it, None when unknown."""
        return _L2_BYTES.get(self.kind)

    @property
    def loopback(self) -> bool:
        return self.kind == ARPHRD_LOOPBACK


def _attrs(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + _RTA.size <= end:
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        out[kind & 0x3FFF] = data[offset + _RTA.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _printable(raw: bytes) -> str:
    """A driver name from the kernel, cut at its NUL; anything odd in it becomes '?'."""
    text = raw.split(b"\0", 1)[0].decode("ascii", errors="replace")
    return "".join(c if c.isalnum() or c in "_-." else "?" for c in text)


def parse_links(data: bytes) -> tuple[list[Link], bool]:
    """The links in a buffer of rtnetlink messages, and whether it ended the dump."""
    links: list[Link] = []
    offset, done = 0, False
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _port = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break
        body = offset + _NLMSG.size
        if kind == NLMSG_DONE:
            done = True
        elif kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("=i", data, body)
            if err:
                raise LinkError(-err, f"rtnetlink link dump: {os.strerror(-err)}")
        elif kind == RTM_NEWLINK and body + _IFINFO.size <= offset + length:
            _family, link_type, index, _iflags, _change = _IFINFO.unpack_from(data, body)
            attrs = _attrs(data, body + _IFINFO.size, offset + length)
            name = attrs.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            info = attrs.get(IFLA_LINKINFO, b"")
            driver = _attrs(info, 0, len(info)).get(IFLA_INFO_KIND, b"")
            links.append(Link(index, name, link_type, _printable(driver)))
        offset += (length + 3) & ~3
    return links, done


def dump() -> list[Link]:
    """Every interface of this network namespace."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    except OSError as e:
        raise LinkError(e.errno or 0, f"rtnetlink socket: {e.strerror}") from None
    with sock:
        request = _NLMSG.pack(
            _NLMSG.size + _IFINFO.size, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        ) + _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.settimeout(5.0)
        try:
            sock.sendto(request, (0, 0))
            links: list[Link] = []
            while True:
                part, done = parse_links(sock.recv(1 << 16))
                links += part
                if done:
                    return links
        except OSError as e:
            raise LinkError(e.errno or 0, f"rtnetlink link dump: {e.strerror or e}") from None


class LinkWatcher:
    """A socket subscribed to link changes; :meth:`fileno` for select, then
    :meth:`drain` to take what arrived (callers dump the links again)."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self.sock.bind((0, RTMGRP_LINK))
        except OSError as e:
            raise LinkError(e.errno or 0, f"rtnetlink link watch: {e.strerror}") from None
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Reads every pending notification (an overrun counts as a change too)."""
        while True:
            try:
                if not self.sock.recv(1 << 16):
                    return
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: notifications were lost; the dump is the truth
                continue

    def close(self) -> None:
        self.sock.close()
