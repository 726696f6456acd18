"""``govpass pcap IN OUT``: captures built from the ClientHello fixtures go through the
command (in-process via ``govpass.cli.main`` and as ``python -m govpass``); the output
capture is read back with dpkt and checked segment by segment."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest
from govpass.cli import main, pcap_cmd
from govpass.pcap import Summary, rewrite
from rich.console import Console
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.packet import Raw

HELLOS = Path(__file__).parent / "fixtures" / "hellos"
OPENSSL = (HELLOS / "openssl_default.bin").read_bytes()
CHROMIUM = (HELLOS / "chromium_sni_late.bin").read_bytes()
MANIFEST = {e["file"]: e for e in json.loads((HELLOS / "manifest.json").read_text())}
ISN = 4_000_000_000
T0 = 1_700_000_000.0
MAC_DST, MAC_SRC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


# ------------------------------------------------------------- building inputs


def tcp4(
    payload: bytes = b"",
    seq: int = ISN,
    flags: str = "PA",
    sport: int = 40000,
    dport: int = 443,
    opts: bool = False,
) -> bytes:
    options = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))] if opts else []
    pkt = IP(src="198.51.100.2", dst="203.0.113.9", id=9) / TCP(
        sport=sport, dport=dport, seq=seq % 2**32, ack=1, flags=flags, options=options
    )
    return bytes(pkt / Raw(payload) if payload else pkt)


def tcp6(payload: bytes = b"", seq: int = ISN, flags: str = "PA") -> bytes:
    pkt = (
        IPv6(src="2001:db8::2", dst="2001:db8::9")
        / IPv6ExtHdrDestOpt()
        / TCP(sport=40000, dport=443, seq=seq % 2**32, ack=1, flags=flags)
    )
    return bytes(pkt / Raw(payload) if payload else pkt)


def eth_header(ip: bytes, vlan: int | None = None) -> bytes:
    ethertype = b"\x86\xdd" if ip[0] >> 4 == 6 else b"\x08\x00"
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return MAC_DST + MAC_SRC + tag + ethertype


def sll_header(ip: bytes) -> bytes:
    proto = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 4, 1, 6, MAC_SRC, proto)


def sll2_header(ip: bytes) -> bytes:
    proto = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", proto, 0, 3, 1, 4, 6, MAC_SRC)


def ppp_protocol(ip: bytes) -> bytes:
    return b"\x00\x57" if ip[0] >> 4 == 6 else b"\x00\x21"


def pppoe_header(ip: bytes) -> bytes:
    """A PPPoE session header whose length covers this packet and its PPP protocol."""
    return struct.pack("!BBHH", 0x11, 0, 0x2A2A, 2 + len(ip)) + ppp_protocol(ip)


def pppoe_eth_header(ip: bytes, *tags: int) -> bytes:
    stack = b"".join(struct.pack("!HH", tpid, 100 + n) for n, tpid in enumerate(tags))
    return MAC_DST + MAC_SRC + stack + b"\x88\x64" + pppoe_header(ip)


def sll_ppp_header(ip: bytes) -> bytes:
    """ppp0 in a Linux cooked capture: ARPHRD_PPP, no address, an ethertype."""
    proto = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHH8sH", 4, 512, 0, b"", proto)


def sll2_ppp_header(ip: bytes) -> bytes:
    proto = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", proto, 0, 5, 512, 4, 0, b"")


def null_header(ip: bytes) -> bytes:
    return struct.pack("<I", 30 if ip[0] >> 4 == 6 else 2)  # macOS little-endian AF values


def loop_header(ip: bytes) -> bytes:
    return struct.pack(">I", 24 if ip[0] >> 4 == 6 else 2)


LINKS: dict[str, tuple[int, Any]] = {
    "ethernet": (1, eth_header),
    "vlan": (1, lambda ip: eth_header(ip, vlan=42)),
    "raw": (101, lambda ip: b""),
    "raw12": (12, lambda ip: b""),
    "sll": (113, sll_header),
    "sll2": (276, sll2_header),
    "null": (0, null_header),
    "loop": (108, loop_header),
    "pppoe": (1, pppoe_eth_header),
    "pppoe-vlan": (1, lambda ip: pppoe_eth_header(ip, 0x8100)),
    "pppoe-qinq": (1, lambda ip: pppoe_eth_header(ip, 0x88A8, 0x8100)),
    "pppoe-qinq-9100": (1, lambda ip: pppoe_eth_header(ip, 0x9100, 0x8100)),
    "pppoe-three-tags": (1, lambda ip: pppoe_eth_header(ip, 0x88A8, 0x88A8, 0x8100)),
    "sll-ppp": (113, sll_ppp_header),
    "sll2-ppp": (276, sll2_ppp_header),
    "sll-pppoe": (
        113,
        lambda ip: struct.pack("!HHH8sH", 4, 1, 6, MAC_SRC, 0x8864) + pppoe_header(ip),
    ),
    "ppp": (9, lambda ip: b"\xff\x03" + ppp_protocol(ip)),
    "ppp-ether": (51, pppoe_header),
    "ppp-with-dir": (204, lambda ip: b"\x01\xff\x03" + ppp_protocol(ip)),
    "ppp-pppd": (166, lambda ip: b"\x01\x03" + ppp_protocol(ip)),
}


def write_capture(
    path: Path, frames: list[tuple[float, bytes]], linktype: int = 1, fmt: str = "pcap"
) -> Path:
    with path.open("wb") as fh:
        writer: Any = (
            dpkt.pcapng.Writer(fh, snaplen=65535, linktype=linktype)
            if fmt == "pcapng"
            else dpkt.pcap.Writer(fh, snaplen=65535, linktype=linktype)
        )
        for ts, frame in frames:
            writer.writepkt(frame, ts=ts)
    return path


def framed(link: str, packets: list[tuple[float, bytes]]) -> list[tuple[float, bytes]]:
    header = LINKS[link][1]
    return [(ts, header(ip) + ip) for ts, ip in packets]


def openssl_flow() -> list[tuple[float, bytes]]:
    return [(T0, tcp4(b"", ISN - 1, "S")), (T0 + 0.01, tcp4(OPENSSL))]


def chromium_flow(v6: bool = False) -> list[tuple[float, bytes]]:
    if v6:
        return [
            (T0, tcp6(CHROMIUM[:1200], ISN, "A")),
            (T0 + 0.002, tcp6(CHROMIUM[1200:], ISN + 1200)),
        ]
    return [
        (T0, tcp4(CHROMIUM[:1448], ISN, "A", opts=True)),
        (T0 + 0.002, tcp4(CHROMIUM[1448:], ISN + 1448, opts=True)),
    ]


# ------------------------------------------------------------- reading outputs


@dataclass
class Out:
    ts: float
    link: bytes
    ip: bytes
    seq: int | None
    payload: bytes
    checksums_ok: bool


def read_output(path: Path, prefix_len: int | None = None) -> tuple[int, list[Out]]:
    with path.open("rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        linktype = reader.datalink()
        frames = list(reader)
    out = []
    for ts, frame in frames:
        n = prefix_len if prefix_len is not None else _prefix(linktype, frame)
        ip_bytes = frame[n:]
        ip: Any = dpkt.ip6.IP6(ip_bytes) if ip_bytes[0] >> 4 == 6 else dpkt.ip.IP(ip_bytes)
        tcp = ip.data
        ok = _checksums_ok(ip_bytes)
        out.append(Out(float(ts), frame[:n], ip_bytes, tcp.seq, bytes(tcp.data), ok))
    return linktype, out


def _prefix(linktype: int, frame: bytes) -> int:
    if linktype == 1:
        off = 12
        while frame[off : off + 2] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00"):
            off += 4
        return off + (10 if frame[off : off + 2] == b"\x88\x64" else 2)
    if linktype == 113 and frame[14:16] == b"\x88\x64":
        return 24
    return {101: 0, 12: 0, 113: 16, 276: 20, 0: 4, 108: 4, 9: 4, 51: 8, 204: 5, 166: 4}[linktype]


def _checksums_ok(ip_bytes: bytes) -> bool:
    if ip_bytes[0] >> 4 == 6:
        ip6: Any = dpkt.ip6.IP6(ip_bytes)
        want = ip6.data.sum
        ip6.data.sum = 0
        return dpkt.ip6.IP6(bytes(ip6)).data.sum == want
    ip: Any = dpkt.ip.IP(ip_bytes)
    want_ip, want_tcp = ip.sum, ip.data.sum
    ip.sum = ip.data.sum = 0
    again = dpkt.ip.IP(bytes(ip))
    return again.sum == want_ip and again.data.sum == want_tcp


def data_layout(outs: list[Out], isn: int = ISN) -> list[tuple[int, int]]:
    return [
        ((o.seq - isn) % 2**32, (o.seq - isn) % 2**32 + len(o.payload)) for o in outs if o.payload
    ]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    main(["pcap", *args, "--json"])
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------------- tests


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_ethernet_single_packet_hello_is_split(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_capture(tmp_path / f"in.{fmt}", framed("ethernet", openssl_flow()), fmt=fmt)
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst))
    linktype, outs = read_output(dst)
    assert linktype == 1
    assert data_layout(outs) == [(0, 5), (5, 517)]
    assert all(o.checksums_ok for o in outs)
    assert all(o.link == MAC_DST + MAC_SRC + b"\x08\x00" for o in outs)
    assert b"".join(o.payload for o in outs) == OPENSSL
    assert [round(o.ts - T0, 6) for o in outs] == [0.0, 0.01, 0.01]
    assert summary["format"] == fmt
    assert (summary["packets_in"], summary["packets_out"]) == (2, 3)
    assert (summary["passed"], summary["sent"], summary["dropped"]) == (1, 2, 1)
    assert (summary["flows"], summary["splits"], summary["segments"]) == (1, 1, 2)
    assert sum(summary["fail_open"].values()) == 0
    assert summary["settings"]["split-chunk"] == 5


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_every_link_type_keeps_its_header(tmp_path: Path, link: str, fmt: str) -> None:
    linktype, header = LINKS[link]
    packets = [*chromium_flow(), (T0 + 0.1, tcp6(OPENSSL, ISN + 5000))]
    src = write_capture(tmp_path / "in", framed(link, packets), linktype, fmt)
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    out_type, outs = read_output(dst)
    assert out_type == linktype
    for o in outs:
        assert o.link == header(o.ip)
        assert o.checksums_ok
    v4 = [o for o in outs if o.ip[0] >> 4 == 4]
    v6 = [o for o in outs if o.ip[0] >> 4 == 6]
    assert data_layout(v4) == [(0, 5), (5, 1453), (1453, 2000)]
    assert data_layout(v6, ISN + 5000) == [(0, 5), (5, 517)]
    assert summary.as_dict()["splits"] == 2
    assert summary.dropped == 3 and summary.sent == 5


def check_pppoe_frame(frame: bytes) -> bytes:
    """Reads an Ethernet frame with dpkt down to PPPoE; the IP bytes it carries
    after its PPPoE length was checked against them."""
    eth: Any = dpkt.ethernet.Ethernet(frame)
    session = eth.data
    assert isinstance(session, dpkt.pppoe.PPPoE), frame[:30].hex()
    body = frame[14 + 4 * len(eth.vlan_tags) + 6 :]
    assert session.len == len(body), (session.len, len(body))
    ip = body[2:]
    assert _checksums_ok(ip)
    return ip


def test_pppoe_over_qinq_two_packet_hello_is_split_with_right_lengths(tmp_path: Path) -> None:
    # PPPoE's 1492-byte MTU: MSS 1452, so a 2000-byte hello takes two packets.
    packets = [
        (T0, tcp4(b"", ISN - 1, "S")),
        (T0 + 0.01, tcp4(CHROMIUM[:1452], ISN, "A")),
        (T0 + 0.011, tcp4(CHROMIUM[1452:], ISN + 1452)),
    ]
    link = lambda ip: pppoe_eth_header(ip, 0x88A8, 0x8100)  # noqa: E731
    src = write_capture(tmp_path / "in.pcap", [(ts, link(ip) + ip) for ts, ip in packets])
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    assert (summary.as_dict()["splits"], summary.non_ip) == (1, 0)
    with dst.open("rb") as fh:
        frames = [bytes(f) for _, f in dpkt.pcap.Reader(fh)]
    ips = [check_pppoe_frame(f) for f in frames]
    assert all(f[12:14] == b"\x88\xa8" and f[16:18] == b"\x81\x00" for f in frames)
    data = b"".join(bytes(dpkt.ip.IP(ip).data.data) for ip in ips)
    assert data == CHROMIUM
    assert len(frames) > len(packets)


def test_pppoe_frames_whose_headers_lie_are_copied_unchanged(tmp_path: Path) -> None:
    hello = tcp4(OPENSSL)
    good = pppoe_eth_header(hello, 0x88A8, 0x8100) + hello
    at = 12 + 8 + 2 + 4  # the PPPoE length field
    lying = [
        good[:at] + struct.pack("!H", len(hello) + 40) + good[at + 2 :],
        good[:at] + struct.pack("!H", len(hello) - 100) + good[at + 2 :],
        good[:at] + struct.pack("!H", 0xFFFF) + good[at + 2 :],
        good[:200],  # cut short
        MAC_DST + MAC_SRC + b"\x81\x00\x00\x01" * 20 + good[12:],  # 21 tags
    ]
    frames = [(T0, pppoe_eth_header(tcp4(b"", ISN - 1, "S"), 0x88A8, 0x8100))]
    frames[0] = (T0, frames[0][1] + tcp4(b"", ISN - 1, "S"))
    frames += [(T0 + 0.01 * (n + 1), f) for n, f in enumerate(lying)]
    src = write_capture(tmp_path / "in.pcap", frames)
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    with dst.open("rb") as fh:
        out = [bytes(f) for _, f in dpkt.pcap.Reader(fh)]
    assert out == [f for _, f in frames]
    assert (summary.non_ip, summary.sent, summary.as_dict()["splits"]) == (len(lying), 0, 0)


def test_segments_keep_the_timestamp_option_and_stay_within_the_largest_payload(
    tmp_path: Path,
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", chromium_flow()))
    dst = tmp_path / "out.pcap"
    rewrite(src, dst)
    _, outs = read_output(dst)
    for o in outs:
        tcp = dpkt.ip.IP(o.ip).data
        assert dpkt.tcp.parse_opts(tcp.opts)[-1] == (
            dpkt.tcp.TCP_OPT_TIMESTAMP,
            struct.pack("!II", 7, 8),
        )
        assert len(o.payload) <= 1448


def test_a_pure_ack_while_collecting_goes_out_at_once(tmp_path: Path) -> None:
    p1, p2 = chromium_flow()
    ack = (T0 + 0.001, tcp4(b"", ISN + 1448, "A", opts=True))
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", [p1, ack, p2]))
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    _, outs = read_output(dst)
    assert [len(o.payload) for o in outs] == [0, 5, 1448, 547]
    assert outs[0].ip == ack[1] and outs[0].ts == pytest.approx(T0 + 0.001)
    assert summary.released == 1 and summary.dropped == 2


def test_non_ip_frames_and_other_ports_are_copied_unchanged(tmp_path: Path) -> None:
    arp = MAC_DST + MAC_SRC + b"\x08\x06" + bytes(28)
    http = tcp4(b"GET / HTTP/1.1\r\n\r\n", dport=80)
    frames = [(T0, arp), (T0 + 0.001, eth_header(http) + http)]
    src = write_capture(tmp_path / "in.pcap", frames)
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    with dst.open("rb") as fh:
        assert [bytes(f) for _, f in dpkt.pcap.Reader(fh)] == [f for _, f in frames]
    assert (summary.non_ip, summary.passed, summary.packets_out) == (1, 1, 2)


def test_collect_timeout_fires_on_capture_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p1, p2 = chromium_flow()
    frames = framed("ethernet", [p1, (T0 + 1.0, p2[1])])
    src = write_capture(tmp_path / "in.pcap", frames)
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst), "--collect-timeout", "250")
    with dst.open("rb") as fh:
        out = [(float(ts), bytes(f)) for ts, f in dpkt.pcap.Reader(fh)]
    # The held packet went out unchanged when the next packet's time showed the
    # deadline had passed; the rest of the flow passes.
    assert [f for _, f in out] == [f for _, f in frames]
    assert out[0][0] == pytest.approx(T0 + 1.0)
    assert summary["fail_open"]["timeout"] == 1
    assert summary["splits"] == 0 and summary["released"] == 1


def test_a_capture_ending_mid_hello_releases_at_the_deadline(tmp_path: Path) -> None:
    frames = framed("raw", chromium_flow()[:1])
    src = write_capture(tmp_path / "in.pcap", frames, linktype=101)
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    with dst.open("rb") as fh:
        out = [(float(ts), bytes(f)) for ts, f in dpkt.pcap.Reader(fh)]
    assert [f for _, f in out] == [frames[0][1]]
    assert out[0][0] == pytest.approx(T0 + 0.25)
    assert summary.fail_open["timeout"] == 1


def test_retransmitted_hello_is_split_again(tmp_path: Path) -> None:
    packets = [*openssl_flow(), (T0 + 0.3, tcp4(OPENSSL))]
    src = write_capture(tmp_path / "in.pcap", framed("raw", packets), linktype=101)
    dst = tmp_path / "out.pcap"
    summary = rewrite(src, dst)
    _, outs = read_output(dst)
    assert data_layout(outs) == [(0, 5), (5, 517), (0, 5), (5, 517)]
    assert summary.as_dict()["resplits"] == 1


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (["--split-chunk", "7"], [(0, 7), (7, 517)]),
        (["--split-chunk", "0", "--split-pos", "sni"], [(0, 127), (127, 517)]),
        (["--split-pos", "sni,midsld"], [(0, 5), (5, 127), (127, 130), (130, 517)]),
        (["--max-seg-payload", "200"], [(0, 5), (5, 205), (205, 405), (405, 517)]),
        (["--ports", "8443"], []),
        (["--max-buffer", "516"], []),
    ],
)
def test_split_flags(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expect: list[tuple[int, int]],
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst), *flags)
    _, outs = read_output(dst)
    assert all(o.checksums_ok for o in outs)
    if expect:
        assert data_layout(outs) == expect
        assert summary["segments"] == len(expect)
    else:
        assert data_layout(outs) == [(0, 517)], "passes as it was"
        assert summary["splits"] == 0


def test_immediate_mode_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", chromium_flow()))
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst), "--split-mode", "immediate")
    _, outs = read_output(dst)
    assert data_layout(outs) == [(0, 5), (5, 1448), (1448, 2000)]
    assert summary["settings"]["split-mode"] == "immediate"


def test_held_packet_limit_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", chromium_flow()))
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst), "--max-held-pkts", "1")
    assert summary["fail_open"]["too_many_packets"] == 1
    assert summary["released"] == 2 and summary["passed"] == 0  # the second follows the first


def test_config_file_env_and_flags_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    dst = tmp_path / "out.pcap"
    conf = tmp_path / "govpass.toml"
    conf.write_text('split-chunk = 3\nsplit-pos = ["sni"]\nflow-timeout = 10\n')
    monkeypatch.delenv("GOVPASS_SPLIT_CHUNK", raising=False)
    s = run_json(capsys, str(src), str(dst), "--config", str(conf))
    assert (s["settings"]["split-chunk"], s["settings"]["split-pos"]) == (3, ["sni"])
    assert data_layout(read_output(dst)[1]) == [(0, 3), (3, 127), (127, 517)]
    monkeypatch.setenv("GOVPASS_SPLIT_CHUNK", "4")
    s = run_json(capsys, str(src), str(dst), "--config", str(conf))
    assert s["settings"]["split-chunk"] == 4
    s = run_json(capsys, str(src), str(dst), "--config", str(conf), "--split-chunk", "6")
    assert s["settings"]["split-chunk"] == 6
    assert s["settings"]["flow-timeout"] == 10
    assert data_layout(read_output(dst)[1]) == [(0, 6), (6, 127), (127, 517)]


def test_plain_summary_when_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    main(["pcap", str(src), str(tmp_path / "out.pcap")])
    out = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.startswith("splits"))
    assert lines == {"splits": "1"}
    assert "packets in" in out and "fail-open" in out
    assert "\x1b[" not in out and "┃" not in out


def test_table_summary_renders(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", chromium_flow()[:1]))
    summary: Summary = rewrite(src, tmp_path / "out.pcap")
    console = Console(record=True, width=100, force_terminal=True)
    console.print(pcap_cmd._table(summary))
    text = console.export_text()
    assert "govpass pcap" in text and "timeout" in text and "splits" in text


def test_nanosecond_timestamps_are_kept(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    ip = tcp4(OPENSSL)
    with src.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101))
        fh.write(struct.pack("<IIII", 1_700_000_000, 123_456_789, len(ip), len(ip)) + ip)
    dst = tmp_path / "out.pcap"
    rewrite(src, dst)
    raw = dst.read_bytes()
    assert struct.unpack("<I", raw[:4])[0] == 0xA1B23C4D
    first = struct.unpack("<II", raw[24:32])
    assert first == (1_700_000_000, 123_456_789)


def test_a_capture_cut_mid_record_is_read_up_to_the_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    src.write_bytes(src.read_bytes() + b"\x01\x02\x03")  # a next record header, cut short
    dst = tmp_path / "out.pcap"
    main(["pcap", str(src), str(dst), "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["input_truncated"] is True
    assert (summary["packets_in"], summary["splits"]) == (2, 1)
    assert "ends mid-packet" in captured.err
    assert len(read_output(dst)[1]) == 3


@pytest.mark.skipif(os.name == "nt", reason="a POSIX fifo, sh and /dev/null")
def test_input_from_a_pipe_and_output_to_a_device(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "in.pcapng", framed("ethernet", openssl_flow()), fmt="pcapng")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with subprocess.Popen(["sh", "-c", f"cat '{src}' > '{fifo}'"]) as writer:
        summary = rewrite(fifo, Path("/dev/null"))
        writer.wait(timeout=30)
    assert summary.as_dict()["splits"] == 1
    assert Path("/dev/null").is_char_device(), "the device is written to, not replaced"
    assert not list(Path("/dev").glob(".null.*.tmp"))


# ------------------------------------------------------------------ errors


def one_message(err: str) -> str:
    """The error output as one message: exactly one "govpass: ..." and no traceback.

    Long messages are compared with the line breaks taken out: the CLI's error
    console (govpass.cli, not this command) wraps at 80 columns when stderr is not
    a terminal; test_long_error_messages_stay_on_one_line pins that separately.
    """
    assert "Traceback" not in err
    assert err.startswith("govpass: "), err
    assert err.count("govpass: ") == 1, err
    return " ".join(err.split())


def _fails(capsys: pytest.CaptureFixture[str], args: list[str], code: int) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == code
    return one_message(capsys.readouterr().err.strip())


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, ["pcap", str(tmp_path / "nope.pcap"), str(tmp_path / "o.pcap")], 1)
    assert "nope.pcap" in err and "No such file" in err
    assert not (tmp_path / "o.pcap").exists()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello, this is not a capture at all\n",
        b"\xd4\xc3\xb2\xa1\x02\x00",
        b"\x0a\x0d\x0d\x0a" + bytes(4) + b"\x1a\x2b\x3c\x4d" + bytes(16),
    ],
)
def test_garbage_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    src = tmp_path / "garbage.pcap"
    src.write_bytes(content)
    err = _fails(capsys, ["pcap", str(src), str(tmp_path / "o.pcap")], 1)
    assert "garbage.pcap" in err
    assert not (tmp_path / "o.pcap").exists()


def test_unsupported_link_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_capture(tmp_path / "in.pcap", [(T0, b"\x00" * 40)], linktype=105)
    err = _fails(capsys, ["pcap", str(src), str(tmp_path / "o.pcap")], 1)
    assert "link type 105" in err


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [
        ("--split-chunk", "abc", "split-chunk"),
        ("--split-chunk", "-1", "split-chunk"),
        ("--split-pos", "nowhere", "split-pos"),
        ("--split-mode", "sideways", "split-mode"),
        ("--collect-timeout", "0", "collect-timeout"),
        ("--max-buffer", "10", "max-buffer"),
        ("--max-held-pkts", "0", "max-held-pkts"),
        ("--max-seg-payload", "70000", "max-seg-payload"),
        ("--flow-timeout", "x", "flow-timeout"),
        ("--max-flows", "0", "max-flows"),
        ("--ports", "99999", "ports"),
    ],
)
def test_bad_flag_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, field: str
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    err = _fails(capsys, ["pcap", str(src), str(tmp_path / "o.pcap"), flag, value], 2)
    assert field in err


def test_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    conf = tmp_path / "bad.toml"
    conf.write_text("split-chunk = [\n")
    err = _fails(capsys, ["pcap", str(src), str(tmp_path / "o.pcap"), "--config", str(conf)], 2)
    assert "bad.toml" in err and "TOML" in err


def test_output_in_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    err = _fails(capsys, ["pcap", str(src), str(tmp_path / "no" / "such" / "o.pcap")], 1)
    assert "cannot write" in err


def test_output_over_the_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", openssl_flow()))
    before = src.read_bytes()
    err = _fails(capsys, ["pcap", str(src), str(src)], 1)
    assert "input" in err
    assert src.read_bytes() == before


# -------------------------------------------------------------- as a process


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPASS_")}
    return subprocess.run(
        [sys.executable, "-m", "govpass", "pcap", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_subprocess_json_summary(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "in.pcapng", framed("vlan", chromium_flow()), fmt="pcapng")
    dst = tmp_path / "out.pcap"
    proc = _run(str(src), str(dst), "--json", "--split-pos", "sni")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    sni = MANIFEST["chromium_sni_late.bin"]["sni_offset"]
    assert data_layout(read_output(dst)[1]) == [(0, 5), (5, 1453), (1453, sni), (sni, 2000)]
    assert summary["segments"] == 4 and summary["link_name"] == "ethernet"


def test_subprocess_plain_summary(tmp_path: Path) -> None:
    src = write_capture(tmp_path / "in.pcap", framed("raw", openssl_flow()), linktype=101)
    proc = _run(str(src), str(tmp_path / "out.pcap"))
    assert proc.returncode == 0, proc.stderr
    assert "splits" in proc.stdout and "segments" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["/nonexistent/in.pcap", "{out}"], 1, "No such file"),
        (["{garbage}", "{out}"], 1, "not a pcap or pcapng file"),
        (["{good}", "{out}", "--split-chunk", "lots"], 2, "invalid split-chunk: 'lots'"),
        (["{good}", "{out}", "--ports", "https"], 2, "invalid ports"),
    ],
)
def test_subprocess_errors_are_one_message(
    tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    (tmp_path / "garbage").write_bytes(b"\x00" * 64)
    good = write_capture(tmp_path / "in.pcap", framed("raw", openssl_flow()), linktype=101)
    paths = {"garbage": tmp_path / "garbage", "good": good, "out": tmp_path / "out.pcap"}
    proc = _run(*[a.format(**paths) for a in args])
    assert proc.returncode == code
    assert proc.stdout == ""
    assert words in one_message(proc.stderr.strip())
    assert not (tmp_path / "out.pcap").exists()


def test_long_error_messages_stay_on_one_line(tmp_path: Path) -> None:
    # A deep path makes the message longer than 80 columns; piped stderr (logs,
    # scripts) must still get it on one line.
    deep = tmp_path / ("d" * 60) / "missing-capture-file.pcap"
    proc = _run(str(deep), str(tmp_path / "out.pcap"))
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("args", [["{good}", "{out}", "--no-such-flag"], ["{good}"]])
def test_usage_errors_exit_2_without_a_traceback(tmp_path: Path, args: list[str]) -> None:
    good = write_capture(tmp_path / "in.pcap", framed("raw", openssl_flow()), linktype=101)
    proc = _run(*[a.format(good=good, out=tmp_path / "out.pcap") for a in args])
    assert "Traceback" not in proc.stderr, proc.stderr[-300:]
    assert proc.returncode == 2


def test_host_list_flags_split_only_listed_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    intranet = (HELLOS / "openssl_single_label.bin").read_bytes()  # SNI "intranet"
    packets = [(T0, tcp4(OPENSSL, sport=40001)), (T0 + 0.01, tcp4(intranet, sport=40002))]
    src = write_capture(tmp_path / "in.pcap", framed("ethernet", packets))
    dst = tmp_path / "out.pcap"
    summary = run_json(capsys, str(src), str(dst), "--hosts", "blocked.example")
    assert (summary["splits"], summary["profile_pass"]) == (1, 1)
    _, outs = read_output(dst)
    by_port: dict[int, list[int]] = {}
    for o in outs:
        sport = int.from_bytes(o.ip[20:22], "big")  # IPv4 without options here
        by_port.setdefault(sport, []).append(len(o.payload))
    assert by_port == {40001: [5, 512], 40002: [len(intranet)]}
