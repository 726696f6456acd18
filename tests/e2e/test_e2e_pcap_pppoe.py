"""`govpass pcap` on a router-side capture: curl's real ClientHello, captured in
the lab, put in PPPoE session frames over QinQ (the lab's kernel has neither PPPoE
nor VLAN devices, so the wrapping is done here, byte for byte as a router's
capture carries it), run through the real command, and the output read back."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import pytest
from e2e_support import BLOCKED
from govpass.lab import Lab, wirecheck

pytestmark = pytest.mark.netns

MAC_ROUTER, MAC_BRAS = bytes.fromhex("020000000a01"), bytes.fromhex("020000000a02")
S_TAG, C_TAG, SESSION = 100, 7, 0x2A2A


def ip_of(frame: bytes) -> bytes:
    """The IP packet of an Ethernet frame from the lab's veth, without padding."""
    eth: Any = dpkt.ethernet.Ethernet(frame)
    ip = bytes(frame[14:])
    total = eth.data.len if isinstance(eth.data, dpkt.ip.IP) else 40 + eth.data.plen
    return ip[:total]


def in_pppoe_over_qinq(ip: bytes) -> bytes:
    proto = b"\x00\x57" if ip[0] >> 4 == 6 else b"\x00\x21"
    tags = struct.pack("!HHHH", 0x88A8, S_TAG, 0x8100, C_TAG)
    pppoe = struct.pack("!BBHH", 0x11, 0, SESSION, len(proto) + len(ip))
    return MAC_BRAS + MAC_ROUTER + tags + b"\x88\x64" + pppoe + proto + ip


def out_of_pppoe(frame: bytes) -> bytes:
    """Checks one output frame's QinQ and PPPoE headers (length included) and the
    IP header checksum; its IP packet."""
    assert frame[:12] == MAC_BRAS + MAC_ROUTER
    assert frame[12:22] == struct.pack("!HHHHH", 0x88A8, S_TAG, 0x8100, C_TAG, 0x8864)
    ver_type, code, session, length = struct.unpack("!BBHH", frame[22:28])
    assert (ver_type, code, session) == (0x11, 0, SESSION)
    assert length == len(frame) - 28, (length, len(frame))
    ip = frame[30:]
    if ip[0] >> 4 == 4:
        packet: Any = dpkt.ip.IP(ip)
        want = packet.sum
        packet.sum = 0
        assert dpkt.ip.IP(bytes(packet)).sum == want
        assert packet.len == len(ip)
    return ip


def frames(path: Path) -> list[tuple[Any, bytes]]:
    with path.open("rb") as fh:
        return [(ts, bytes(f)) for ts, f in dpkt.pcap.Reader(fh)]


def write(path: Path, rows: list[tuple[Any, bytes]]) -> None:
    with path.open("wb") as fh:
        writer = dpkt.pcap.Writer(fh, snaplen=65535, linktype=1)
        for ts, frame in rows:
            writer.writepkt(frame, ts=ts)


def test_curl_hello_in_pppoe_over_qinq_comes_out_split(host_lab: Lab, tmp_path: Path) -> None:
    host_lab.close_connections()
    with host_lab.capture("client") as cap:
        ok, detail = host_lab.client("curl", BLOCKED)
    assert ok, detail
    captured = frames(cap.path)
    wired = tmp_path / "router.pcap"
    write(wired, [(ts, in_pppoe_over_qinq(ip_of(f))) for ts, f in captured])
    out = tmp_path / "split.pcap"
    proc = subprocess.run(
        [sys.executable, "-m", "govpass", "pcap", str(wired), str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["splits"], summary["non_ip"], summary["link_name"]) == (1, 0, "ethernet")
    result = frames(out)
    assert len(result) > len(captured)
    # Back to plain Ethernet for the wire checks the lab's own captures get.
    plain = tmp_path / "plain.pcap"
    ether = MAC_BRAS + MAC_ROUTER
    write(
        plain,
        [
            (ts, ether + (b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00") + ip)
            for ts, ip in ((ts, out_of_pppoe(f)) for ts, f in result)
        ],
    )
    before = [f for f in wirecheck.analyze(cap.path, 443) if f.is_client_hello]
    after = [f for f in wirecheck.analyze(plain, 443) if f.is_client_hello]
    assert len(before) == len(after) == 1, [f.summary() for f in after]
    hello = after[0]
    assert hello.sni == BLOCKED and before[0].sizes == [before[0].record_len], before[0].summary()
    assert hello.sizes[0] == 5 and sum(hello.sizes) == hello.record_len, hello.summary()
    assert hello.seq_continuous and hello.retransmissions == 0, hello.summary()
    assert hello.first_record == before[0].first_record
    sent = {bytes(ip_of(f)) for _, f in captured}
    new = [ip for ip in (out_of_pppoe(f) for _, f in result) if ip not in sent]
    assert len(new) == len(hello.sizes)
    for ip in new:  # the segments govpass made carry correct TCP checksums
        packet: Any = dpkt.ip.IP(ip) if ip[0] >> 4 == 4 else dpkt.ip6.IP6(ip)
        want = packet.data.sum
        packet.data.sum = 0
        if ip[0] >> 4 == 4:
            packet.sum = 0  # dpkt fills in the TCP checksum only with the IP one
        again: Any = dpkt.ip.IP(bytes(packet)) if ip[0] >> 4 == 4 else dpkt.ip6.IP6(bytes(packet))
        assert again.data.sum == want
