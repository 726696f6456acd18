"""``--block-quic listed``: drop the QUIC Initials of names that would be split.

The rules queue the first few outbound QUIC long-header packets of a UDP flow
(Initial or 0-RTT by their first byte). For each one :class:`QuicFilter`
removes the Initial packet protection (RFC 9001 §5: the keys come from the
Destination Connection ID, so anyone on the path can do it), reassembles the
CRYPTO stream, reads the SNI of the ClientHello and asks the engine's profiles
what a TCP flow to the same destination with that name would get. ``split``:
the packet is dropped, the handshake stalls and the browser falls back to
TCP, where govpass splits the hello. Anything else, or anything undecidable
(unknown version, not decryptable, name not complete yet): accepted.

The packet reading (long header, Initial keys, header and payload protection,
CRYPTO frames, the CRYPTO stream and the SNI in it) is the Rust core's
(``govpass_core::quic``, through :func:`govpass._core.quic_long_header` and
:class:`govpass._core.CryptoStream`); this module keeps the connections and
the verdicts.

A ClientHello may span several Initial packets (a post-quantum key share
makes it ~2 KB) and Chrome shuffles its CRYPTO frames, so the stream is kept
per connection (addresses, ports, DCID) for a few seconds, bounded in count
and bytes. The decision is made on the packet that completes the name and
remembered: retransmissions and 0-RTT packets of a dropped connection are
dropped too.

Pure: bytes and a timestamp in, a verdict out; no sockets, no clock.
"""

from __future__ import annotations

import socket
import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from govpass._core import CryptoStream, QuicHeader, quic_long_header

__all__ = ["QUIC_V1", "QUIC_V2", "CryptoStream", "QuicFilter", "QuicStats", "udp_datagram"]

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF  # RFC 9369


# ---------------------------------------------------------------- the filter

# (host or None, destination address, destination port, interface index)
# -> "split" | "pass" | "watch"
Choose = Callable[[str | None, str, int, int], str]


@dataclass
class _Conn:
    seen: float
    stream: CryptoStream | None  # None once decided
    drop: bool | None = None  # None: undecided


@dataclass
class QuicStats:
    packets: int = 0  # UDP packets looked at
    dropped: int = 0
    undecided: int = 0  # accepted without a decision (not decryptable, name incomplete, ...)
    split_conns: int = 0  # connections whose name would be split: their Initials dropped
    pass_conns: int = 0
    evicted: int = 0  # connections forgotten because the table was full


class QuicFilter:
    """Decides, packet by packet, which QUIC Initials to drop (see the module doc).

    `choose` is :meth:`govpass._core.Engine.choose`, so profiles reloaded into
    the engine apply here at once. State: at most `max_conns` connections, each
    forgotten `ttl` seconds after its last packet; at most `max_crypto` bytes
    of CRYPTO stream per connection (a larger hello is not decided: accepted).
    """

    def __init__(
        self,
        choose: Choose,
        ttl: float = 5.0,
        max_conns: int = 1024,
        max_crypto: int = 16384,
    ) -> None:
        if ttl <= 0 or max_conns < 1 or max_crypto < 1:
            raise ValueError("ttl, max_conns and max_crypto must be positive")
        self.choose = choose
        self.ttl = ttl
        self.max_conns = max_conns
        self.max_crypto = max_crypto
        self.counters = QuicStats()
        self._conns: OrderedDict[Hashable, _Conn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._conns)

    def should_drop(self, packet: bytes, now: float, iface: int = 0) -> bool:
        """Verdict for one IP packet carrying a UDP datagram (True: drop it)."""
        parsed = udp_datagram(packet)
        if parsed is None:
            self.counters.packets += 1
            self.counters.undecided += 1
            return False
        flow, dst, dport, datagram = parsed
        return self.should_drop_datagram(datagram, flow, dst, dport, now, iface)

    def should_drop_datagram(
        self,
        datagram: bytes,
        flow: Hashable,
        dst: str,
        dport: int,
        now: float,
        iface: int = 0,
    ) -> bool:
        """Verdict for one UDP payload; `flow` names its 4-tuple (any hashable)."""
        c = self.counters
        c.packets += 1
        self._expire(now)
        header = quic_long_header(datagram)
        if isinstance(header, str):  # not a long-header packet
            c.undecided += 1
            return False
        key = (flow, header.version, header.dcid)
        conn = self._conns.get(key)
        if conn is not None:
            conn.seen = now
            self._conns.move_to_end(key)
            if conn.drop is not None:  # decided: retransmissions and 0-RTT follow
                return self._verdict(conn.drop)
        if header.kind != "initial":  # unknown version, or 0-RTT of an undecided connection
            c.undecided += 1
            return False
        frames = self._frames(header)
        if frames is None:
            c.undecided += 1
            return False
        if conn is None:
            conn = self._insert(key, _Conn(now, CryptoStream(self.max_crypto)))
        assert conn.stream is not None
        if not all(conn.stream.add(offset, data) for offset, data in frames):
            return self._decide(conn, False)  # too large to follow: fail open
        status, host = conn.stream.sni()
        if status == "needmore":
            c.undecided += 1
            return False
        if status == "malformed":
            return self._decide(conn, False)
        return self._decide(conn, self.choose(host, dst, dport, iface) == "split")

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "quic_packets": c.packets,
            "quic_dropped": c.dropped,
            "quic_undecided": c.undecided,
            "quic_split_conns": c.split_conns,
            "quic_pass_conns": c.pass_conns,
            "quic_evicted": c.evicted,
            "quic_conns_now": len(self._conns),
        }

    @staticmethod
    def _frames(header: QuicHeader) -> list[tuple[int, bytes]] | None:
        """CRYPTO frames of the Initial at the start of the datagram and of the
        Initials of the same connection coalesced after it; None when the first
        does not decrypt."""
        frames = header.initial_frames()
        return None if isinstance(frames, str) else frames

    def _insert(self, key: Hashable, conn: _Conn) -> _Conn:
        while len(self._conns) >= self.max_conns:
            self._conns.popitem(last=False)
            self.counters.evicted += 1
        self._conns[key] = conn
        return conn

    def _expire(self, now: float) -> None:
        conns = self._conns
        while conns:
            oldest = next(iter(conns.values()))
            if now - oldest.seen <= self.ttl:
                break
            conns.popitem(last=False)

    def _decide(self, conn: _Conn, drop: bool) -> bool:
        conn.drop = drop
        conn.stream = None
        if drop:
            self.counters.split_conns += 1
        else:
            self.counters.pass_conns += 1
        return self._verdict(drop)

    def _verdict(self, drop: bool) -> bool:
        if drop:
            self.counters.dropped += 1
        return drop


def udp_datagram(packet: bytes) -> tuple[Hashable, str, int, bytes] | None:
    """(flow key, destination address, destination port, UDP payload) of an
    IPv4/IPv6 packet carrying a whole UDP datagram; None for anything else
    (IPv4 fragments, IPv6 extension headers, other protocols)."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl + 8 or packet[9] != socket.IPPROTO_UDP:
            return None
        if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:  # MF or a fragment offset
            return None
        src, dst, udp, family = packet[12:16], packet[16:20], ihl, socket.AF_INET
    elif version == 6:
        if len(packet) < 48 or packet[6] != socket.IPPROTO_UDP:
            return None
        src, dst, udp, family = packet[8:24], packet[24:40], 40, socket.AF_INET6
    else:
        return None
    sport, dport, length = struct.unpack_from("!HHH", packet, udp)
    end = udp + length if length >= 8 else len(packet)
    payload = packet[udp + 8 : end]
    return (src, dst, sport, dport), socket.inet_ntop(family, dst), dport, payload
