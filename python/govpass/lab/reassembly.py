"""Lab censors that read a flow's first bytes across several packets (see censor.py).

``tspu``
    A TSPU-like box: when a flow's first data segment looks like the start of a TLS
    record (at least 3 bytes, ``16 03 0x``) it reassembles the next few packets
    (:data:`TSPU_PACKETS`) and kills the flow if the SNI is listed. A first segment
    of 1 or 2 bytes, or one that does not look like TLS, lets the flow through.
``reassemble``
    Reassembles the client's bytes, whatever the segments, until the ClientHello's
    name is read (or :data:`MAX_BYTES`): no split-only strategy gets past it.
``dropsecond``
    A box that reads the in-order bytes of a flow's first record in its first
    :data:`DROPSECOND_PACKETS` data packets and, once they show a listed name, silently
    drops (no RST) every later data packet of the flow, both ways: the first segment
    always gets through and is acknowledged (pure ACKs pass), so the client's kernel
    resends only the rest, at another sequence number, and a hello whole in the first
    segment gets through but the server's reply does not. The client sees silence,
    never a RST. A name not read by the end of the second packet (a cut that puts it,
    or a part of it, in the third segment or later) lets the flow through for good.
``splitreject``
    Not a censor: a model of servers that reset a connection whose first data segment
    is shorter than :data:`MIN_FIRST` bytes (F5 BIG-IP). It reads the name as the
    others do and resets only flows to the listed names (all flows when none is
    listed), so one name of the lab's server can be "picky".

Each keeps per-flow state only while a flow is undecided; decisions are logged like
the first-packet censor's, with the first segment's length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from govpass.lab.censor import FirstPacketCensor, Packet
from govpass.lab.clienthello import name_listed, read_hello

TSPU_PACKETS = 4  # packets a TSPU-like box reassembles after a TLS-looking start
DROPSECOND_PACKETS = 2  # packets the later-segment dropper reads
MAX_PACKETS = 64
MAX_BYTES = 64 * 1024
MIN_FIRST = 8  # the split-rejecting server's smallest acceptable first segment

Key = tuple[str, int, str, int]
Decision = tuple[bool, str | None, str]


@dataclass
class _Stream:
    next_seq: int
    first_len: int
    data: bytearray = field(default_factory=bytearray)
    packets: int = 0


class ReassemblingCensor(FirstPacketCensor):
    """Reads the name from the in-order client bytes of up to ``max_packets`` packets."""

    max_packets = MAX_PACKETS

    def __init__(
        self, names: Sequence[str], log: IO[str], port: int = 443, rst: bool = False
    ) -> None:
        super().__init__(names, log, port, rst)
        self.streams: dict[Key, _Stream] = {}

    def forget(self, key: Key) -> None:
        self.streams.pop(key, None)

    def start(self, pkt: Packet) -> Decision | None:
        """A decision from the first data segment alone, or None to read on."""
        return None

    def judge(self, sni: str, first_len: int) -> Decision:
        return name_listed(sni, self.names), sni, f"sni (first segment {first_len} bytes)"

    def inspect(self, key: Key, pkt: Packet) -> Decision | None:
        stream = self.streams.get(key)
        if stream is None:
            early = self.start(pkt)
            if early is not None:
                return early
            stream = _Stream(pkt.seq, len(pkt.payload))
            self.streams[key] = stream
        if pkt.seq != stream.next_seq:
            return None  # a retransmission or a gap: in order only, as boxes do
        stream.data += pkt.payload
        stream.next_seq = (stream.next_seq + len(pkt.payload)) & 0xFFFFFFFF
        stream.packets += 1
        view = read_hello(bytes(stream.data))
        if view.sni is not None:
            return self.judge(view.sni, stream.first_len)
        incomplete = view.reason.startswith(("truncated", "short"))
        if not incomplete:
            return False, None, view.reason
        if stream.packets >= self.max_packets or len(stream.data) >= MAX_BYTES:
            return False, None, f"gave up after {stream.packets} packets"
        return None


class TspuCensor(ReassemblingCensor):
    max_packets = TSPU_PACKETS

    def start(self, pkt: Packet) -> Decision | None:
        p = pkt.payload
        if len(p) >= 3 and p[0] == 0x16 and p[1] == 0x03 and p[2] <= 0x04:
            return None
        return False, None, f"first segment of {len(p)} bytes does not look like TLS"


class LaterSegmentDropper(ReassemblingCensor):
    """Silently drops a flow's data after its first packet once the first two show a
    listed name."""

    max_packets = DROPSECOND_PACKETS

    def __init__(
        self, names: Sequence[str], log: IO[str], port: int = 443, rst: bool = False
    ) -> None:
        super().__init__(names, log, port, rst=False)  # silence is the point
        self._first: bool = False

    def inspect(self, key: Key, pkt: Packet) -> Decision | None:
        self._first = key not in self.streams
        return super().inspect(key, pkt)

    def drops(self, pkt: Packet, deciding: bool) -> bool:
        if deciding and self._first:
            return False  # the first segment went by before the box decided
        return bool(pkt.payload)


class SplitRejectingServer(ReassemblingCensor):
    """Resets flows (to listed names) whose first data segment is under MIN_FIRST."""

    def __init__(
        self, names: Sequence[str], log: IO[str], port: int = 443, rst: bool = True
    ) -> None:
        super().__init__(names, log, port, rst=True)  # a server resets, always

    def start(self, pkt: Packet) -> Decision | None:
        if len(pkt.payload) >= MIN_FIRST:
            return False, None, f"first segment {len(pkt.payload)} bytes"
        if not self.names:
            return True, None, f"first segment {len(pkt.payload)} bytes < {MIN_FIRST}"
        return None

    def judge(self, sni: str, first_len: int) -> Decision:
        picky = name_listed(sni, self.names)
        return (
            picky,
            sni,
            f"first segment {first_len} bytes" + (f" < {MIN_FIRST}: reset" if picky else ""),
        )


KINDS: dict[str, type[FirstPacketCensor]] = {
    "firstpacket": FirstPacketCensor,
    "tspu": TspuCensor,
    "reassemble": ReassemblingCensor,
    "splitreject": SplitRejectingServer,
    "dropsecond": LaterSegmentDropper,
}
