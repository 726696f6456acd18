"""The Python face of the engine over real packets: ClientHello fixtures from real
clients wrapped in IPv4/IPv6 TCP packets built with scapy. Each test is a small
playbook: packets in, the exact actions out."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from govpass import ACCEPT, DROP, RELEASE, SEND, Engine, EngineConfig
from govpass.errors import ConfigError
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.packet import Raw

HELLOS = Path(__file__).parent / "fixtures" / "hellos"
MANIFEST = json.loads((HELLOS / "manifest.json").read_text())
SRC4, DST4 = "198.51.100.2", "203.0.113.9"
SRC6, DST6 = "2001:db8::2", "2001:db8::9"
ISN = 1_000_000
ACK = 777
T0 = 1000.0
ALL_REASONS = {
    "not_tls",
    "overflow",
    "too_many_packets",
    "timeout",
    "syn_data",
    "fin_rst",
    "ambiguous",
    "truncated",
    "evicted",
    "no_cut",
    "internal",
}


def hello(name: str) -> bytes:
    return (HELLOS / name).read_bytes()


OPENSSL = hello("openssl_default.bin")
CHROMIUM = hello("chromium_sni_late.bin")


def ts_opts(tsval: int) -> list[tuple[str, Any]]:
    return [("NOP", None), ("NOP", None), ("Timestamp", (tsval, 4242))]


def v4(
    payload: bytes = b"",
    seq: int = ISN,
    flags: str = "PA",
    *,
    sport: int = 40000,
    dport: int = 443,
    options: list[Any] | None = None,
) -> bytes:
    pkt = IP(src=SRC4, dst=DST4, id=0x1234, flags="DF", ttl=61) / TCP(
        sport=sport,
        dport=dport,
        seq=seq % 2**32,
        ack=ACK,
        flags=flags,
        window=502,
        options=options or [],
    )
    return bytes(pkt / Raw(payload) if payload else pkt)


def v6(
    payload: bytes = b"",
    seq: int = ISN,
    flags: str = "PA",
    *,
    dest_opts: bool = True,
    sport: int = 40000,
    dport: int = 443,
) -> bytes:
    ip = IPv6(src=SRC6, dst=DST6, hlim=61)
    if dest_opts:
        ip = ip / IPv6ExtHdrDestOpt()
    pkt = ip / TCP(sport=sport, dport=dport, seq=seq % 2**32, ack=ACK, flags=flags, window=502)
    return bytes(pkt / Raw(payload) if payload else pkt)


@dataclass
class Seg:
    seq: int
    payload: bytes
    flags: str
    options: list[Any]
    ack: int
    window: int
    sport: int
    dport: int


def seg(packet: bytes) -> Seg:
    ip = IPv6(packet) if packet[0] >> 4 == 6 else IP(packet)
    tcp = ip[TCP]
    return Seg(
        tcp.seq,
        bytes(tcp.payload),
        str(tcp.flags),
        tcp.options,
        tcp.ack,
        tcp.window,
        tcp.sport,
        tcp.dport,
    )


def checksums_ok(packet: bytes) -> bool:
    """Recomputes the IP and TCP checksums with scapy and compares."""
    if packet[0] >> 4 == 6:
        p = IPv6(packet)
        want = p[TCP].chksum
        del p[TCP].chksum
        return IPv6(bytes(p))[TCP].chksum == want
    p = IP(packet)
    want_ip, want_tcp = p.chksum, p[TCP].chksum
    del p.chksum
    del p[TCP].chksum
    q = IP(bytes(p))
    return q.chksum == want_ip and q[TCP].chksum == want_tcp


def kinds(actions: list[Any] | None) -> list[str] | None:
    if actions is None:
        return None
    names = {RELEASE: "R", DROP: "D", SEND: "S", ACCEPT: "A"}
    return [names[a.kind] + ("" if a.handle is None else str(a.handle)) for a in actions]


def sends(actions: list[Any]) -> list[Seg]:
    out = []
    for a in actions:
        if a.kind == SEND:
            assert a.handle is None
            assert checksums_ok(a.packet)
            out.append(seg(a.packet))
    return out


def pieces(frm: int, to: int, cuts: list[int], limit: int) -> list[tuple[int, int]]:
    """The engine's documented plan: cut at `cuts`, then into pieces of at most `limit`."""
    out, start = [], frm
    for end in [c for c in sorted(set(cuts)) if frm < c < to] + [to]:
        while end - start > limit:
            out.append((start, start + limit))
            start += limit
        if end > start:
            out.append((start, end))
        start = end
    return out


def layout(segs: list[Seg], base: int = ISN) -> list[tuple[int, int]]:
    return [((s.seq - base) % 2**32, (s.seq - base) % 2**32 + len(s.payload)) for s in segs]


# ----------------------------------------------------------------- basic splits


@pytest.mark.parametrize("name", [e["file"] for e in MANIFEST if e["record_len"] <= 1460])
def test_single_packet_hello_becomes_chunk_then_rest(name: str) -> None:
    data = hello(name)
    eng = Engine(EngineConfig())
    original = v4(data)
    out = eng.process(original, T0, "h")
    assert kinds(out) == ["S", "S", "Dh"]
    assert out is not None
    first, rest = sends(out)
    assert (first.seq, first.payload) == (ISN, data[:5])
    assert (rest.seq, rest.payload) == (ISN + 5, data[5:])
    assert "P" not in first.flags and "P" in rest.flags
    assert first.ack == rest.ack == ACK and first.window == rest.window == 502
    assert out[2].packet == original, "DROP carries the original bytes"
    # Nothing but seq, flags, lengths and checksums differs from the original.
    ip_first = IP(out[0].packet)
    assert (ip_first.id, ip_first.ttl, str(ip_first.flags)) == (0x1234, 61, "DF")
    s = eng.stats()
    assert (s["splits"], s["segments"], s["flows"], s["packets"]) == (1, 2, 1, 1)


def test_split_across_the_sequence_wrap() -> None:
    isn = 2**32 - 3
    eng = Engine(EngineConfig())
    out = eng.process(v4(OPENSSL, seq=isn), T0, 1)
    assert out is not None
    assert [(s.seq, len(s.payload)) for s in sends(out)] == [(isn, 5), (2, 512)]
    again = eng.process(v4(OPENSSL, seq=isn), T0 + 0.2, 2)
    assert kinds(again) == ["S", "S", "D2"]


def test_two_packet_chromium_hello_keeps_the_timestamp_option_in_every_segment() -> None:
    eng = Engine(EngineConfig())
    p1 = v4(CHROMIUM[:1448], ISN, "A", options=ts_opts(100))
    p2 = v4(CHROMIUM[1448:], ISN + 1448, "PA", options=ts_opts(101))
    assert eng.process(p1, T0, 1) == [], "held while the record is incomplete"
    assert eng.stats()["held_packets_now"] == 1
    out = eng.process(p2, T0 + 0.01, 2)
    assert kinds(out) == ["S", "S", "S", "D1", "D2"]
    assert out is not None
    segs = sends(out)
    assert layout(segs) == [(0, 5), (5, 1453), (1453, 2000)]
    assert max(len(s.payload) for s in segs) <= 1448, "no segment above the largest original"
    # Headers come from the packet that carried each segment's first byte.
    assert [s.options[2][1][0] for s in segs] == [100, 100, 101]
    assert all(s.options == ts_opts(100) or s.options == ts_opts(101) for s in segs)
    assert b"".join(s.payload for s in segs) == CHROMIUM
    assert [("P" in s.flags) for s in segs] == [False, False, True]
    assert eng.stats()["held_packets_now"] == 0


def test_out_of_order_segments_are_reassembled_before_the_split() -> None:
    eng = Engine(EngineConfig())
    parts = [(0, 700), (700, 1400), (1400, 2000)]
    pkts = [v4(CHROMIUM[a:b], ISN + a, "A") for a, b in parts]
    assert eng.process(pkts[0], T0, 0) == []
    assert eng.process(pkts[2], T0, 2) == []
    out = eng.process(pkts[1], T0, 1)
    assert kinds(out) == ["S", "S", "S", "S", "D0", "D1", "D2"]
    assert out is not None
    segs = sends(out)
    assert layout(segs) == pieces(0, 2000, [5], 700)
    assert b"".join(s.payload for s in segs) == CHROMIUM


def test_a_flow_first_seen_mid_record_fails_open_without_losing_bytes() -> None:
    # The first payload packet is taken as the stream start: if the record's
    # second half arrives first, the flow is not TLS to the engine and passes.
    eng = Engine(EngineConfig())
    assert eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0, 1) is None
    assert eng.process(v4(CHROMIUM[:1448], ISN, "A"), T0, 0) is None
    assert eng.stats()["fail_open"]["not_tls"] == 1
    assert eng.stats()["splits"] == 0


# ----------------------------------------------------------- what passes at once


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
        bytes(random.Random(7).randrange(256) for _ in range(600)),
        b"\x17\x03\x03\x00\x10" + bytes(16),  # TLS application data, not a hello
        b"\x16\x03\x03\x00\x40\x02" + bytes(63),  # a ServerHello
    ],
)
def test_non_hello_payload_to_443_passes(payload: bytes) -> None:
    eng = Engine(EngineConfig())
    assert eng.process(v4(payload), T0, 1) is None
    # The flow stays pass-through for its own bytes; a ClientHello later on the
    # tuple is taken for a new connection reusing it (SYNs are not queued).
    assert eng.process(v4(b"\x17\x03\x03\x00\x01x", ISN + len(payload)), T0, 2) is None
    assert eng.process(v4(OPENSSL, ISN + len(payload) + 6), T0, 3) is not None
    s = eng.stats()
    assert s["fail_open"]["not_tls"] == 1
    assert (s["passed"], s["splits"]) == (2, 1)


@pytest.mark.parametrize("dport", [80, 444, 8443, 53])
def test_other_ports_pass(dport: int) -> None:
    eng = Engine(EngineConfig())
    assert eng.process(v4(OPENSSL, dport=dport), T0, 1) is None
    assert eng.stats()["flows"] == 0
    assert eng.stats()["passed"] == 1


def test_configured_ports_replace_443() -> None:
    eng = Engine(EngineConfig(ports=[8443, 9443]))
    assert eng.process(v4(OPENSSL, dport=443), T0, 1) is None
    assert kinds(eng.process(v4(OPENSSL, dport=8443), T0, 2)) == ["S", "S", "D2"]
    assert kinds(eng.process(v4(OPENSSL, dport=9443, sport=1), T0, 3)) == ["S", "S", "D3"]


def test_packets_from_the_server_pass() -> None:
    eng = Engine(EngineConfig())
    pkt = bytes(IP(src=DST4, dst=SRC4) / TCP(sport=443, dport=40000, flags="PA") / Raw(OPENSSL))
    assert eng.process(pkt, T0, 1) is None


def test_syn_and_fast_open_data_are_never_touched() -> None:
    eng = Engine(EngineConfig())
    assert eng.process(v4(b"", ISN - 1, "S"), T0, 0) is None
    assert eng.process(v4(OPENSSL, ISN - 1, "S"), T0, 1) is None
    assert eng.stats()["fail_open"]["syn_data"] == 1


# --------------------------------------------------------- collecting, timeouts


def test_collect_timeout_via_expire_releases_the_held_packet_unchanged() -> None:
    eng = Engine(EngineConfig(collect_timeout_ms=250))
    p1 = v4(CHROMIUM[:1448], ISN, "A", options=ts_opts(5))
    assert eng.process(p1, T0, "first") == []
    assert eng.expire(T0 + 0.2) == []
    out = eng.expire(T0 + 0.25)
    assert kinds(out) == ["Rfirst"]
    assert out[0].packet == p1, "released bytes are identical"
    assert eng.stats()["fail_open"]["timeout"] == 1
    assert eng.stats()["held_packets_now"] == 0
    # The flow is pass-through now: the rest of the record goes out as it is.
    assert eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0 + 0.3, 2) is None
    assert eng.expire(T0 + 10) == []


def test_a_packet_after_the_collect_deadline_fails_the_flow_without_expire() -> None:
    eng = Engine(EngineConfig(collect_timeout_ms=100))
    assert eng.process(v4(CHROMIUM[:1448], ISN, "A"), T0, 1) == []
    out = eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0 + 0.1, 2)
    assert kinds(out) == ["R1", "R2"]
    assert eng.stats()["fail_open"]["timeout"] == 1


@pytest.mark.parametrize("flags", ["FA", "RA", "FPA"])
def test_fin_or_rst_while_collecting_releases_everything(flags: str) -> None:
    eng = Engine(EngineConfig())
    assert eng.process(v4(CHROMIUM[:1000], ISN, "A"), T0, 1) == []
    payload = CHROMIUM[1000:1200] if "P" in flags else b""
    out = eng.process(v4(payload, ISN + 1000, flags), T0 + 0.01, 2)
    assert kinds(out) == ["R1", "R2"]
    s = eng.stats()
    assert s["fail_open"]["fin_rst"] == 1
    assert s["flows_now"] == 0 and s["held_packets_now"] == 0


def test_pure_acks_while_collecting_are_accepted_at_once() -> None:
    eng = Engine(EngineConfig())
    assert eng.process(v4(CHROMIUM[:1448], ISN, "A"), T0, 1) == []
    assert kinds(eng.process(v4(b"", ISN + 1448, "A"), T0, 2)) == ["A2"]
    assert kinds(eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0, 3)) == ["S", "S", "S", "D1", "D3"]


# ----------------------------------------------------------------- retransmits


def test_retransmission_after_split_is_split_again() -> None:
    eng = Engine(EngineConfig())
    assert kinds(eng.process(v4(OPENSSL), T0, 1)) == ["S", "S", "D1"]
    out = eng.process(v4(OPENSSL), T0 + 0.2, 2)
    assert kinds(out) == ["S", "S", "D2"]
    assert out is not None
    assert layout(sends(out)) == [(0, 5), (5, 517)]
    # A partial retransmission across the cut is cut the same way ...
    out = eng.process(v4(OPENSSL[:300]), T0 + 0.3, 3)
    assert out is not None
    assert layout(sends(out)) == [(0, 5), (5, 300)]
    # ... and one that lies past every cut passes as it is.
    assert eng.process(v4(OPENSSL[100:], ISN + 100), T0 + 0.4, 4) is None
    assert eng.stats()["resplits"] == 2


def test_retransmission_of_a_multi_packet_hello_keeps_its_cuts() -> None:
    eng = Engine(EngineConfig(split_positions=["sni"]))
    sni = next(e for e in MANIFEST if e["file"] == "chromium_sni_late.bin")["sni_offset"]
    p1 = v4(CHROMIUM[:1448], ISN, "A")
    p2 = v4(CHROMIUM[1448:], ISN + 1448)
    eng.process(p1, T0, 1)
    first = eng.process(p2, T0, 2)
    assert first is not None
    assert layout(sends(first)) == pieces(0, 2000, [5, sni], 1448)
    out = eng.process(p2, T0 + 0.2, 3)
    assert out is not None
    assert layout(sends(out)) == [(1448, sni), (sni, 2000)]
    assert kinds(out) == ["S", "S", "D3"]


# ------------------------------------------------------------------- limits


@pytest.mark.parametrize(("limit", "split"), [(4, True), (3, False)])
def test_max_held_pkts_boundary(limit: int, split: bool) -> None:
    eng = Engine(EngineConfig(max_held_pkts=limit))
    bounds = [0, 500, 1000, 1500, 2000]
    outs = [
        eng.process(v4(CHROMIUM[a:b], ISN + a, "A"), T0, i)
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]
    assert outs[:3] == [[], [], []]
    if split:
        assert kinds(outs[3]) == ["S", "S", "S", "S", "S", "D0", "D1", "D2", "D3"]
    else:
        assert kinds(outs[3]) == ["R0", "R1", "R2", "R3"]
        assert eng.stats()["fail_open"]["too_many_packets"] == 1
    assert eng.stats()["held_packets_peak"] == min(limit, 4)


@pytest.mark.parametrize(("limit", "split"), [(517, True), (516, False)])
def test_max_buffer_boundary_single_packet(limit: int, split: bool) -> None:
    eng = Engine(EngineConfig(max_buffer=limit))
    out = eng.process(v4(OPENSSL), T0, 1)
    if split:
        assert kinds(out) == ["S", "S", "D1"]
    else:
        assert out is None
        assert eng.stats()["fail_open"]["overflow"] == 1


@pytest.mark.parametrize(("limit", "split"), [(2000, True), (1999, False)])
def test_max_buffer_boundary_two_packets(limit: int, split: bool) -> None:
    eng = Engine(EngineConfig(max_buffer=limit))
    first = eng.process(v4(CHROMIUM[:1448], ISN, "A"), T0, 1)
    second = eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0, 2)
    if split:
        assert first == []
        assert kinds(second) == ["S", "S", "S", "D1", "D2"]
    else:
        assert first is None and second is None
        assert eng.stats()["fail_open"]["overflow"] == 1


def test_max_seg_payload_bounds_every_segment() -> None:
    eng = Engine(EngineConfig(max_seg_payload=100))
    out = eng.process(v4(OPENSSL), T0, 1)
    assert out is not None
    assert layout(sends(out)) == pieces(0, 517, [5], 100)


def test_bytes_beyond_the_record_respect_max_seg_payload() -> None:
    # A packet with the whole hello and then more (TLS 1.3 early data): the bytes
    # after the record go out in a new segment, which, like every generated
    # segment, must not exceed max-seg-payload.
    early = b"\x17\x03\x03\x03\x80" + bytes(896)
    eng = Engine(EngineConfig(max_seg_payload=536))
    out = eng.process(v4(OPENSSL + early), T0, 1)
    assert out is not None
    segs = sends(out)
    assert b"".join(s.payload for s in segs) == OPENSSL + early
    assert layout(segs)[:2] == [(0, 5), (5, 517)]
    assert max(len(s.payload) for s in segs) <= 536, layout(segs)


def test_truncated_packet_passes_untouched() -> None:
    eng = Engine(EngineConfig())
    full = v4(OPENSSL)
    assert eng.process(full[:300], T0, 1) is None
    assert eng.stats()["splits"] == 0


def test_truncated_packet_of_a_collecting_flow_fails_it_open() -> None:
    eng = Engine(EngineConfig())
    p1 = v4(CHROMIUM[:1448], ISN, "A")
    p2 = v4(CHROMIUM[1448:], ISN + 1448)
    assert eng.process(p1, T0, 1) == []
    out = eng.process(p2[:200], T0, 2)
    assert kinds(out) == ["R1", "R2"]
    assert out is not None
    assert out[0].packet == p1 and out[1].packet == p2[:200]
    assert eng.stats()["fail_open"]["truncated"] == 1


def test_link_padding_after_the_ip_packet_is_ignored() -> None:
    eng = Engine(EngineConfig())
    out = eng.process(v4(OPENSSL) + b"\0" * 6, T0, 1)
    assert out is not None
    assert layout(sends(out)) == [(0, 5), (5, 517)]


# --------------------------------------------------------------------- IPv6


@pytest.mark.parametrize("dest_opts", [True, False])
def test_ipv6_split_keeps_the_extension_header(dest_opts: bool) -> None:
    eng = Engine(EngineConfig())
    out = eng.process(v6(OPENSSL, dest_opts=dest_opts), T0, 1)
    assert kinds(out) == ["S", "S", "D1"]
    assert out is not None
    segs = sends(out)
    assert layout(segs) == [(0, 5), (5, 517)]
    for a in out[:2]:
        p = IPv6(a.packet)
        assert p.plen == len(a.packet) - 40
        assert p.haslayer(IPv6ExtHdrDestOpt) == dest_opts
        assert p.hlim == 61


def test_ipv6_two_packets() -> None:
    eng = Engine(EngineConfig(split_positions=["midsld"]))
    assert eng.process(v6(CHROMIUM[:1200], ISN, "A"), T0, 1) == []
    out = eng.process(v6(CHROMIUM[1200:], ISN + 1200), T0, 2)
    assert out is not None
    segs = sends(out)
    assert b"".join(s.payload for s in segs) == CHROMIUM
    assert kinds(out)[-2:] == ["D1", "D2"]


def test_ipv4_options_are_kept_in_every_segment() -> None:
    from scapy.layers.inet import IPOption_Router_Alert

    pkt = IP(src=SRC4, dst=DST4, options=[IPOption_Router_Alert()]) / TCP(
        sport=40000, dport=443, seq=ISN, ack=ACK, flags="PA"
    )
    eng = Engine(EngineConfig())
    out = eng.process(bytes(pkt / Raw(OPENSSL)), T0, 1)
    assert kinds(out) == ["S", "S", "D1"]
    assert out is not None
    for a in out[:2]:
        assert IP(a.packet).ihl == 6 and IP(a.packet).options[0].option == 20
    assert layout(sends(out)) == [(0, 5), (5, 517)]


def test_a_retransmission_with_fin_keeps_fin_on_its_last_piece_only() -> None:
    eng = Engine(EngineConfig())
    eng.process(v4(OPENSSL), T0, 1)
    out = eng.process(v4(OPENSSL, flags="FPA"), T0 + 0.1, 2)
    assert out is not None
    assert [s.flags for s in sends(out)] == ["A", "FPA"]
    assert eng.stats()["flows_now"] == 0, "FIN ends the flow"


def test_after_fin_the_next_connection_on_the_same_tuple_is_split() -> None:
    eng = Engine(EngineConfig())
    eng.process(v4(OPENSSL), T0, 1)
    assert eng.process(v4(b"", ISN + 517, "FA"), T0 + 0.1, 2) is None
    assert eng.process(v4(b"", 77, "S"), T0 + 0.2, 3) is None
    assert kinds(eng.process(v4(OPENSSL, 78), T0 + 0.3, 4)) == ["S", "S", "D4"]


def test_a_syn_on_a_tracked_tuple_starts_a_new_flow() -> None:
    # The old connection ended without a FIN or RST the engine saw (e.g. the
    # server's or a censor's inbound RST); the client's kernel may reuse the
    # tuple at once. The new SYN says it is a new connection: its hello must be
    # split, not passed by the old connection's state.
    eng = Engine(EngineConfig())
    assert kinds(eng.process(v4(OPENSSL), T0, 1)) == ["S", "S", "D1"]
    assert eng.process(v4(b"", 5000, "S"), T0 + 1, 2) is None
    assert kinds(eng.process(v4(OPENSSL, 5001), T0 + 1.1, 3)) == ["S", "S", "D3"]


# ------------------------------------------------------------- fault handling


def test_armed_panic_on_a_new_packet_fails_open() -> None:
    eng = Engine(EngineConfig())
    eng._arm_panic()
    assert eng.process(v4(OPENSSL), T0, 1) is None, "the packet passes as it is"
    s = eng.stats()
    assert s["fail_open"]["internal"] == 1
    assert kinds(eng.process(v4(OPENSSL, sport=40001), T0, 2)) == ["S", "S", "D2"]
    assert eng.stats()["fail_open"]["internal"] == 1


def test_armed_panic_while_collecting_releases_the_flow_and_the_engine_goes_on() -> None:
    eng = Engine(EngineConfig())
    p1 = v4(CHROMIUM[:1448], ISN, "A")
    p2 = v4(CHROMIUM[1448:], ISN + 1448)
    assert eng.process(p1, T0, 1) == []
    eng._arm_panic()
    out = eng.process(p2, T0, 2)
    assert kinds(out) == ["R1", "R2"]
    assert out is not None
    assert (out[0].packet, out[1].packet) == (p1, p2)
    s = eng.stats()
    assert s["fail_open"]["internal"] == 1 and s["held_packets_now"] == 0
    # Later flows are split as usual.
    assert eng.process(v4(CHROMIUM[:1448], ISN, "A", sport=5), T0 + 1, 3) == []
    assert kinds(eng.process(v4(CHROMIUM[1448:], ISN + 1448, sport=5), T0 + 1, 4)) == [
        "S",
        "S",
        "S",
        "D3",
        "D4",
    ]


def test_eviction_with_one_flow_releases_the_oldest_collecting_flow() -> None:
    eng = Engine(EngineConfig(max_flows=1))
    assert eng.process(v4(CHROMIUM[:1448], ISN, "A", sport=1), T0, "a") == []
    out = eng.process(v4(OPENSSL, sport=2), T0 + 0.01, "b")
    assert kinds(out) == ["S", "S", "Db", "Ra"]
    s = eng.stats()
    assert s["evicted"] == 1 and s["fail_open"]["evicted"] == 1
    assert s["flows_now"] == 1 and s["held_packets_now"] == 0
    # The evicted flow's next packet is a stranger's mid-record bytes: it passes.
    assert eng.process(v4(CHROMIUM[1448:], ISN + 1448, sport=1), T0 + 0.02, "c") is None


def test_release_all_gives_back_what_is_held() -> None:
    eng = Engine(EngineConfig())
    eng.process(v4(CHROMIUM[:1000], ISN, "A", sport=1), T0, 1)
    eng.process(v4(CHROMIUM[:1000], ISN, "A", sport=2), T0, 2)
    assert sorted(kinds(eng.release_all()) or []) == ["R1", "R2"]
    assert eng.stats()["flows_now"] == 0
    assert eng.release_all() == []


def test_idle_flows_are_forgotten_after_the_flow_timeout() -> None:
    eng = Engine(EngineConfig(flow_timeout_s=5))
    eng.process(v4(b"GET / HTTP/1.1\r\n\r\n"), T0, 1)
    assert eng.stats()["flows_now"] == 1
    eng.expire(T0 + 6)
    assert eng.stats()["flows_now"] == 0


# ---------------------------------------------------------------------- stats


def test_stats_contents() -> None:
    eng = Engine(EngineConfig())
    s = eng.stats()
    assert set(s) >= {
        "packets",
        "passed",
        "flows",
        "flows_now",
        "splits",
        "resplits",
        "segments",
        "evicted",
        "held_packets_now",
        "held_bytes_now",
        "held_packets_peak",
        "held_bytes_peak",
        "fail_open",
    }
    assert set(s["fail_open"]) >= ALL_REASONS
    assert all(v == 0 for v in s["fail_open"].values())
    p1 = v4(CHROMIUM[:1448], ISN, "A")
    eng.process(v4(b"", ISN - 1, "S"), T0, 0)  # SYN: passes, no flow
    eng.process(p1, T0, 1)
    eng.process(v4(OPENSSL, dport=80), T0, 2)
    s = eng.stats()
    assert (s["packets"], s["passed"], s["flows"], s["flows_now"]) == (3, 2, 1, 1)
    assert (s["held_packets_now"], s["held_bytes_now"]) == (1, len(p1))
    eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0, 3)
    s = eng.stats()
    assert (s["splits"], s["segments"], s["held_packets_now"], s["held_bytes_now"]) == (1, 3, 0, 0)
    assert s["held_packets_peak"] == 2
    assert s["held_bytes_peak"] >= len(p1)


def test_engine_config_round_trips_and_rejects_bad_values() -> None:
    cfg = EngineConfig(split_chunk=7, split_positions=["sni+1", "midsld"], ports=[443, 8443])
    assert (cfg.split_chunk, cfg.split_positions, cfg.ports) == (
        7,
        ["sni+1", "midsld"],
        [443, 8443],
    )
    assert Engine(cfg).config.split_chunk == 7
    with pytest.raises(ConfigError) as e:
        EngineConfig(max_held_pkts=0)
    assert e.value.field == "max-held-pkts"


# ------------------------------------------------------------ split positions


def _expected_cuts(entry: dict[str, Any], positions: list[str], chunk: int) -> list[int]:
    off, host = entry["sni_offset"], entry["sni"]
    labels = host.rstrip(".").split(".")
    sld_index = len(labels) - 2 if len(labels) >= 2 else 0
    sld_start = off + sum(len(x) + 1 for x in labels[:sld_index])
    where = {
        "sni": off,
        "sniend": off + len(host),
        "midsld": sld_start + len(labels[sld_index]) // 2,
    }
    cuts = [chunk] if chunk else []
    cuts += [where[p] for p in positions]
    return sorted({c for c in cuts if 0 < c < entry["record_len"]})


SNI_FIXTURES = [e for e in MANIFEST if e["sni"]]


@pytest.mark.parametrize("entry", SNI_FIXTURES, ids=[e["file"] for e in SNI_FIXTURES])
@pytest.mark.parametrize(
    ("positions", "chunk"),
    [
        (["sni"], 0),
        (["midsld"], 0),
        (["sniend"], 0),
        (["sni", "midsld", "sniend"], 5),
    ],
)
def test_split_positions_land_where_expected(
    entry: dict[str, Any], positions: list[str], chunk: int
) -> None:
    data = hello(entry["file"])
    eng = Engine(EngineConfig(split_chunk=chunk, split_positions=positions))
    # Records above one MSS go out in two packets, as a client would send them.
    mss = 1448
    bounds = [*list(range(0, len(data), mss)), len(data)]
    out: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        out += eng.process(v4(data[a:b], ISN + a), T0, i) or []
    segs = sends(out)
    cuts = _expected_cuts(entry, positions, chunk)
    assert layout(segs) == pieces(0, len(data), cuts, min(mss, len(data)))
    assert b"".join(s.payload for s in segs) == data
    # The host name itself is never whole in one segment when cut at it.
    host = entry["sni"].encode()
    if "midsld" in positions:
        assert not any(host in s.payload for s in segs)


def test_midsld_of_a_two_label_suffix_is_the_second_to_last_label() -> None:
    # No public-suffix list: in www.sub.example.co.uk the "second-level" label is "co".
    entry = next(e for e in MANIFEST if e["file"] == "openssl_co_uk.bin")
    eng = Engine(EngineConfig(split_chunk=0, split_positions=["midsld"]))
    out = eng.process(v4(hello(entry["file"])), T0, 1)
    assert out is not None
    first = sends(out)[0]
    assert len(first.payload) == entry["sni_offset"] + len("www.sub.example.") + 1


def test_positions_with_offsets_and_absolute_positions() -> None:
    entry = next(e for e in MANIFEST if e["file"] == "openssl_default.bin")
    off = entry["sni_offset"]
    eng = Engine(EngineConfig(split_chunk=3, split_positions=["sni+2", "sniend-1", "300"]))
    out = eng.process(v4(OPENSSL), T0, 1)
    assert out is not None
    cuts = [3, off + 2, off + len(entry["sni"]) - 1, 300]
    assert layout(sends(out)) == pieces(0, 517, cuts, 517)


def test_no_sni_with_only_sni_positions_fails_open_as_no_cut() -> None:
    eng = Engine(EngineConfig(split_chunk=0, split_positions=["sni"]))
    out = eng.process(v4(hello("openssl_no_sni.bin")), T0, 1)
    assert kinds(out) == ["R1"]
    assert eng.stats()["fail_open"]["no_cut"] == 1


def test_immediate_mode_splits_only_the_first_packet() -> None:
    eng = Engine(EngineConfig(split_mode="immediate"))
    out = eng.process(v4(CHROMIUM[:1448], ISN, "A"), T0, 1)
    assert kinds(out) == ["S", "S", "D1"]
    assert out is not None
    assert layout(sends(out)) == [(0, 5), (5, 1448)]
    assert eng.process(v4(CHROMIUM[1448:], ISN + 1448), T0, 2) is None
