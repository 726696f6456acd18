"""The lab's reassembling boxes, fed synthetic TCP packets (no root needed)."""

from __future__ import annotations

import itertools
import ssl
from pathlib import Path

import pytest
from govpass.lab.censor import TCP_ACK, TCP_SYN, FirstPacketCensor, build_tcp, read_decisions
from govpass.lab.reassembly import (
    KINDS,
    MIN_FIRST,
    LaterSegmentDropper,
    ReassemblingCensor,
    SplitRejectingServer,
    TspuCensor,
)

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
C, S = "198.51.100.2", "203.0.113.2"


def hello(name: str, pad: int = 0) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if pad:
        ctx.set_alpn_protocols([f"p{i}-" + "x" * 200 for i in range(pad)] + ["http/1.1"])
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def flow(record: bytes, cuts: list[int], sport: int = 40000) -> list[bytes]:
    """SYN, then the record cut at ``cuts`` into consecutive segments."""
    pkts = [build_tcp(4, C, S, sport, 443, 100, 0, TCP_SYN)]
    edges = [0, *cuts, len(record)]
    for a, b in itertools.pairwise(edges):
        pkts.append(build_tcp(4, C, S, sport, 443, 101 + a, 1, TCP_ACK, record[a:b]))
    return pkts


@pytest.fixture(autouse=True)
def no_raw_packets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """RSTs are recorded, never sent: these tests stay off the network."""
    sent: list[int] = []
    monkeypatch.setattr(FirstPacketCensor, "inject_rsts", lambda self, pkt: sent.append(pkt.sport))
    return sent


def verdicts(
    box: type[FirstPacketCensor], names: list[str], pkts: list[bytes], tmp: Path
) -> list[bool]:
    """Each packet's verdict (True: accepted), the flow decided once."""
    log = tmp / "log.jsonl"
    with open(log, "w", encoding="utf-8") as fh:
        censor = box(names, fh)
        out = [censor.verdict(p) for p in pkts]
        assert censor.flows and all(v != "new" for v in censor.flows.values())
        assert getattr(censor, "streams", {}) == {}  # nothing kept once decided
    assert len(read_decisions(log)) == 1
    return out


def run(box: type[FirstPacketCensor], names: list[str], pkts: list[bytes], tmp: Path) -> bool:
    """Whether every packet of the flow got through."""
    return all(verdicts(box, names, pkts, tmp))


@pytest.mark.parametrize(
    ("cuts", "passes"),
    [
        ([], False),  # unsplit
        ([1], True),
        ([2], True),
        ([3], False),  # 16 03 01: looks like TLS, reassembled
        ([5], False),
        ([1, 120], True),
        ([60], False),  # a cut before the name, with a TLS-looking start
    ],
)
def test_tspu_lets_only_a_tiny_first_segment_through(
    tmp_path: Path, cuts: list[int], passes: bool
) -> None:
    assert run(TspuCensor, [BLOCKED], flow(hello(BLOCKED), cuts), tmp_path) is passes


def test_tspu_reassembles_a_two_segment_hello(tmp_path: Path) -> None:
    big = hello(BLOCKED, pad=7)
    assert len(big) > 1500
    assert not run(TspuCensor, [BLOCKED], flow(big, [1400]), tmp_path)
    assert run(TspuCensor, [BLOCKED], flow(big, [1, 1401]), tmp_path)


@pytest.mark.parametrize("cuts", [[], [1], [2], [1, 20, 60], [1, 2, 3, 4, 5, 6, 7, 8]])
def test_reassembler_lets_no_split_through(tmp_path: Path, cuts: list[int]) -> None:
    assert not run(ReassemblingCensor, [BLOCKED], flow(hello(BLOCKED), cuts), tmp_path)


def test_reassembler_passes_other_names(tmp_path: Path) -> None:
    assert run(ReassemblingCensor, [BLOCKED], flow(hello(ALLOWED), [1, 40]), tmp_path)


@pytest.mark.parametrize(
    ("name", "cuts", "passes"),
    [
        (ALLOWED, [1], False),  # the picky name, a 1-byte first segment: reset
        (ALLOWED, [MIN_FIRST - 1], False),
        (ALLOWED, [MIN_FIRST], True),
        (ALLOWED, [], True),
        (BLOCKED, [1], True),  # not this server's name
    ],
)
def test_split_rejecting_server(
    tmp_path: Path, no_raw_packets: list[int], name: str, cuts: list[int], passes: bool
) -> None:
    assert run(SplitRejectingServer, [ALLOWED], flow(hello(name), cuts), tmp_path) is passes
    assert no_raw_packets == ([] if passes else [40000])  # a server resets


def reply(sport: int, seq: int, payload: bytes = b"") -> bytes:
    """A server packet of the flow from ``sport``."""
    return build_tcp(4, S, C, 443, sport, seq, 1, TCP_ACK, payload)


def name_cuts(record: bytes, name: str) -> tuple[int, int]:
    """Where ``name`` starts and ends in ``record``."""
    start = record.index(name.encode())
    return start, start + len(name)


def test_dropper_passes_the_first_segment_and_drops_the_second(
    tmp_path: Path, no_raw_packets: list[int]
) -> None:
    pkts = flow(hello(BLOCKED), [5])
    pkts += [reply(40000, 900), reply(40000, 900, b"\x16\x03\x03\x00\x01\x02")]
    # SYN, first segment, second segment (dropped), the server's ACK, its reply (dropped).
    assert verdicts(LaterSegmentDropper, [BLOCKED], pkts, tmp_path) == [
        True, True, False, True, False,
    ]  # fmt: skip
    assert no_raw_packets == []  # silent


def test_dropper_lets_a_whole_hello_through_and_drops_the_reply(tmp_path: Path) -> None:
    pkts = [*flow(hello(BLOCKED), []), reply(40000, 900), reply(40000, 900, b"\x16\x03")]
    assert verdicts(LaterSegmentDropper, [BLOCKED], pkts, tmp_path) == [True, True, True, False]


@pytest.mark.parametrize(
    ("cuts", "passes"),
    [
        ("5", False),
        ("1", False),
        ("sni", False),  # the name is whole in the second segment
        ("sniend", False),  # ... in the first
        ("1,sni", True),  # the name starts in the third segment
        ("2,midsld", True),  # its second half is in the third
    ],
)
def test_dropper_reads_only_two_packets(tmp_path: Path, cuts: str, passes: bool) -> None:
    record = hello(BLOCKED)
    start, end = name_cuts(record, BLOCKED)
    where = {"sni": start, "sniend": end, "midsld": start + len("blocked") // 2}
    at = [where[c] if c in where else int(c) for c in cuts.split(",")]
    assert run(LaterSegmentDropper, [BLOCKED], flow(record, at), tmp_path) is passes


def test_dropper_passes_other_names(tmp_path: Path) -> None:
    pkts = [*flow(hello(ALLOWED), [5]), reply(40000, 900, b"\x16\x03")]
    assert run(LaterSegmentDropper, [BLOCKED], pkts, tmp_path)


def test_dropper_drops_the_rest_of_a_two_segment_hello(tmp_path: Path) -> None:
    big = hello(BLOCKED, pad=7)
    pkts = flow(big, [1400])
    resent = build_tcp(4, C, S, 40000, 443, 101 + 1400, 1, TCP_ACK, big[1400:])
    assert verdicts(LaterSegmentDropper, [BLOCKED], [*pkts, resent], tmp_path) == [
        True, True, False, False,
    ]  # fmt: skip


def test_kinds_are_registered() -> None:
    assert set(KINDS) == {"firstpacket", "tspu", "reassemble", "splitreject", "dropsecond"}
    from govpass.lab import CENSOR_KINDS

    assert set(KINDS) | {"string", "address"} == set(CENSOR_KINDS)
