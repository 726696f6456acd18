"""govpass.links: rtnetlink link messages, parsed from bytes and asked of the kernel."""

from __future__ import annotations

import socket
import struct

import pytest
from govpass import links


def newlink(index: int, name: str, kind: int, *, seq: int = 1, driver: bytes = b"") -> bytes:
    name_attr = name.encode() + b"\0"
    rta = struct.pack("=HH", 4 + len(name_attr), links.IFLA_IFNAME) + name_attr
    rta += b"\0" * (-len(rta) % 4)
    if driver:
        inner = struct.pack("=HH", 4 + len(driver) + 1, links.IFLA_INFO_KIND) + driver + b"\0"
        inner += b"\0" * (-len(inner) % 4)
        rta += struct.pack("=HH", 4 + len(inner), links.IFLA_LINKINFO | 0x8000) + inner
    mtu = struct.pack("=HHI", 8, 4, 1500)  # IFLA_MTU, skipped
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, kind, index, 0, 0) + mtu + rta
    return struct.pack("=IHHII", 16 + len(body), links.RTM_NEWLINK, 2, seq, 0) + body


def done() -> bytes:
    return struct.pack("=IHHII", 20, links.NLMSG_DONE, 2, 1, 0) + struct.pack("=i", 0)


def test_parse_links_reads_index_name_and_type() -> None:
    data = newlink(1, "lo", 772) + newlink(4, "eth0", 1) + newlink(9, "wg0", 65534)
    parsed, finished = links.parse_links(data)
    assert not finished
    assert parsed == [
        links.Link(1, "lo", 772),
        links.Link(4, "eth0", 1),
        links.Link(9, "wg0", 65534),
    ]
    assert parsed[0].loopback and parsed[0].l2_bytes is None
    assert parsed[1].l2_bytes == 14 and parsed[2].l2_bytes == 0


def test_parse_links_reads_the_driver_of_a_software_device() -> None:
    data = newlink(2, "ifb0", 1, driver=b"ifb") + newlink(3, "odd0", 1, driver=b"x\x1b[31m")
    parsed, _ = links.parse_links(data + newlink(4, "eth0", 1))
    assert [link.driver for link in parsed] == ["ifb", "x??31m", ""]


def test_parse_links_sees_the_end_of_the_dump() -> None:
    parsed, finished = links.parse_links(newlink(3, "veth0", 1) + done())
    assert finished and [link.name for link in parsed] == ["veth0"]


def test_parse_links_stops_at_a_truncated_message() -> None:
    whole = newlink(3, "veth0", 1)
    parsed, finished = links.parse_links(whole + newlink(4, "veth1", 1)[:20])
    assert [link.name for link in parsed] == ["veth0"] and not finished


def test_parse_links_raises_a_kernel_error() -> None:
    err = struct.pack("=IHHII", 36, links.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    err += b"\0" * 16
    with pytest.raises(links.LinkError, match="rtnetlink"):
        links.parse_links(err)


def test_unknown_link_types_have_no_header_size() -> None:
    assert links.Link(7, "gre1", 778).l2_bytes is None
    assert links.Link(8, "ppp0", 512).l2_bytes == 0


def test_dump_lists_this_namespace() -> None:
    found = links.dump()
    names = {link.name: link for link in found}
    assert "lo" in names and names["lo"].loopback
    assert {link.index for link in found} == {i for i, _ in socket.if_nameindex()}
