"""Property tests of the engine over the ClientHello fixtures.

For any segmentation of a hello (and optionally bytes after it), any delivery order,
duplicates and overlapping retransmissions, any initial sequence number (the 2^32
wrap included) and any split configuration, what goes on the wire

(a) reassembles by sequence number to exactly the original bytes, every overlapping
    copy identical;
(b) has valid IP and TCP checksums in every new segment (recomputed by dpkt);
(c) is cut where the configuration says: when the flow is split, the segments of
    the split are exactly the documented plan and no payload on the wire straddles
    a cut;
(d) has no new segment larger than the largest original payload of the flow, nor
    than max-seg-payload;
(e) gives every packet the engine took exactly one verdict (RELEASE, DROP or ACCEPT).

A small model predicts when the engine must split (the first delivered packet starts
the record, the record completes within max-held-pkts packets) and with which plan.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import dpkt
from govpass import ACCEPT, DROP, RELEASE, SEND, Engine, EngineConfig
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

HELLOS = Path(__file__).parent / "fixtures" / "hellos"
MANIFEST: list[dict[str, Any]] = json.loads((HELLOS / "manifest.json").read_text())
RECORDS = {e["file"]: (HELLOS / e["file"]).read_bytes() for e in MANIFEST}
T0 = 5000.0
MAX_MSS = 1460
# GOVPASS_PROPERTY_EXAMPLES=5000 for a longer hunt.
SETTINGS = settings(
    max_examples=int(os.environ.get("GOVPASS_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------ packets
# Built with struct and checked with dpkt (scapy is 30x slower, and this file sends
# thousands of packets); tests/test_engine.py checks the same with scapy.

SRC4, DST4 = bytes([198, 51, 100, 2]), bytes([203, 0, 113, 9])
SRC6 = bytes.fromhex("20010db8000000000000000000000002")
DST6 = bytes.fromhex("20010db8000000000000000000000009")
DEST_OPTS = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next header TCP, PadN


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build(v6: bool, seq: int, payload: bytes, tsval: int | None, sport: int = 40000) -> bytes:
    """An IPv4 or IPv6 (behind a destination-options header) TCP packet to port 443."""
    opts = b"\x01\x01\x08\x0a" + struct.pack("!II", tsval, 99) if tsval is not None else b""
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            sport,
            443,
            seq % 2**32,
            31337,
            (20 + len(opts)) // 4 << 4,
            0x18,
            501,
            0,
            0,
        )
        + opts
        + payload
    )
    if v6:
        pseudo = SRC6 + DST6 + struct.pack("!IxxxB", len(tcp), 6)
        tcp[16:18] = struct.pack("!H", csum(pseudo + tcp))
        header = struct.pack("!IHBB", 6 << 28, len(DEST_OPTS) + len(tcp), 60, 64) + SRC6 + DST6
        return header + DEST_OPTS + bytes(tcp)
    pseudo = SRC4 + DST4 + struct.pack("!xBH", 6, len(tcp))
    tcp[16:18] = struct.pack("!H", csum(pseudo + tcp))
    ip = bytearray(
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0) + SRC4 + DST4
    )
    ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return bytes(ip) + bytes(tcp)


@dataclass
class Parsed:
    seq: int
    payload: bytes
    options: bytes
    checksums_ok: bool
    sport: int = 0


def parse(packet: bytes) -> Parsed:
    """Reads a packet with dpkt and has dpkt recompute both checksums."""
    if packet[0] >> 4 == 6:
        ip: Any = dpkt.ip6.IP6(packet)
        tcp = ip.data
        want = tcp.sum
        tcp.sum = 0
        ok = dpkt.ip6.IP6(bytes(ip)).data.sum == want
    else:
        ip = dpkt.ip.IP(packet)
        tcp = ip.data
        want_ip, want_tcp = ip.sum, tcp.sum
        ip.sum = tcp.sum = 0
        again = dpkt.ip.IP(bytes(ip))
        ok = again.sum == want_ip and again.data.sum == want_tcp
    return Parsed(tcp.seq, bytes(tcp.data), bytes(tcp.opts), ok, tcp.sport)


def test_the_packet_builder_agrees_with_scapy() -> None:
    for v6 in (False, True):
        for tsval in (None, 3):
            pkt = build(v6, 2**32 - 1, b"hello", tsval)
            p = parse(pkt)
            assert p.checksums_ok and p.payload == b"hello" and p.seq == 2**32 - 1
            sp = IPv6(pkt) if v6 else IP(pkt)
            tcp = sp[TCP]
            chk = tcp.chksum
            del tcp.chksum
            assert (IPv6(bytes(sp)) if v6 else IP(bytes(sp)))[TCP].chksum == chk
            if not v6:
                ip_chk = IP(pkt).chksum
                q = IP(pkt)
                del q.chksum
                assert IP(bytes(q)).chksum == ip_chk


# -------------------------------------------------------------------- model


def pieces(frm: int, to: int, cuts: list[int], limit: int) -> list[tuple[int, int]]:
    out, start = [], frm
    for end in [c for c in sorted(set(cuts)) if frm < c < to] + [to]:
        while end - start > limit:
            out.append((start, start + limit))
            start += limit
        if end > start:
            out.append((start, end))
        start = end
    return out


def resolve(pos: str, entry: dict[str, Any], host_known: bool) -> int | None:
    """Where one configured position lies in the record (the engine's documented rules)."""
    if pos.isdigit():
        return int(pos)
    name, delta = pos, 0
    for sign in "+-":
        if sign in pos:
            name, num = pos.split(sign)
            delta = int(num) if sign == "+" else -int(num)
    if not host_known:
        return None
    off, host = entry["sni_offset"], entry["sni"]
    labels = host.rstrip(".").split(".")
    i = len(labels) - 2 if len(labels) >= 2 else 0
    sld_start = off + sum(len(x) + 1 for x in labels[:i])
    base = {"sni": off, "sniend": off + len(host), "midsld": sld_start + len(labels[i]) // 2}[name]
    return base + delta


@dataclass
class Expect:
    """What the model knows: `split` is None when the first packet delivered does
    not start the record (the engine then sees no hello; no prediction)."""

    split: bool | None
    window: int = 0
    cuts: list[int] = field(default_factory=list)
    seg_limit: int = 0
    held: list[tuple[int, int]] = field(default_factory=list)


def model(
    deliveries: list[tuple[int, int]],
    entry: dict[str, Any],
    mode: str,
    chunk: int,
    positions: list[str],
    max_seg: int,
    max_held: int,
    header_extra: int = 0,
) -> Expect:
    record_len = entry["record_len"]
    first = deliveries[0]
    if first[0] != 0:
        return Expect(None)
    first_len = first[1] - first[0]
    if mode == "immediate":
        window = min(record_len, first_len)
        need = window if first_len >= 6 else 6  # a record is recognised from 6 bytes on
    else:
        window = need = record_len
    held = [first]
    reach = first[1]
    if reach < need:
        for d in deliveries[1:]:
            if len(held) >= max_held:
                return Expect(False)
            held.append(d)
            changed = True
            while changed:  # the contiguous prefix grows through pending pieces
                changed = False
                for a, b in held:
                    if a <= reach < b:
                        reach, changed = b, True
            if reach >= need:
                break
        else:
            return Expect(False)
    host_known = entry["sni"] is not None and entry["sni_offset"] + len(entry["sni"]) <= window
    raw = ([chunk] if chunk else []) + [resolve(p, entry, host_known) for p in positions]
    cuts = sorted({c for c in raw if c is not None and 0 < c < window})
    if not cuts:
        return Expect(False)
    # max-seg-payload assumes bare 20-byte IPv4 and TCP headers; options and
    # IPv6 (with its extension header here) take their extra bytes off it.
    seg_limit = min(max(max_seg - header_extra, 1), max(b - a for a, b in held))
    return Expect(True, window, cuts, seg_limit, held)


# --------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    entry: dict[str, Any]
    stream: bytes
    deliveries: list[tuple[int, int]]
    isn: int
    v6: bool
    timestamps: bool
    mode: str
    chunk: int
    positions: list[str]
    max_seg: int
    max_held: int

    def config(self) -> EngineConfig:
        return EngineConfig(
            split_mode=self.mode,
            split_chunk=self.chunk,
            split_positions=self.positions,
            max_seg_payload=self.max_seg,
            max_held_pkts=self.max_held,
        )


position = st.one_of(
    st.builds(
        lambda n, d: n if d == 0 else f"{n}{d:+d}",
        st.sampled_from(["sni", "midsld", "sniend"]),
        st.integers(-20, 20),
    ),
    st.integers(1, 2100).map(str),
)


@st.composite
def scenarios(draw: st.DrawFn, trailing: bool = True, small_segments: bool = False) -> Scenario:
    entry = draw(st.sampled_from(MANIFEST))
    record = RECORDS[entry["file"]]
    extras = [b""]
    if trailing:
        extras += [b"\x17\x03\x03\x00\x05early", bytes(range(256)) * 3, record]
    stream = record + draw(st.sampled_from(extras))
    n = len(stream)

    # Segmentation: MSS-sized packets or arbitrary cut points, each 1..1460 bytes.
    if draw(st.booleans()):
        mss = draw(st.integers(max(1, -(-n // 60)), MAX_MSS))
        bounds = [*list(range(0, n, mss)), n]
    else:
        inner = draw(st.lists(st.integers(1, n - 1), max_size=30, unique=True))
        bounds = [0]
        for b in [*sorted(inner), n]:
            while b - bounds[-1] > MAX_MSS:
                bounds.append(bounds[-1] + MAX_MSS)
            bounds.append(b)
    segments = list(itertools.pairwise(bounds))

    # Duplicates and retransmissions that overlap the original segments anyhow.
    extra = [segments[i] for i in draw(st.lists(st.integers(0, len(segments) - 1), max_size=4))]
    for start, length in draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, MAX_MSS)), max_size=3)
    ):
        extra.append((start, min(n, start + length)))

    order = draw(st.sampled_from(["in_order", "first_first", "any"]))
    if order == "in_order":
        deliveries = list(segments)
        for e in extra:
            deliveries.insert(draw(st.integers(1, len(deliveries))), e)
    elif order == "first_first":
        deliveries = [segments[0], *draw(st.permutations(segments[1:] + extra))]
    else:
        deliveries = list(draw(st.permutations(segments + extra)))

    chunk = draw(st.integers(0, 40))
    positions = draw(st.lists(position, max_size=4))
    if chunk == 0 and not positions:
        positions = ["midsld"]
    return Scenario(
        entry=entry,
        stream=stream,
        deliveries=deliveries,
        isn=draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 2500, 2**32 - 1))),
        v6=draw(st.booleans()),
        timestamps=draw(st.booleans()),
        mode=draw(st.sampled_from(["tls-hello", "tls-hello", "immediate"])),
        chunk=chunk,
        positions=positions,
        max_seg=draw(st.one_of(st.just(1460), st.integers(20, 1460)))
        if small_segments
        else draw(st.one_of(st.just(1460), st.integers(200, 1460))),
        max_held=draw(st.one_of(st.just(32), st.integers(1, 40))),
    )


# ------------------------------------------------------------------ running


@dataclass
class Run:
    wire: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, payload)
    sends: list[tuple[int, Parsed]] = field(default_factory=list)  # (call index, segment)
    split_call: int | None = None
    resplits: int = 0
    fates: dict[int, list[int]] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)


def run(s: Scenario) -> Run:
    eng = Engine(s.config())
    originals = [
        build(s.v6, s.isn + a, s.stream[a:b], i if s.timestamps else None)
        for i, (a, b) in enumerate(s.deliveries)
    ]
    r = Run()

    def offset(seq: int) -> int:
        return (seq - s.isn) % 2**32

    def carry_out(actions: list[Any], call: int) -> None:
        for a in actions:
            if a.kind == SEND:
                p = parse(a.packet)
                r.sends.append((call, p))
                r.wire.append((offset(p.seq), p.payload))
                continue
            assert a.kind in (RELEASE, DROP, ACCEPT)
            assert a.packet == originals[a.handle], "verdicts carry the original bytes"
            r.fates.setdefault(a.handle, []).append(a.kind)
            if a.kind != DROP:
                a0, b0 = s.deliveries[a.handle]
                r.wire.append((a0, s.stream[a0:b0]))

    for i, pkt in enumerate(originals):
        now = T0 + i * 1e-4
        carry_out(eng.expire(now), i)
        before = eng.stats()["splits"]
        out = eng.process(pkt, now, i)
        if out is None:
            a0, b0 = s.deliveries[i]
            r.wire.append((a0, s.stream[a0:b0]))
        else:
            r.taken.add(i)
            carry_out(out, i)
        if eng.stats()["splits"] > before:
            assert r.split_call is None, "one flow, one split"
            r.split_call = i
    carry_out(eng.release_all(), len(originals))
    r.resplits = eng.stats()["resplits"]
    return r


def check_common(s: Scenario, r: Run) -> Expect:
    # (e) exactly one verdict per packet taken, none for packets that passed.
    assert set(r.fates) == r.taken
    assert all(len(v) == 1 for v in r.fates.values()), r.fates

    # (a) the wire carries every byte, and every copy of a byte is the original.
    seen = bytearray(len(s.stream))
    for off, payload in r.wire:
        assert off + len(payload) <= len(s.stream), (off, len(payload))
        assert s.stream[off : off + len(payload)] == payload, f"bytes at {off} differ"
        seen[off : off + len(payload)] = b"\x01" * len(payload)
    assert all(seen), "some bytes never reached the wire"

    # (b) checksums; headers of new segments come from an original packet.
    for _, p in r.sends:
        assert p.checksums_ok
        assert bool(p.options) == s.timestamps, "options are kept in every segment"

    # (d) no new segment above the largest original payload of the flow.
    largest = max(b - a for a, b in s.deliveries)
    assert all(len(p.payload) <= largest for _, p in r.sends)

    # (c) the split is the documented plan, and nothing on the wire straddles a cut.
    extra = (40 + len(DEST_OPTS) - 20 if s.v6 else 0) + (12 if s.timestamps else 0)
    e = model(s.deliveries, s.entry, s.mode, s.chunk, s.positions, s.max_seg, s.max_held, extra)
    event(f"split predicted: {e.split}, resplits: {r.resplits > 0}")
    if e.split is not None:
        assert (r.split_call is not None) == e.split, (e, r.split_call)
    if e.split:
        split_segs = [
            (r_off := (p.seq - s.isn) % 2**32, r_off + len(p.payload))
            for call, p in r.sends
            if call == r.split_call
        ]
        # Bytes of a held packet beyond the window go out as they were, cut
        # only to respect the segment limit.
        tails = [
            piece
            for a, b in e.held
            if a < e.window < b
            for piece in pieces(e.window, b, [], e.seg_limit)
        ]
        assert sorted(split_segs) == sorted(pieces(0, e.window, e.cuts, e.seg_limit) + tails)
        first = min(split_segs)
        assert first == (0, min(e.cuts[0], e.seg_limit))
        if s.chunk and e.cuts[0] == s.chunk and s.chunk <= e.seg_limit:
            assert first[1] == s.chunk
        for off, payload in r.wire:
            for c in e.cuts:
                assert not off < c < off + len(payload), f"{off}+{len(payload)} straddles {c}"
    return e


@SETTINGS
@given(scenarios())
def test_any_delivery_gives_the_original_bytes_cut_as_configured(s: Scenario) -> None:
    r = run(s)
    check_common(s, r)


@SETTINGS
@given(scenarios(trailing=False))
def test_the_first_record_alone_splits_whenever_the_model_says_so(s: Scenario) -> None:
    r = run(s)
    check_common(s, r)


@SETTINGS
@given(scenarios(small_segments=True))
def test_no_new_segment_exceeds_max_seg_payload(s: Scenario) -> None:
    r = run(s)
    sizes = [len(p.payload) for _, p in r.sends]
    assert all(n <= s.max_seg for n in sizes), (s.max_seg, sizes)


# ------------------------------------------------------- many flows, with time


@dataclass
class Flow:
    stream: bytes
    segments: list[tuple[int, int]]
    isn: int
    v6: bool
    sport: int


@dataclass
class Step:
    flow: int  # -1: only an expire() call
    seg: tuple[int, int]
    gap: float


@st.composite
def busy_scenarios(draw: st.DrawFn) -> tuple[list[Flow], list[Step], EngineConfig]:
    flows = []
    for i in range(draw(st.integers(1, 4))):
        record = RECORDS[draw(st.sampled_from(sorted(RECORDS)))]
        n = len(record)
        mss = draw(st.integers(max(1, -(-n // 12)), MAX_MSS))
        bounds = [*range(0, n, mss), n]
        isn = draw(st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 2500, 2**32 - 1)))
        flows.append(Flow(record, list(pairwise(bounds)), isn, draw(st.booleans()), 41000 + i))
    queues = []
    for f in flows:
        segs = list(f.segments)
        segs += [segs[j] for j in draw(st.lists(st.integers(0, len(segs) - 1), max_size=2))]
        if draw(st.booleans()):
            segs = [segs[0], *draw(st.permutations(segs[1:]))]
        queues.append(segs)
    gaps = st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.2, 0.4])
    steps: list[Step] = []
    while any(queues):
        live = [i for i, q in enumerate(queues) if q]
        i = draw(st.sampled_from(live))
        if draw(st.integers(0, 9)) == 0:
            steps.append(Step(-1, (0, 0), draw(gaps)))
        steps.append(Step(i, queues[i].pop(0), draw(gaps)))
    cfg = EngineConfig(
        split_chunk=draw(st.integers(1, 40)),
        split_positions=draw(st.lists(position, max_size=2)),
        collect_timeout_ms=draw(st.sampled_from([50, 250, 1000])),
        max_held_pkts=draw(st.integers(1, 12)),
        max_flows=draw(st.integers(1, 5)),
        flow_timeout_s=draw(st.sampled_from([1, 30])),
        split_mode=draw(st.sampled_from(["tls-hello", "immediate"])),
    )
    return flows, steps, cfg


@SETTINGS
@given(busy_scenarios())
def test_interleaved_flows_with_timeouts_and_eviction_lose_nothing(
    case: tuple[list[Flow], list[Step], EngineConfig],
) -> None:
    flows, steps, cfg = case
    eng = Engine(cfg)
    by_port = {f.sport: k for k, f in enumerate(flows)}
    wire: list[list[tuple[int, bytes]]] = [[] for _ in flows]
    origin: dict[int, tuple[int, tuple[int, int]]] = {}
    fates: dict[int, int] = {}
    largest = [max(b - a for a, b in f.segments) for f in flows]

    def put(k: int, seg: tuple[int, int]) -> None:
        wire[k].append((seg[0], flows[k].stream[seg[0] : seg[1]]))

    def carry_out(actions: list[Any]) -> None:
        for a in actions:
            if a.kind == SEND:
                p = parse(a.packet)
                assert p.checksums_ok
                k = by_port[p.sport]
                assert len(p.payload) <= largest[k]
                wire[k].append(((p.seq - flows[k].isn) % 2**32, p.payload))
                continue
            fates[a.handle] = fates.get(a.handle, 0) + 1
            if a.kind != DROP:
                put(*origin[a.handle])

    now = T0
    for h, step in enumerate(steps):
        now += step.gap
        carry_out(eng.expire(now))
        if step.flow < 0:
            continue
        f = flows[step.flow]
        a, b = step.seg
        pkt = build(f.v6, f.isn + a, f.stream[a:b], None, f.sport)
        origin[h] = (step.flow, step.seg)
        out = eng.process(pkt, now, h)
        if out is None:
            put(step.flow, step.seg)
        else:
            fates.setdefault(h, 0)
            carry_out(out)
    carry_out(eng.release_all())

    assert all(n == 1 for n in fates.values()), fates
    stats = eng.stats()
    assert (stats["held_packets_now"], stats["held_bytes_now"], stats["flows_now"]) == (0, 0, 0)
    for k, f in enumerate(flows):
        seen = bytearray(len(f.stream))
        for off, payload in wire[k]:
            assert f.stream[off : off + len(payload)] == payload, (k, off)
            seen[off : off + len(payload)] = b"\x01" * len(payload)
        assert all(seen), f"flow {k} lost bytes"
