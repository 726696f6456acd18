"""The kernel split program (C: ``rust/govpass-ebpf/bpf/ksplit.bpf.c``, loaded by
``govpass.bpf.ksplit``), run in the kernel through
BPF_PROG_TEST_RUN on hand-built Ethernet frames.

The runs happen in a network namespace of their own (``ksplit_probe.py`` under
``unshare -n``): ``bpf_clone_redirect`` really sends the first segment out of
the test run's device, the namespace's ``lo``, where an AF_PACKET socket
catches it. The program's own packet (the rest) is the test run's output.

What the kernel gives a test run, as seen here: the skb has a socket (so a
host-mode program, ``local=True``, takes it and a router-mode one does not),
its checksum state is CHECKSUM_NONE (so every checksum written must be the full
sum), and ``skb->mark`` and ``gso_segs`` come from ``ctx_in``.

All cases are run once per module, grouped by program parameters (one
namespace per group); each test then checks its own case's results.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Any

import ksplit_probe
import pytest
from frames import (
    DPORT,
    ETH,
    FAMILIES,
    ISN,
    SPORT,
    checksums_ok,
    frame,
    ip_layer,
    parse,
    record,
    without_checksums,
)
from govpass import SEND, Engine, EngineConfig
from govpass.bpf import ksplit
from scapy.layers.inet import UDP, IPOption
from scapy.layers.inet6 import IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether
from scapy.packet import Raw


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    # As with the pre-filter tests: without root this is a failure to report,
    # not a reason to pass quietly (CI runs as root).
    lacking = ksplit_probe.missing_needs()
    if lacking:
        pytest.fail(lacking, pytrace=False)


MARK = 0x40000000  # govpass's mark in these tests
COUNTERS_ZERO = dict.fromkeys(ksplit.COUNTERS, 0)
TS_OPTS: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))]


# ------------------------------------------------------------- building inputs


def hello(payload: int) -> bytes:
    """A whole ClientHello record of ``payload`` bytes, header included."""
    return record(payload - 5)


# ------------------------------------------------------------- reading outputs


def test_checksum_reader_accepts_scapy_frames_and_rejects_a_changed_byte() -> None:
    for family in FAMILIES:
        good = parse(frame(family, hello(305), tcp_options=TS_OPTS))
        assert checksums_ok(good) == (True, True)
        bad = bytearray(good.frame)
        bad[-1] ^= 0x01
        assert checksums_ok(parse(bytes(bad)))[1] is False
    bad = bytearray(frame("ipv4", hello(305)))
    bad[14 + 8] ^= 0x01  # TTL
    assert checksums_ok(parse(bytes(bad)))[0] is False


# ------------------------------------------------------------- the cases and their runs


@dataclass(frozen=True)
class Knobs:
    """The program's parameters for a case (cases with equal knobs share a program)."""

    chunk: int = 5
    max_payload: int = 1500
    # Past every header size here: the engine's cap (headers over 40 bytes take
    # their size off max-seg-payload) has cases of its own.
    max_seg_payload: int = 1600
    ports: tuple[int, ...] = (DPORT,)
    local: bool = True

    def params(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk,
            "max_payload": self.max_payload,
            "max_seg_payload": self.max_seg_payload,
            "ports": list(self.ports),
            "mark": MARK,
            "local": self.local,
            "l2": 14,
        }


@dataclass(frozen=True)
class Case:
    family: str
    frame: bytes
    knobs: Knobs = field(default_factory=Knobs)
    mark: int = 0  # skb->mark, through ctx_in
    gso_segs: int = 0  # skb_shinfo->gso_segs, through ctx_in
    # A split case: the record, the first segment's and the rest's expected frames.
    record: bytes = b""
    first: bytes = b""
    rest: bytes = b""
    # An untouched case may still count (a failure before anything changed).
    counters: tuple[tuple[str, int], ...] = ()


def split_case(
    family: str,
    payload: int,
    chunk: int,
    *,
    seq: int = ISN,
    flags: str = "PA",
    knobs: Knobs | None = None,
    ip: dict[str, object] | None = None,
    **kw: Any,
) -> Case:
    """A whole ClientHello record of ``payload`` bytes, and the two frames it must
    become: TCP flags as the engine's segments of the same packet have them."""
    rec = hello(payload)

    def build(data: bytes, at: int, tcp_flags: str) -> bytes:
        layer = ip_layer(family, **(ip or {}))
        return frame(family, data, at, ip=layer, flags=tcp_flags, **kw)

    original = build(rec, seq, flags)
    first_flags, rest_flags = engine_flags(original, chunk)
    return Case(
        family,
        original,
        knobs or Knobs(chunk=chunk),
        record=rec,
        first=build(rec[:chunk], seq, first_flags),
        rest=build(rec[chunk:], seq + chunk, rest_flags),
    )


def engine_flags(original: bytes, chunk: int) -> tuple[str, str]:
    """TCP flags of the first and the last segment the engine makes of ``original``."""
    engine = Engine(EngineConfig(ports=[DPORT, 8443], split_chunk=chunk, max_seg_payload=9000))
    out = engine.process(original[14:], 0.0, "h") or []
    sends = [parse(original[:14] + a.packet) for a in out if a.kind == SEND]
    assert len(sends) >= 2, "the engine did not split the packet"
    return tcp_flag_letters(sends[0].tcp[13]), tcp_flag_letters(sends[-1].tcp[13])


def tcp_flag_letters(bits: int) -> str:
    return "".join(c for i, c in enumerate("FSRPAUEC") if bits & (1 << i))


def _split_matrix() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for family in FAMILIES:
        for chunk in (1, 5, 6, 63, 64):
            sizes = {max(6, chunk + 1), max(7, chunk + 2), 305, 306, 1405, 1499, 1500}
            # the rest is summed in steps of 512 bytes: just under, at and over each
            sizes |= {chunk + rest for rest in (511, 512, 513, 1023, 1024, 1025)}
            for payload in sorted(sizes):
                cases[f"{family}-chunk{chunk}-payload{payload}"] = split_case(
                    family, payload, chunk
                )
    return cases


SPLIT_MATRIX = _split_matrix()

IP_OPTION_4 = IPOption(b"\x01\x01\x01\x01")  # NOPs: IHL 6
IP_OPTION_40 = IPOption(b"\x01" * 40)  # IHL 15, the largest
TCP_OPTS_40: list[tuple[str, object]] = [("NOP", None)] * 30 + [("Timestamp", (7, 8))]


def _split_shapes() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for family in FAMILIES:
        for chunk in (5, 6):
            for payload in (305, 306, 1400):
                cases[f"{family}-tcp-timestamps-chunk{chunk}-payload{payload}"] = split_case(
                    family, payload, chunk, tcp_options=TS_OPTS
                )
        cases[f"{family}-tcp-options-40-bytes"] = split_case(
            family, 1405, 5, tcp_options=TCP_OPTS_40
        )
        cases[f"{family}-seq-wraps"] = split_case(family, 305, 5, seq=0xFFFFFFFE)
        cases[f"{family}-seq-wraps-at-the-cut"] = split_case(family, 305, 6, seq=2**32 - 6)
        cases[f"{family}-second-port"] = split_case(
            family, 305, 5, knobs=Knobs(ports=(8443, DPORT)), dport=DPORT
        )
        cases[f"{family}-foreign-mark-bits"] = replace(
            split_case(family, 305, 5), mark=~MARK & 0xFFFFFFFF
        )
        # The engine's flags: PSH only on the last segment, also when the original had none.
        cases[f"{family}-without-psh"] = split_case(family, 305, 5, flags="A")
        cases[f"{family}-with-ece"] = split_case(family, 305, 5, flags="PAE")
        # CWR only on the first segment (the engine's: it marks the first data sent
        # after the window was reduced).
        cases[f"{family}-with-cwr"] = split_case(family, 305, 5, flags="PAC")
        cases[f"{family}-with-cwr-and-ece"] = split_case(family, 305, 5, flags="AEC")
        cases[f"{family}-gso-segs-1"] = replace(split_case(family, 305, 5), gso_segs=1)
        cases[f"{family}-max-payload-exactly"] = split_case(
            family, 1000, 5, knobs=Knobs(max_payload=1000)
        )
    for chunk in (5, 6):
        for option, name in ((IP_OPTION_4, "ihl6"), (IP_OPTION_40, "ihl15")):
            for payload in (305, 306):
                cases[f"ipv4-ip-options-{name}-chunk{chunk}-payload{payload}"] = split_case(
                    "ipv4", payload, chunk, ip={"options": [option]}
                )
    cases["ipv4-ip-and-tcp-options-largest"] = split_case(
        "ipv4", 1405, 5, ip={"options": [IP_OPTION_40]}, tcp_options=TCP_OPTS_40
    )
    # The engine's cap: max-seg-payload 1000 less the headers' bytes over 40.
    seg = Knobs(max_payload=1005, max_seg_payload=1000)
    cases["ipv4-at-the-engine-cap"] = split_case("ipv4", 1005, 5, knobs=seg)
    cases["ipv6-at-the-engine-cap"] = split_case("ipv6", 985, 5, knobs=seg)
    cases["ipv4-timestamps-at-the-engine-cap"] = split_case(
        "ipv4", 993, 5, knobs=seg, tcp_options=TS_OPTS
    )
    cases["ipv4-first-segment-at-the-engine-cap"] = split_case(
        "ipv4", 50, 30, knobs=Knobs(chunk=30, max_payload=70, max_seg_payload=40)
    )
    cases["ipv4-dont-fragment"] = split_case("ipv4", 305, 5, ip={"flags": "DF", "id": 0x1234})
    cases["ipv4-tos-ttl"] = split_case("ipv4", 306, 5, ip={"tos": 0xB8, "ttl": 3})
    cases["ipv6-flow-label"] = split_case("ipv6", 306, 5, ip={"fl": 0xABCDE, "tc": 0x28})
    return cases


SPLIT_SHAPES = _split_shapes()


def _untouched() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for family in FAMILIES:

        def add(name: str, data: bytes, **kw: Any) -> None:
            cases[f"{family}-{name}"] = Case(family, data, **kw)  # noqa: B023

        add("record-over-two-packets", frame(family, record(1800)[:1200]))
        add("record-over-two-packets-second", frame(family, record(1800)[1200:], ISN + 1200))
        add("record-longer-than-the-payload", frame(family, record(400)[:300]))
        add("two-records-in-one-packet", frame(family, hello(305) + hello(100)))
        add("payload-equals-chunk", frame(family, hello(64)), knobs=Knobs(chunk=64))
        add("payload-below-chunk", frame(family, hello(40)), knobs=Knobs(chunk=64))
        add("payload-5-bytes", frame(family, hello(305)[:5]))
        add("payload-over-max", frame(family, hello(1001)), knobs=Knobs(max_payload=1000))
        add("payload-1501", frame(family, hello(1501)))
        add("server-hello", frame(family, record(300, hs_type=0x02)))
        add("application-data", frame(family, record(300, content=0x17)))
        add("alert", frame(family, record(300, content=0x15)))
        add("record-version-not-3", frame(family, b"\x16\x02" + hello(305)[2:]))
        # The engine takes record versions 3.1 to 3.4 only: it passes these whole.
        add("record-version-3-0", frame(family, b"\x16\x03\x00" + hello(305)[3:]))
        add("record-version-3-5", frame(family, b"\x16\x03\x05" + hello(305)[3:]))
        add("wrong-port", frame(family, hello(305), dport=8443))
        add("source-port-only", frame(family, hello(305), dport=40001),
            knobs=Knobs(ports=(SPORT,)))  # fmt: skip
        add("syn-with-data", frame(family, hello(305), flags="S"))
        add("syn-ack-with-data", frame(family, hello(305), flags="SA"))
        add("pure-ack", frame(family, flags="A"))
        add("fin-with-data", frame(family, hello(305), flags="FPA"))  # the engine's too
        add("urg-with-data", frame(family, hello(305), flags="UPA"))  # the engine's too
        add("rst-with-data", frame(family, hello(305), flags="RPA"))  # the engine's too
        add("govpass-mark", frame(family, hello(305)), mark=MARK)
        add("govpass-mark-among-others", frame(family, hello(305)), mark=MARK | 0x7)
        add("gso", frame(family, hello(305)), gso_segs=2)
        add("router-mode", frame(family, hello(305)), knobs=Knobs(local=False))
        add("udp", bytes(Ether(**ETH) / ip_layer(family) / UDP(sport=SPORT, dport=DPORT)
                         / Raw(hello(305))))  # fmt: skip
        # UDP whose first bytes after its header read as a TCP header to port 443
        # (data offset 20, flags PA) in front of a whole ClientHello.
        tcp_like = bytes(4) + b"\x50\x18" + bytes(6) + hello(305)
        add("udp-that-reads-like-tcp", bytes(Ether(**ETH) / ip_layer(family)
            / UDP(sport=SPORT, dport=DPORT) / Raw(tcp_like)))  # fmt: skip
        # The IP length says more than the frame holds: the rest cannot be read.
        add("truncated-frame", frame(family, hello(305))[:-10],
            counters=(("unsplit", 1),))  # fmt: skip
    # Past the engine's cap (see _split_shapes): the engine cuts these into more
    # than two segments, so the kernel split leaves them to it.
    seg = Knobs(max_payload=1005, max_seg_payload=1000)
    cases["ipv6-over-the-engine-cap"] = Case("ipv6", frame("ipv6", hello(986)), knobs=seg)
    cases["ipv4-timestamps-over-the-engine-cap"] = Case(
        "ipv4", frame("ipv4", hello(994), tcp_options=TS_OPTS), knobs=seg
    )
    cases["ipv4-ip-options-over-the-engine-cap"] = Case(
        "ipv4", frame("ipv4", hello(1002), ip=ip_layer("ipv4", options=[IP_OPTION_4])), knobs=seg
    )
    cases["ipv6-first-segment-over-the-engine-cap"] = Case(
        "ipv6",
        frame("ipv6", hello(50), tcp_options=TS_OPTS),
        knobs=Knobs(chunk=30, max_payload=70, max_seg_payload=40),
    )
    for fields in ({"flags": "MF"}, {"frag": 1}, {"flags": "MF", "frag": 8}):
        name = "-".join(f"{k}{v}" for k, v in fields.items())
        cases[f"ipv4-fragment-{name}"] = Case(
            "ipv4", frame("ipv4", hello(305), ip=ip_layer("ipv4", **fields))
        )
    cases["ipv6-hop-by-hop-header"] = Case(
        "ipv6", frame("ipv6", hello(305), ip=ip_layer("ipv6") / IPv6ExtHdrHopByHop())
    )
    return cases


UNTOUCHED = _untouched()
ALL_CASES = {**SPLIT_MATRIX, **SPLIT_SHAPES, **UNTOUCHED}


@dataclass(frozen=True)
class Result:
    retval: int
    out: bytes
    clones: list[bytes]
    counters: dict[str, int]  # this run's counts (the difference to the run before)


@pytest.fixture(scope="module")
def results() -> dict[str, Result]:
    """Every case's run: one namespace and one program per set of knobs."""
    groups: dict[Knobs, list[str]] = {}
    for name, case in ALL_CASES.items():
        groups.setdefault(case.knobs, []).append(name)
    out: dict[str, Result] = {}
    for knobs, names in groups.items():
        runs = [
            {
                "frame": ALL_CASES[n].frame.hex(),
                "mark": ALL_CASES[n].mark,
                "gso_segs": ALL_CASES[n].gso_segs,
            }
            for n in names
        ]
        before = dict(COUNTERS_ZERO)
        for name, raw in zip(names, ksplit_probe.run_isolated(knobs.params(), runs), strict=True):
            after = raw["counters"]
            out[name] = Result(
                raw["retval"],
                bytes.fromhex(raw["out"]),
                [bytes.fromhex(c) for c in raw["clones"]],
                {k: after[k] - before[k] for k in ksplit.COUNTERS},
            )
            before = after
    return out


def check_split(case: Case, res: Result) -> None:
    assert res.retval == ksplit.TCX_NEXT
    assert res.counters == {**COUNTERS_ZERO, "split": 1}
    assert len(res.clones) == 1, f"{len(res.clones)} copies sent, want 1"
    first, rest = parse(res.clones[0]), parse(res.out)
    want_first, want_rest = parse(case.first), parse(case.rest)
    # payloads and sequence numbers
    assert first.payload == case.record[: len(first.payload)]
    assert first.payload + rest.payload == case.record
    assert len(first.payload) == len(want_first.payload)
    assert first.seq == want_first.seq
    assert rest.seq == want_rest.seq
    # every other byte as scapy builds the two packets (lengths included) ...
    assert without_checksums(first) == without_checksums(want_first)
    assert without_checksums(rest) == without_checksums(want_rest)
    # ... and the checksums right as full sums
    assert checksums_ok(first) == (True, True), "first segment: (IP, TCP) checksum"
    assert checksums_ok(rest) == (True, True), "rest: (IP, TCP) checksum"


@pytest.mark.parametrize("name", list(SPLIT_MATRIX))
def test_whole_record_is_split(name: str, results: dict[str, Result]) -> None:
    check_split(SPLIT_MATRIX[name], results[name])


@pytest.mark.parametrize("name", list(SPLIT_SHAPES))
def test_header_shapes_are_split(name: str, results: dict[str, Result]) -> None:
    check_split(SPLIT_SHAPES[name], results[name])


@pytest.mark.parametrize("name", list(UNTOUCHED))
def test_packet_goes_on_untouched(name: str, results: dict[str, Result]) -> None:
    case, res = UNTOUCHED[name], results[name]
    assert res.retval == ksplit.TCX_NEXT
    assert res.out == case.frame
    assert res.clones == []
    assert res.counters == {**COUNTERS_ZERO, **dict(case.counters)}


@pytest.mark.parametrize("family", FAMILIES)
def test_copy_that_cannot_be_sent_leaves_the_first_segment_alone(family: str) -> None:
    # lo is down: bpf_clone_redirect fails, the cut packet goes on as the first
    # segment ("first_only"; TCP sends the rest again).
    case = split_case(family, 305, 5)
    [raw] = ksplit_probe.run_isolated(
        case.knobs.params(), [{"frame": case.frame.hex()}], lo_is_up=False
    )
    assert raw["retval"] == ksplit.TCX_NEXT
    assert raw["clones"] == []
    assert raw["counters"] == {**COUNTERS_ZERO, "first_only": 1}
    first, want = parse(bytes.fromhex(raw["out"])), parse(case.first)
    assert without_checksums(first) == without_checksums(want)
    assert checksums_ok(first) == (True, True)


# ------------------------------------------------------------- the probe itself


def test_probe_refuses_a_namespace_with_interfaces() -> None:
    # Run in a namespace of its own that has an interface besides lo (a veth pair),
    # as the host's namespace would: the probe must refuse to send anything there.
    script = f"ip link add ksp0 type veth peer name ksp1 && exec {sys.executable} " + (
        ksplit_probe.__file__
    )
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        input="{}",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "unshare -n" in proc.stderr


# ------------------------------------------------------------- loading, parameters


@pytest.fixture
def params_kw() -> dict[str, Any]:
    return {
        "chunk": 5,
        "max_payload": 1500,
        "max_seg_payload": 1460,
        "ports": (443,),
        "mark": MARK,
        "local": True,
    }


@pytest.mark.parametrize("l2", [0, 14])
@pytest.mark.parametrize("local", [True, False])
def test_program_loads(l2: int, local: bool, params_kw: dict[str, Any]) -> None:
    params = ksplit.Params(**{**params_kw, "l2": l2, "local": local, "ports": (443, 8443)})
    with ksplit.Loaded(params) as loaded:
        assert loaded.prog_fd >= 0
        assert loaded.counters() == COUNTERS_ZERO
    assert loaded.prog_fd == -1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"chunk": 0}, "chunk"),
        ({"chunk": -1}, "chunk"),
        ({"chunk": ksplit.CHUNK_MAX + 1}, "chunk"),
        ({"max_payload": 5}, "max_payload"),  # not more than chunk
        ({"max_payload": 4}, "max_payload"),
        ({"max_payload": ksplit.PAYLOAD_MAX + 1}, "max_payload"),
        ({"ports": ()}, "ports"),
        ({"ports": (0,)}, "ports"),
        ({"ports": (443, 65536)}, "ports"),
        ({"ports": (-443,)}, "ports"),
        ({"max_seg_payload": 0}, "max_seg_payload"),
        ({"mark": 0}, "mark"),
        ({"mark": 2**32}, "mark"),
        ({"mark": -1}, "mark"),
        ({"l2": 4}, "l2"),
        ({"l2": 18}, "l2"),
    ],
    ids=str,
)
def test_params_reject(change: dict[str, Any], match: str, params_kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=match):
        ksplit.Params(**{**params_kw, **change})


@pytest.mark.parametrize(("chunk", "minimum"), [(1, 6), (5, 6), (6, 7), (64, 65)])
def test_params_edges_and_min_payload(chunk: int, minimum: int, params_kw: dict[str, Any]) -> None:
    params = ksplit.Params(**{**params_kw, "chunk": chunk, "max_payload": minimum})
    assert params.min_payload == minimum
    ksplit.Params(**{**params_kw, "max_payload": ksplit.PAYLOAD_MAX, "ports": (1, 65535)})
    ksplit.Params(**{**params_kw, "mark": 0xFFFFFFFF, "l2": 0})
