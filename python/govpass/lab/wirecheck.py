"""Read a pcap/pcapng and report, per client→server TCP flow, how the first TLS record
went over the wire: segment sizes, sequence continuity, checksums, and its bytes.

``analyze(path)`` returns one :class:`FlowReport` per connection (a new SYN on the same
tuple starts a new one). Checksums are recomputed here, not trusted from any tool: a
value equal to the bare pseudo-header sum is reported as ``"offload"`` — what a capture on
the sending host shows when the NIC (or veth) was left to fill the checksum in.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from govpass.lab.clienthello import read_hello, record_header

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
DLT_NULL, DLT_EN10MB, DLT_RAW, DLT_LINUX_SLL, DLT_LINUX_SLL2 = 0, 1, 101, 113, 276
ETH_IPV4, ETH_IPV6, ETH_VLAN, ETH_QINQ = 0x0800, 0x86DD, 0x8100, 0x88A8
TCP_SYN, TCP_ACK = 0x02, 0x10


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@dataclass(frozen=True)
class Segment:
    rel_seq: int  # offset of the first payload byte from ISN+1 (modulo 2^32)
    length: int
    ts: float
    ip_checksum: str  # "ok" | "bad" | "n/a" (IPv6 has none)
    tcp_checksum: str  # "ok" | "bad" | "offload"


@dataclass
class FlowReport:
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    syn_seen: bool = False
    isn: int | None = None
    segments: list[Segment] = field(default_factory=list)  # data segments up to record end
    seq_continuous: bool = True
    retransmissions: int = 0
    packets: int = 0
    bad_checksums: list[str] = field(default_factory=list)
    record_len: int | None = None  # header + body of the first record, once known
    first_record: bytes | None = None  # set once the record is complete
    sni: str | None = None
    hello_reason: str = ""
    # reassembly state
    _base: int | None = None
    _chunks: dict[int, bytes] = field(default_factory=dict, repr=False)
    _expected: int = 0

    @property
    def sizes(self) -> list[int]:
        return [s.length for s in self.segments]

    @property
    def checksums_ok(self) -> bool:
        return not self.bad_checksums

    @property
    def complete(self) -> bool:
        return self.first_record is not None

    @property
    def is_client_hello(self) -> bool:
        return self.complete and self.hello_reason in ("sni", "no server_name extension")

    def summary(self) -> str:
        state = f"record {self.record_len}B" if self.complete else "record incomplete"
        return (
            f"{self.src}:{self.sport}>{self.dst}:{self.dport} sizes={self.sizes} {state} "
            f"sni={self.sni} continuous={self.seq_continuous} "
            f"retrans={self.retransmissions} checksums_ok={self.checksums_ok}"
        )

    def _contiguous(self) -> bytes:
        out = b""
        while True:
            # Any chunk starting at or before the current end extends it.
            best = None
            for off, data in self._chunks.items():
                if off <= len(out) < off + len(data):
                    best = data[len(out) - off :]
                    break
            if best is None:
                return out
            out += best

    def _covered(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) all arrived before (a retransmission)."""
        pos = start
        for off, data in sorted(self._chunks.items()):
            if off <= pos < off + len(data):
                pos = off + len(data)
        return pos >= end

    def add(self, rel: int, payload: bytes, seg: Segment) -> None:
        if self.first_record is not None:
            return
        self.segments.append(seg)
        end = rel + len(payload)
        if self._covered(rel, end):
            self.retransmissions += 1
        elif rel != self._expected:
            self.seq_continuous = False  # a gap (reordering) or a partial overlap
        self._expected = max(self._expected, end)
        self._chunks.setdefault(rel, payload)
        have = self._contiguous()
        hdr = record_header(have)
        if hdr is not None:
            self.record_len = 5 + hdr[1]
        if self.record_len is not None and len(have) >= self.record_len:
            self.first_record = have[: self.record_len]
            view = read_hello(self.first_record)
            self.sni, self.hello_reason = view.sni, view.reason
            self._chunks.clear()


def _frames(path: Path) -> tuple[int, list[tuple[float, bytes]]]:
    with open(path, "rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == PCAPNG_MAGIC else dpkt.pcap.Reader(fh)
        return reader.datalink(), [(float(ts), bytes(buf)) for ts, buf in reader]


def _network_layer(linktype: int, frame: bytes) -> bytes | None:
    if linktype == DLT_EN10MB:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big")
        while ethertype in (ETH_VLAN, ETH_QINQ) and len(frame) >= off + 4:
            ethertype = int.from_bytes(frame[off + 2 : off + 4], "big")
            off += 4
        return frame[off:] if ethertype in (ETH_IPV4, ETH_IPV6) else None
    if linktype == DLT_LINUX_SLL:
        return frame[16:]
    if linktype == DLT_LINUX_SLL2:
        return frame[20:]
    if linktype == DLT_NULL:
        return frame[4:]
    if linktype in (DLT_RAW, 12, 14):
        return frame
    return None


def _tcp_checksum(pseudo: bytes, tcp: bytes) -> str:
    if _sum16(pseudo + tcp) == 0xFFFF:
        return "ok"
    stored = int.from_bytes(tcp[16:18], "big")
    return "offload" if stored == _sum16(pseudo) else "bad"


def _parse_ip(pkt: bytes) -> tuple[int, str, str, bytes, str, str] | None:
    """(family, src, dst, tcp bytes, ip checksum status, tcp checksum status) or None."""
    if len(pkt) >= 20 and pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 0x0F) * 4
        total = int.from_bytes(pkt[2:4], "big")
        if pkt[9] != socket.IPPROTO_TCP or total > len(pkt) or ihl < 20:
            return None
        tcp = pkt[ihl:total]
        ip_ck = "ok" if _sum16(pkt[:ihl]) == 0xFFFF else "bad"
        pseudo = pkt[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        src, dst = (
            socket.inet_ntop(socket.AF_INET, pkt[12:16]),
            socket.inet_ntop(socket.AF_INET, pkt[16:20]),
        )
        return 4, src, dst, tcp, ip_ck, _tcp_checksum(pseudo, tcp)
    if len(pkt) >= 40 and pkt[0] >> 4 == 6:
        if pkt[6] != socket.IPPROTO_TCP:
            return None
        tcp = pkt[40 : 40 + int.from_bytes(pkt[4:6], "big")]
        pseudo = pkt[8:40] + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
        src, dst = (
            socket.inet_ntop(socket.AF_INET6, pkt[8:24]),
            socket.inet_ntop(socket.AF_INET6, pkt[24:40]),
        )
        return 6, src, dst, tcp, "n/a", _tcp_checksum(pseudo, tcp)
    return None


def analyze(path: Path | str, port: int = 443) -> list[FlowReport]:
    """One report per client→server connection to ``port``, in order of first packet."""
    linktype, frames = _frames(Path(path))
    flows: list[FlowReport] = []
    current: dict[tuple[str, int, str, int], FlowReport] = {}
    for ts, frame in frames:
        net = _network_layer(linktype, frame)
        parsed = _parse_ip(net) if net else None
        if parsed is None:
            continue
        family, src, dst, tcp, ip_ck, tcp_ck = parsed
        if len(tcp) < 20:
            continue
        sport, dport, seq, _ack, off_flags = struct.unpack("!HHIIH", tcp[:14])
        if dport != port:
            continue
        flags, payload = off_flags & 0x3F, tcp[(off_flags >> 12) * 4 :]
        key = (src, sport, dst, dport)
        flow = current.get(key)
        if flags & TCP_SYN and not flags & TCP_ACK and flow is not None and flow.isn != seq:
            flow = None  # a new connection on the same tuple (a SYN retransmission is not)
        if flow is None:
            flow = FlowReport(family, src, sport, dst, dport)
            flows.append(flow)
            current[key] = flow
        flow.packets += 1
        if ip_ck == "bad" or tcp_ck != "ok":
            flow.bad_checksums.append(f"pkt#{flow.packets} ip={ip_ck} tcp={tcp_ck}")
        if flags & TCP_SYN:
            flow.syn_seen, flow.isn = True, seq
            flow._base = (seq + 1) & 0xFFFFFFFF
            continue
        if not payload:
            continue
        if flow._base is None:
            flow._base = seq
        rel = (seq - flow._base) & 0xFFFFFFFF
        flow.add(rel, payload, Segment(rel, len(payload), ts, ip_ck, tcp_ck))
    return flows
