"""Offline runs of the engine: read a capture, write what govpass would have put on the wire.

Every packet's IP bytes go through :class:`govpass.Engine` with the capture's own
timestamps as the clock (``expire`` is called before each packet, so collect-timeouts
fire as they would live). The output is a classic pcap with the input's link type:

* packets the engine lets pass are written at their own timestamp;
* packets it takes are written when it RELEASEs (or ACCEPTs) them, DROPped ones never;
* new segments (SEND) are written in action order, wrapped in the link header of a
  captured packet between the same two addresses (for Ethernet: the original MAC
  and VLAN tags; behind PPPoE with the PPPoE length of the new segment), for raw IP
  as bare IP bytes.

Frames that carry no IP (ARP, LLDP, PPPoE discovery, LCP, ...) or whose link
header does not add up (:mod:`govpass.link_headers`) are copied unchanged. Reading uses dpkt
(pcap and pcapng; for pcapng the link type of the first interface applies to all
packets, as in dpkt). Nothing here knows about the command line.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import dpkt

from govpass import ACCEPT, DROP, RELEASE, SEND, Engine, EngineConfig
from govpass._core import Profile
from govpass.errors import EngineError, GovpassError
from govpass.link_headers import LINK_NAMES, Located, UnsupportedLinkType, locate, wrap

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# Classic pcap magics as stored in the file (either byte order) -> nanosecond timestamps.
PCAP_MAGICS: dict[bytes, bool] = {
    b"\xa1\xb2\xc3\xd4": False,
    b"\xd4\xc3\xb2\xa1": False,
    b"\xa1\xb2\x3c\x4d": True,
    b"\x4d\x3c\xb2\xa1": True,
}

# Large enough for any packet, including GRO/TSO super-packets captured on the host.
OUT_SNAPLEN = 262144
NS_PER_S = 1_000_000_000


class PcapError(GovpassError):
    """The capture cannot be read, is not a capture, or the output cannot be written."""


def _locate(linktype: int, frame: bytes) -> Located | None:
    try:
        return locate(linktype, frame)
    except UnsupportedLinkType as e:
        raise PcapError(str(e)) from e


def _address_key(ip: bytes) -> bytes | None:
    """The version and both addresses of an IP packet: SEND packets get the link
    header of a captured packet with the same key."""
    version = ip[0] >> 4 if ip else 0
    if version == 4 and len(ip) >= 20:
        return ip[0:1] + ip[12:20]
    if version == 6 and len(ip) >= 40:
        return b"\x60" + ip[8:40]
    return None


@dataclass
class Summary:
    """What a run saw and did. ``engine`` holds the engine's own counters."""

    input: str
    output: str
    format: str
    link_type: int
    packets_in: int = 0
    packets_out: int = 0
    non_ip: int = 0
    passed: int = 0
    released: int = 0
    dropped: int = 0
    sent: int = 0
    input_truncated: bool = False
    engine: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fail_open(self) -> dict[str, int]:
        return dict(self.engine.get("fail_open", {}))

    def as_dict(self) -> dict[str, Any]:
        e = self.engine
        return {
            "input": self.input,
            "output": self.output,
            "format": self.format,
            "link_type": self.link_type,
            "link_name": LINK_NAMES.get(self.link_type, str(self.link_type)),
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "non_ip": self.non_ip,
            "passed": self.passed,
            "released": self.released,
            "dropped": self.dropped,
            "sent": self.sent,
            "flows": e.get("flows", 0),
            "splits": e.get("splits", 0),
            "resplits": e.get("resplits", 0),
            "segments": e.get("segments", 0),
            "profile_pass": e.get("profile_pass", 0),
            "evicted": e.get("evicted", 0),
            "held_packets_peak": e.get("held_packets_peak", 0),
            "fail_open": self.fail_open,
            "input_truncated": self.input_truncated,
            "settings": dict(self.settings),
        }


class PcapWriter:
    """A classic pcap writer with exact integer timestamps (dpkt's rounds a float,
    which can give a microsecond field of 1000000)."""

    def __init__(self, fh: BinaryIO, linktype: int, nano: bool) -> None:
        self._fh = fh
        self._nano = nano
        magic = 0xA1B23C4D if nano else 0xA1B2C3D4
        fh.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, OUT_SNAPLEN, linktype))

    def write(self, frame: bytes, ts_ns: int) -> None:
        if self._nano:
            sec, frac = divmod(ts_ns, NS_PER_S)
        else:
            sec, frac = divmod((ts_ns + 500) // 1000, 1_000_000)
        self._fh.write(struct.pack("<IIII", sec & 0xFFFFFFFF, frac, len(frame), len(frame)))
        self._fh.write(frame)


@dataclass
class Capture:
    """An opened input capture."""

    packets: Iterator[tuple[int, bytes]]  # (timestamp in ns, frame)
    linktype: int
    format: str  # "pcap" | "pcapng"
    nano: bool
    truncated: list[bool] = field(default_factory=lambda: [False])


def _to_ns(ts: float | Decimal, resolution_ns: int) -> int:
    """A dpkt timestamp (a float, or a Decimal for nanosecond pcap) in integer
    nanoseconds, rounded to the file's resolution (the float is off by a few ulps)."""
    ticks = (Decimal(ts) * NS_PER_S / resolution_ns).to_integral_value()
    return int(ticks) * resolution_ns


class _Prefixed:
    """A read-only stream that first gives back bytes already read: the magic is
    sniffed without seeking, so pipes (/dev/stdin) work too."""

    def __init__(self, head: bytes, fh: BinaryIO) -> None:
        self._head = head
        self._fh = fh
        self.name = getattr(fh, "name", "<capture>")

    def read(self, n: int = -1) -> bytes:
        if not self._head:
            return self._fh.read(n)
        if n < 0:
            data, self._head = self._head + self._fh.read(), b""
            return data
        data, self._head = self._head[:n], self._head[n:]
        if len(data) < n:
            data += self._fh.read(n - len(data))
        return data


def _iterate(
    path: Path, reader: Any, flag: list[bool], resolution_ns: int
) -> Iterator[tuple[int, bytes]]:
    it = iter(reader)
    while True:
        try:
            ts, buf = next(it)
        except StopIteration:
            return
        except (dpkt.dpkt.Error, struct.error, ValueError, IndexError):
            # A capture cut off mid-record (tcpdump killed): keep what came before.
            flag[0] = True
            return
        except OSError as e:
            raise PcapError(f"cannot read {path}: {e.strerror or e}") from e
        yield _to_ns(ts, resolution_ns), bytes(buf)


@contextlib.contextmanager
def open_capture(path: Path) -> Iterator[Capture]:
    """Opens a pcap or pcapng file; errors say which file and what is wrong."""
    try:
        fh = path.open("rb")
    except OSError as e:
        raise PcapError(f"cannot read {path}: {e.strerror or e}") from e
    with fh:
        try:
            magic = fh.read(4)
        except OSError as e:
            raise PcapError(f"cannot read {path}: {e.strerror or e}") from e
        stream = _Prefixed(magic, fh)
        if not magic:
            raise PcapError(f"{path} is empty, not a pcap or pcapng file")
        try:
            if magic == PCAPNG_MAGIC:
                reader: Any = dpkt.pcapng.Reader(stream)
                fmt, nano = "pcapng", False
            elif magic in PCAP_MAGICS:
                reader = dpkt.pcap.Reader(stream)
                fmt, nano = "pcap", PCAP_MAGICS[magic]
            else:
                raise PcapError(f"{path} is not a pcap or pcapng file (starts with {magic.hex()})")
        except (dpkt.dpkt.Error, struct.error, ValueError) as e:
            raise PcapError(f"{path} is not a readable {_guess(magic)} file: {e}") from e
        except OSError as e:
            raise PcapError(f"cannot read {path}: {e.strerror or e}") from e
        linktype = int(reader.datalink())
        if linktype not in LINK_NAMES:
            supported = ", ".join(f"{n} ({k})" for k, n in sorted(LINK_NAMES.items()))
            raise PcapError(
                f"{path}: link type {linktype} is not supported (supported: {supported})"
            )
        # Timestamp resolution of the file: dpkt keeps it as the divisor of its ticks.
        divisor = float(getattr(reader, "_divisor", 1e6))
        resolution_ns = max(1, round(NS_PER_S / divisor)) if divisor > 0 else 1000
        flag = [False]
        yield Capture(_iterate(path, reader, flag, resolution_ns), linktype, fmt, nano, flag)


def _guess(magic: bytes) -> str:
    return "pcapng" if magic == PCAPNG_MAGIC else "pcap"


def _settings(cfg: EngineConfig) -> dict[str, Any]:
    return {
        "split-mode": cfg.split_mode,
        "split-chunk": cfg.split_chunk,
        "split-pos": list(cfg.split_positions),
        "collect-timeout": cfg.collect_timeout_ms,
        "max-buffer": cfg.max_buffer,
        "max-held-pkts": cfg.max_held_pkts,
        "max-seg-payload": cfg.max_seg_payload,
        "flow-timeout": cfg.flow_timeout_s,
        "max-flows": cfg.max_flows,
        "ports": list(cfg.ports),
    }


class _Rewriter:
    """Feeds frames to the engine and writes what its actions put on the wire."""

    def __init__(self, engine: Engine, writer: PcapWriter, linktype: int, summary: Summary) -> None:
        self.engine = engine
        self.writer = writer
        self.linktype = linktype
        self.summary = summary
        self.held: dict[int, bytes] = {}  # handle -> original frame
        # address key -> (link header, offset of its PPPoE length field or None)
        self.links: dict[bytes, tuple[bytes, int | None]] = {}
        self.next_handle = 0
        self.last_ns: int | None = None

    def _write(self, frame: bytes, ts_ns: int) -> None:
        self.writer.write(frame, ts_ns)
        self.summary.packets_out += 1

    def feed(self, ts_ns: int, frame: bytes) -> None:
        self.last_ns = ts_ns
        now = ts_ns / NS_PER_S
        self._carry_out(self.engine.expire(now), ts_ns, None)
        self.summary.packets_in += 1
        found = _locate(self.linktype, frame)
        if found is None:
            self.summary.non_ip += 1
            self._write(frame, ts_ns)
            return
        ip = frame[found.start : found.end]
        link = (frame[: found.start], found.pppoe_length_at)
        key = _address_key(ip)
        if key is not None:
            self.links[key] = link
        handle = self.next_handle
        self.next_handle += 1
        actions = self.engine.process(ip, now, handle)
        if actions is None:
            self.summary.passed += 1
            self._write(frame, ts_ns)
            return
        self.held[handle] = frame
        self._carry_out(actions, ts_ns, link)

    def finish(self, collect_timeout_ms: float) -> None:
        """Lets pending collect-timeouts fire after the last packet, then releases
        whatever is still held."""
        end_ns = self.last_ns or 0
        if self.last_ns is not None:
            end_ns += round(collect_timeout_ms * 1e6)
            self._carry_out(self.engine.expire(end_ns / NS_PER_S), end_ns, None)
        self._carry_out(self.engine.release_all(), end_ns, None)
        if self.held:
            raise EngineError(
                f"engine kept {len(self.held)} packet(s) without a verdict after release_all"
            )

    def _carry_out(
        self, actions: list[Any], ts_ns: int, link: tuple[bytes, int | None] | None
    ) -> None:
        for action in actions:
            kind = action.kind
            if kind == SEND:
                packet: bytes = action.packet
                key = _address_key(packet)
                header = self.links.get(key, link) if key is not None else link
                if header is None:
                    raise EngineError("engine sent a segment of a flow never captured")
                try:
                    self._write(wrap(*header, packet), ts_ns)
                except ValueError as e:
                    raise EngineError(f"engine sent a segment the link cannot carry: {e}") from e
                self.summary.sent += 1
                continue
            frame = self.held.pop(action.handle, None)
            if frame is None:
                raise EngineError(f"engine gave packet #{action.handle} a second verdict")
            if kind in (RELEASE, ACCEPT):
                self._write(frame, ts_ns)
                self.summary.released += 1
            elif kind == DROP:
                self.summary.dropped += 1
            else:
                raise EngineError(f"unknown engine action kind {kind}")


def rewrite(
    src: Path,
    dst: Path,
    engine_config: EngineConfig | None = None,
    profiles: list[Profile] | None = None,
) -> Summary:
    """Runs the engine over capture `src` and writes the resulting wire to `dst` (pcap).

    A regular output file is written beside `dst` and renamed into place, so a
    failed run leaves no half-written capture.
    """
    cfg = engine_config if engine_config is not None else EngineConfig()
    src, dst = Path(src), Path(dst)
    with contextlib.suppress(OSError):
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise PcapError(f"output {dst} is the input file; choose another path")
    engine = Engine(cfg)
    if profiles:
        engine.set_profiles(profiles)
    with open_capture(src) as cap:
        summary = Summary(str(src), str(dst), cap.format, cap.linktype, settings=_settings(cfg))
        # A regular file is written beside and renamed into place; anything else
        # (/dev/stdout, a FIFO) is written to directly, never replaced.
        special = dst.exists() and not dst.is_file()
        target = dst if special else dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        try:
            with target.open("wb") as fh:
                rewriter = _Rewriter(
                    engine, PcapWriter(fh, cap.linktype, cap.nano), cap.linktype, summary
                )
                for ts_ns, frame in cap.packets:
                    rewriter.feed(ts_ns, frame)
                rewriter.finish(cfg.collect_timeout_ms)
            if not special:
                os.replace(target, dst)
        except OSError as e:
            raise PcapError(f"cannot write {dst}: {e.strerror or e}") from e
        finally:
            if not special:
                with contextlib.suppress(OSError):
                    target.unlink()
        summary.input_truncated = cap.truncated[0]
    summary.engine = dict(engine.stats())
    return summary
