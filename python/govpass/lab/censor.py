"""The lab's censors, all run in the censor namespace on forwarded TCP/443 traffic.

``string``
    The kernel's per-packet string match: one ``-m string --algo bm -j DROP`` rule per
    listed name in FORWARD (iptables and ip6tables). :func:`string_rules` plans them.

``firstpacket``
    A first-data-packet DPI, this module's ``main``, run as::

        python -m govpass.lab.censor --queue 0 --log LOG [--rst] NAME...

    Forwarded TCP/443 packets of both directions reach it through NFQUEUE
    (:func:`queue_rules`). For each flow it parses only the first client→server packet
    that carries payload as a ClientHello. A listed SNI (exact or subdomain) kills the
    flow: that packet and every later packet of the flow, both ways, are dropped (and with
    ``--rst`` both ends get a RST). Anything else — including a first packet too short to
    hold the SNI — lets the flow through for good. One JSON line per decision goes to LOG:
    ``{"flow": "a:p>b:443", "sni": name or null, "verdict": "kill"|"allow", ...}``.

``tspu``, ``reassemble``, ``splitreject``, ``dropsecond``
    Boxes that read the first bytes across several packets (govpass.lab.reassembly),
    run by the same program with ``--kind``; ``--also KIND=NAMES`` puts a second box
    on the same queue (e.g. a first-packet DPI plus a server that rejects split hellos).

``address``
    An address block: every TCP/443 packet to the listed addresses is dropped in
    FORWARD (:func:`address_rules`), whatever it carries.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from govpass.lab.clienthello import name_listed, read_hello

READY = "ready"
MAX_FLOWS = 65536
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def string_rules(names: Sequence[str], action: str = "-I", port: int = 443) -> list[list[str]]:
    """argv lists that add (``-I``) or delete (``-D``) the string-match censor."""
    rules = []
    for tool in ("iptables", "ip6tables"):
        for name in names:
            rules.append(
                [
                    tool,
                    "-w",
                    action,
                    "FORWARD",
                    "-p",
                    "tcp",
                    "--dport",
                    str(port),
                    "-m",
                    "string",
                    "--string",
                    name,
                    "--algo",
                    "bm",
                    "-j",
                    "DROP",
                ]
            )
    return rules


def queue_rules(queue: int, action: str = "-I", port: int = 443) -> list[list[str]]:
    """argv lists that send forwarded TCP/``port`` (both directions) to NFQUEUE ``queue``."""
    rules = []
    for tool in ("iptables", "ip6tables"):
        for match in ("--dport", "--sport"):
            rules.append(
                [
                    tool,
                    "-w",
                    action,
                    "FORWARD",
                    "-p",
                    "tcp",
                    match,
                    str(port),
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    str(queue),
                    "--queue-bypass",
                ]
            )
    return rules


def address_rules(addrs: Sequence[str], action: str = "-I", port: int = 443) -> list[list[str]]:
    """argv lists that add (``-I``) or delete (``-D``) an address block: every TCP/``port``
    packet to one of ``addrs`` is dropped in FORWARD."""
    rules = []
    for addr in addrs:
        tool = "ip6tables" if ":" in addr else "iptables"
        rules.append(
            [tool, "-w", action, "FORWARD", "-d", addr, "-p", "tcp", "--dport", str(port),
             "-j", "DROP"]
        )  # fmt: skip
    return rules


def read_decisions(path: Path) -> list[dict[str, Any]]:
    """The decision lines a firstpacket censor wrote so far (the ready line excluded)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") != READY:
                out.append(rec)
    return out


@dataclass(frozen=True)
class Packet:
    """The parts of one IPv4/IPv6 TCP packet the censor looks at."""

    family: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse_packet(raw: bytes) -> Packet | None:
    """IPv4/IPv6 + TCP, or None for anything else (which the censor lets through)."""
    if not raw:
        return None
    version = raw[0] >> 4
    if version == 4 and len(raw) >= 20:
        ihl = (raw[0] & 0x0F) * 4
        total = int.from_bytes(raw[2:4], "big")
        if raw[9] != socket.IPPROTO_TCP or total > len(raw):
            return None
        family, src, dst = (
            4,
            socket.inet_ntop(socket.AF_INET, raw[12:16]),
            socket.inet_ntop(socket.AF_INET, raw[16:20]),
        )
        seg = raw[ihl:total]
    elif version == 6 and len(raw) >= 40:
        # Extension headers are not expected in the lab; a packet with any is passed.
        if raw[6] != socket.IPPROTO_TCP:
            return None
        family, src, dst = (
            6,
            socket.inet_ntop(socket.AF_INET6, raw[8:24]),
            socket.inet_ntop(socket.AF_INET6, raw[24:40]),
        )
        seg = raw[40 : 40 + int.from_bytes(raw[4:6], "big")]
    else:
        return None
    if len(seg) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", seg[:14])
    doff = (off_flags >> 12) * 4
    if doff < 20 or doff > len(seg):
        return None
    return Packet(family, src, dst, sport, dport, seq, ack, off_flags & 0x3F, seg[doff:])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_tcp(
    family: int,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    window: int = 64240,
) -> bytes:
    """An IPv4/IPv6 TCP packet without options, with valid checksums."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0) + payload
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s, d = socket.inet_pton(af, src), socket.inet_pton(af, dst)
    if family == 4:
        pseudo = s + d + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    else:
        pseudo = s + d + struct.pack("!I3xB", len(tcp), socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    if family == 4:
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0, s, d
        )
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, s, d)
    return ip + tcp


def build_rst(
    family: int, src: str, dst: str, sport: int, dport: int, seq: int, ack: int | None
) -> bytes:
    """A bare TCP RST (RST+ACK when ``ack`` is given)."""
    flags = TCP_RST | (TCP_ACK if ack is not None else 0)
    return build_tcp(family, src, dst, sport, dport, seq, ack or 0, flags, window=0)


class FirstPacketCensor:
    """Per-flow verdicts from the first payload packet; sans-I/O except for ``inject``."""

    def __init__(
        self, names: Sequence[str], log: IO[str], port: int = 443, rst: bool = False
    ) -> None:
        self.names = list(names)
        self.log = log
        self.port = port
        self.rst = rst
        self.flows: OrderedDict[tuple[str, int, str, int], str] = OrderedDict()
        self._syns: dict[tuple[str, int, str, int], int] = {}
        self._raw: dict[int, socket.socket] = {}

    def _trim(self) -> None:
        while len(self.flows) > MAX_FLOWS:
            old, _ = self.flows.popitem(last=False)
            self._syns.pop(old, None)
            self.forget(old)

    def verdict(self, raw: bytes) -> bool:
        """True to accept the packet, False to drop it."""
        pkt = parse_packet(raw)
        if pkt is None:
            return True
        if pkt.dport == self.port:
            key, outbound = (pkt.src, pkt.sport, pkt.dst, pkt.dport), True
        elif pkt.sport == self.port:
            key, outbound = (pkt.dst, pkt.dport, pkt.src, pkt.sport), False
        else:
            return True
        if outbound and pkt.flags & TCP_SYN and not pkt.flags & TCP_ACK:
            if self._syns.get(key) != pkt.seq:  # a new ISN: a new connection on this tuple
                self.flows[key] = "new"
                self.forget(key)
                self.flows.move_to_end(key)
                self._syns[key] = pkt.seq
                self._trim()
            return True
        state = self.flows.get(key)
        if state == "allow":
            return True
        if state == "kill":
            return not self.drops(pkt, deciding=False)
        if state is None or not outbound or not pkt.payload:
            # No SYN seen: the flow began before this censor did; leave it alone.
            return True
        decision = self.inspect(key, pkt)
        if decision is None:  # still reading the flow's first bytes
            return True
        kill, sni, reason = decision
        self.flows[key] = "kill" if kill else "allow"
        self.forget(key)
        self.emit(key, pkt, sni, reason, "kill" if kill else "allow")
        if kill and self.rst:
            self.inject_rsts(pkt)
        return not kill or not self.drops(pkt, deciding=True)

    def drops(self, pkt: Packet, deciding: bool) -> bool:
        """Whether a packet of a killed flow is dropped (``deciding``: the packet that
        made the decision). This censor: every one, both ways."""
        return True

    def inspect(
        self, key: tuple[str, int, str, int], pkt: Packet
    ) -> tuple[bool, str | None, str] | None:
        """(kill, sni, reason) for a client payload packet of an undecided flow, or
        None to let it pass undecided. This censor: the first one decides."""
        view = read_hello(pkt.payload)
        return view.sni is not None and name_listed(view.sni, self.names), view.sni, view.reason

    def forget(self, key: tuple[str, int, str, int]) -> None:
        """Drops what :meth:`inspect` kept about a flow (a decided or evicted one)."""

    def emit(
        self,
        key: tuple[str, int, str, int],
        pkt: Packet,
        sni: str | None,
        reason: str,
        verdict: str,
    ) -> None:
        fmt = "{}:{}>{}:{}" if pkt.family == 4 else "[{}]:{}>[{}]:{}"
        rec = {
            "ts": round(time.time(), 3),
            "box": type(self).__name__,
            "flow": fmt.format(*key),
            "family": pkt.family,
            "sni": sni,
            "reason": reason,
            "verdict": verdict,
            "len": len(pkt.payload),
        }
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def inject_rsts(self, pkt: Packet) -> None:
        to_client = build_rst(
            pkt.family,
            pkt.dst,
            pkt.src,
            pkt.dport,
            pkt.sport,
            pkt.ack,
            (pkt.seq + len(pkt.payload)) & 0xFFFFFFFF,
        )
        to_server = build_rst(pkt.family, pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.seq, None)
        af = socket.AF_INET if pkt.family == 4 else socket.AF_INET6
        sock = self._raw.get(pkt.family)
        if sock is None:
            # IPPROTO_RAW implies a caller-built IP header for both families on Linux.
            sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self._raw[pkt.family] = sock
        for dst, frame in ((pkt.src, to_client), (pkt.dst, to_server)):
            try:
                sock.sendto(frame, (dst, 0))
            except OSError as exc:
                self.log.write(json.dumps({"event": "rst-error", "error": str(exc)}) + "\n")


def parse_also(text: str) -> tuple[str, list[str]]:
    """``KIND=NAME,NAME`` (names may be empty: ``splitreject=``)."""
    from govpass.lab.reassembly import KINDS

    kind, _, names = text.partition("=")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {kind!r} (accepted: {', '.join(KINDS)})")
    return kind, [n for n in names.split(",") if n]


def main(argv: Sequence[str] | None = None) -> None:
    from govpass.lab.reassembly import KINDS

    ap = argparse.ArgumentParser(prog="python -m govpass.lab.censor")
    ap.add_argument("names", nargs="*", help="listed names (exact or parent domain)")
    ap.add_argument("--kind", choices=sorted(KINDS), default="firstpacket")
    ap.add_argument("--queue", type=int, default=0)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--rst", action="store_true", help="also reset both ends of killed flows")
    ap.add_argument(
        "--also",
        type=parse_also,
        action="append",
        default=[],
        metavar="KIND=NAMES",
        help="another box on the same queue, e.g. splitreject=allowed.example",
    )
    args = ap.parse_args(argv)

    from netfilterqueue import NetfilterQueue  # Linux-only; imported where it is needed

    with open(args.log, "a", encoding="utf-8") as log:
        boxes = [KINDS[args.kind](args.names, log, args.port, args.rst)]
        boxes += [KINDS[kind](names, log, args.port, args.rst) for kind, names in args.also]

        def on_packet(pkt: Any) -> None:
            raw = pkt.get_payload()
            # Every box sees every packet (each keeps its own flow state).
            if all([box.verdict(raw) for box in boxes]):
                pkt.accept()
            else:
                pkt.drop()

        nfq = NetfilterQueue()
        nfq.bind(args.queue, on_packet, max_len=4096)
        ready = {"event": READY, "queue": args.queue, "kind": args.kind, "names": args.names}
        log.write(json.dumps(ready) + "\n")
        log.flush()
        try:
            nfq.run()
        finally:
            nfq.unbind()


if __name__ == "__main__":
    main()
