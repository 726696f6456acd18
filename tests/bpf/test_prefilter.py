"""The kernel pre-filter of ``govpass.bpf.prefilter``, run in the kernel through
BPF_PROG_TEST_RUN on hand-built Ethernet frames (the program sees the packet from
the IP header on). Return value 1 = the packet goes to NFQUEUE, 0 = it does not."""

from __future__ import annotations

import errno
import glob
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from frames import ADDRS, DPORT, ETH, FAMILIES, ISN, SPORT, frame, ip_layer, record
from govpass.bpf import prefilter
from govpass.bpf import syscall as sc
from govpass.rules.spec import KernelSplitGate
from scapy.layers.inet import UDP, IPOption
from scapy.layers.inet6 import IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether


@pytest.fixture(scope="module", autouse=True)
def _root() -> None:
    # As with the netns and end-to-end tests: without root this is a failure to
    # report, not a reason to pass quietly (CI runs as root).
    if os.geteuid() != 0:
        pytest.fail("eBPF tests need root (bpf(2) program loads, a bpf mount)", pytrace=False)


AGE = 60 * 10**9  # long enough never to expire during a test
# Explicit MACs: without them scapy resolves neighbours (a second per IPv6 packet).


# ------------------------------------------------------------- building inputs


def key(family: str, sport: int = SPORT, dport: int = DPORT) -> bytes:
    af = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    src, dst = ADDRS[family]
    return socket.inet_pton(af, src) + socket.inet_pton(af, dst) + struct.pack("!HH", sport, dport)


def run(loaded: prefilter.Loaded, data: bytes) -> int:
    return sc.prog_test_run(loaded.prog_fd, data).retval


def end_of(entry: tuple[int, int] | None) -> int | None:
    return None if entry is None else entry[0]


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def loaded(family: str) -> Iterator[prefilter.Loaded]:
    with prefilter.Loaded(family, AGE) as lo:
        yield lo


# ------------------------------------------------------------- ClientHello records


def test_whole_record_in_one_packet_matches_and_remembers_its_end(
    family: str, loaded: prefilter.Loaded
) -> None:
    hello = record(512)
    before = time.monotonic_ns()
    assert run(loaded, frame(family, hello)) == 1
    entry = loaded.entry(key(family))
    assert entry is not None
    end, when = entry
    assert end == (ISN + len(hello)) % 2**32 == ISN + 517
    assert before <= when <= time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC


def test_record_length_comes_from_the_header_not_the_packet(
    family: str, loaded: prefilter.Loaded
) -> None:
    hello = record(0x1234)
    assert run(loaded, frame(family, hello[:100])) == 1
    assert end_of(loaded.entry(key(family))) == ISN + 5 + 0x1234


def test_record_over_two_packets_then_the_next_record_forgets_the_flow(
    family: str, loaded: prefilter.Loaded
) -> None:
    hello = record(1800)
    first, second = hello[:1200], hello[1200:]
    assert run(loaded, frame(family, first)) == 1
    assert run(loaded, frame(family, second, ISN + len(first))) == 1
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)
    # the next record (application data) starts exactly at the record's end
    after = ISN + len(hello)
    assert run(loaded, frame(family, b"\x17\x03\x03\x00\x20" + bytes(32), after)) == 0
    assert loaded.entry(key(family)) is None
    assert run(loaded, frame(family, bytes(100), after + 37)) == 0
    assert loaded.entry(key(family)) is None


def test_record_over_three_packets(family: str, loaded: prefilter.Loaded) -> None:
    hello = record(3000)
    for start in range(0, len(hello), 1000):
        assert run(loaded, frame(family, hello[start : start + 1000], ISN + start)) == 1
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)


def test_retransmitted_tail_of_a_whole_record_matches(
    family: str, loaded: prefilter.Loaded
) -> None:
    hello = record(512)
    assert run(loaded, frame(family, hello)) == 1
    tail = hello[300:]
    assert run(loaded, frame(family, tail, ISN + 300)) == 1
    assert run(loaded, frame(family, hello[-1:], ISN + len(hello) - 1)) == 1
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)


def test_retransmitted_record_from_its_start_matches_again(
    family: str, loaded: prefilter.Loaded
) -> None:
    hello = record(512)
    assert run(loaded, frame(family, hello)) == 1
    assert run(loaded, frame(family, hello)) == 1
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)


# ------------------------------------------------------------- what does not match


def test_pure_ack_does_not_match(family: str, loaded: prefilter.Loaded) -> None:
    assert run(loaded, frame(family, flags="A")) == 0


def test_pure_ack_leaves_the_entry_alone(family: str, loaded: prefilter.Loaded) -> None:
    hello = record(1800)
    assert run(loaded, frame(family, hello[:1000])) == 1
    assert run(loaded, frame(family, flags="A", seq=ISN + len(hello) + 5)) == 0
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)


def test_data_without_an_entry_does_not_match(family: str, loaded: prefilter.Loaded) -> None:
    assert run(loaded, frame(family, b"GET / HTTP/1.1\r\n\r\n")) == 0
    assert run(loaded, frame(family, record(512)[100:], ISN + 100)) == 0
    assert loaded.entry(key(family)) is None


def test_server_hello_type_does_not_match(family: str, loaded: prefilter.Loaded) -> None:
    assert run(loaded, frame(family, record(90, hs_type=0x02, version=b"\x03\x03"))) == 0
    assert loaded.entry(key(family)) is None


@pytest.mark.parametrize("size", [1, 5])
def test_payload_shorter_than_six_bytes_does_not_match(
    family: str, loaded: prefilter.Loaded, size: int
) -> None:
    assert run(loaded, frame(family, record(512)[:size])) == 0
    assert loaded.entry(key(family)) is None


@pytest.mark.parametrize("first", [0x15, 0x17])
def test_other_record_types_do_not_match(family: str, loaded: prefilter.Loaded, first: int) -> None:
    payload = bytes([first]) + record(512)[1:]
    assert run(loaded, frame(family, payload)) == 0


def test_expired_entry_does_not_match_and_is_deleted(family: str) -> None:
    hello = record(1800)
    with prefilter.Loaded(family, 1) as lo:  # max age: 1 ns
        assert run(lo, frame(family, hello[:1000])) == 1
        assert lo.entry(key(family)) is not None
        assert run(lo, frame(family, hello[1000:], ISN + 1000)) == 0
        assert lo.entry(key(family)) is None


def test_sequence_wrap_inside_the_record(family: str, loaded: prefilter.Loaded) -> None:
    start = 0xFFFFFF00
    hello = record(1000)
    assert run(loaded, frame(family, hello[:600], start)) == 1
    end = (start + len(hello)) % 2**32
    assert end < start  # the record spans 2^32
    assert end_of(loaded.entry(key(family))) == end
    assert run(loaded, frame(family, hello[600:], (start + 600) % 2**32)) == 1
    assert run(loaded, frame(family, bytes(40), end)) == 0
    assert loaded.entry(key(family)) is None


def test_sequence_wrap_before_the_continuation(family: str, loaded: prefilter.Loaded) -> None:
    start = 0xFFFFFF00  # first packet ends at 2^32 exactly: its continuation is seq 0
    hello = record(1000)
    assert run(loaded, frame(family, hello[:256], start)) == 1
    assert run(loaded, frame(family, hello[256:], 0)) == 1


@pytest.mark.parametrize(
    "offset", [-100, -100_000, 517, 517 + 1000], ids=["before", "far-before", "at-end", "past-end"]
)
def test_packet_outside_the_record_does_not_match_and_forgets_the_flow(
    family: str, loaded: prefilter.Loaded, offset: int
) -> None:
    hello = record(512)  # 517 bytes with its header
    assert run(loaded, frame(family, hello)) == 1
    assert run(loaded, frame(family, bytes(100), (ISN + offset) % 2**32)) == 0
    assert loaded.entry(key(family)) is None


# ------------------------------------------------------------- header shapes


@pytest.mark.parametrize(
    "fields", [{"flags": "MF"}, {"frag": 1}, {"flags": "MF", "frag": 8}], ids=str
)
def test_ipv4_fragment_does_not_match(fields: dict[str, object]) -> None:
    with prefilter.Loaded("ipv4", AGE) as lo:
        ip = ip_layer("ipv4", **fields)
        assert run(lo, frame("ipv4", record(512), ip=ip)) == 0
        assert lo.entry(key("ipv4")) is None


def test_ipv4_dont_fragment_flag_is_not_a_fragment() -> None:
    with prefilter.Loaded("ipv4", AGE) as lo:
        ip = ip_layer("ipv4", flags="DF")
        assert run(lo, frame("ipv4", record(512), ip=ip)) == 1


@pytest.mark.parametrize(
    "option", [IPOption(b"\x01\x01\x01\x01"), IPOption(b"\x01" * 8)], ids=["ihl6", "ihl7"]
)
def test_ipv4_options_shift_the_tcp_header(option: IPOption) -> None:
    hello = record(512)
    with prefilter.Loaded("ipv4", AGE) as lo:
        data = frame("ipv4", hello, ip=ip_layer("ipv4", options=[option]))
        assert data[14] & 0x0F > 5  # IHL
        assert run(lo, data) == 1
        assert end_of(lo.entry(key("ipv4"))) == ISN + len(hello)


def test_udp_does_not_match(family: str, loaded: prefilter.Loaded) -> None:
    data = bytes(Ether(**ETH) / ip_layer(family) / UDP(sport=SPORT, dport=DPORT) / record(512))
    assert run(loaded, data) == 0
    assert loaded.entry(key(family)) is None


def test_ipv6_extension_header_before_tcp_does_not_match() -> None:
    with prefilter.Loaded("ipv6", AGE) as lo:
        ip = ip_layer("ipv6") / IPv6ExtHdrHopByHop()
        assert run(lo, frame("ipv6", record(512), ip=ip)) == 0
        assert lo.entry(key("ipv6")) is None


@pytest.mark.parametrize("tcp_bytes", [0, 10, 19])
def test_frame_truncated_inside_the_tcp_header_does_not_match(
    family: str, loaded: prefilter.Loaded, tcp_bytes: int
) -> None:
    ip_len = 20 if family == "ipv4" else 40
    data = frame(family, record(512))
    assert run(loaded, data[: 14 + ip_len + tcp_bytes]) == 0


def test_tcp_options_do_not_disturb_the_payload_offset(
    family: str, loaded: prefilter.Loaded
) -> None:
    opts: list[tuple[str, object]] = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))]
    hello = record(1800)
    data = frame(family, hello[:1000], tcp_options=opts)
    ip_len = 20 if family == "ipv4" else 40
    assert data[14 + ip_len + 12] >> 4 == 8  # data offset: 32 bytes
    assert run(loaded, data) == 1
    assert end_of(loaded.entry(key(family))) == ISN + len(hello)
    assert run(loaded, frame(family, hello[1000:], ISN + 1000, tcp_options=opts)) == 1


def test_options_bytes_that_look_like_a_hello_are_not_payload(
    family: str, loaded: prefilter.Loaded
) -> None:
    # 16 03 01 .. .. 01 inside the TCP options (as an unknown option's data), none after
    opts: list[tuple[str, object]] = [(254, b"\x16\x03\x01\x02\x00\x01")]
    assert run(loaded, frame(family, bytes(20), tcp_options=opts)) == 0


# ------------------------------------------------------------- flows


def test_flows_keep_separate_entries(family: str, loaded: prefilter.Loaded) -> None:
    a, b = record(1800), record(700)
    assert run(loaded, frame(family, a[:1000], ISN, sport=40001)) == 1
    assert run(loaded, frame(family, b[:300], 5_000_000, sport=40002)) == 1
    assert end_of(loaded.entry(key(family, 40001))) == ISN + len(a)
    assert end_of(loaded.entry(key(family, 40002))) == 5_000_000 + len(b)
    assert loaded.entry(key(family)) is None
    # the other flow's continuation does not match under this flow's ports
    assert run(loaded, frame(family, b[300:], 5_000_300, sport=40001)) == 0
    assert loaded.entry(key(family, 40001)) is None
    assert run(loaded, frame(family, b[300:], 5_000_300, sport=40002)) == 1
    assert end_of(loaded.entry(key(family, 40002))) == 5_000_000 + len(b)


def test_families_have_separate_maps() -> None:
    with prefilter.Loaded("ipv4", AGE) as v4, prefilter.Loaded("ipv6", AGE) as v6:
        assert run(v4, frame("ipv4", record(512))) == 1
        assert v4.entry(key("ipv4")) is not None
        assert v6.entry(key("ipv6")) is None


# ------------------------------------------------------------- build, pinning


def test_load_rejects_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="family"):
        prefilter.Loaded("ipx", 10**9)


def test_pinned_programs_exist_inside_the_block_only() -> None:
    pattern = f"{prefilter.PIN_ROOT}/bpf-*"
    before = set(glob.glob(pattern))
    with prefilter.pinned(("ipv4", "ipv6"), 10**9) as prefix:
        for family in FAMILIES:
            path = f"{prefix}-{family}"
            assert os.path.exists(path)
            fd = sc.obj_get(path)
            try:
                assert sc.prog_test_run(fd, frame(family, record(512))).retval == 1
            finally:
                os.close(fd)
    for family in FAMILIES:
        assert not os.path.exists(f"{prefix}-{family}")
    assert not os.path.exists(os.path.dirname(prefix))
    assert set(glob.glob(pattern)) - before == set()
    assert [d for d in glob.glob(pattern) if os.path.isdir(d)] == []


def test_pinned_cleans_up_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), prefilter.pinned(("ipv4",), 10**9) as prefix:
        assert os.path.exists(f"{prefix}-ipv4")
        raise RuntimeError("boom")
    assert not os.path.exists(f"{prefix}-ipv4")
    assert not os.path.exists(os.path.dirname(prefix))


@contextmanager
def bpffs() -> Iterator[str]:
    """A private bpf file system, as the loader's pin directory."""
    with prefilter._pin_dir(f"test-{os.getpid()}") as directory:
        yield directory


def test_load_leaves_nothing_in_its_pin_directory(family: str) -> None:
    with bpffs() as directory:
        before = set(os.listdir(directory))  # the kernel's own files of a new mount
        with prefilter.Loaded(family, AGE, pin_dir=directory) as lo:
            assert set(os.listdir(directory)) == before
            assert run(lo, frame(family, record(512))) == 1


def test_a_stale_gate_pin_is_not_taken_for_the_given_gate(family: str, gate_fd: int) -> None:
    # A load that died half-way left an "on" gate pinned under the gate's name:
    # the given gate (off) is the one the program reads.
    stale = sc.map_create(sc.MAP_TYPE_ARRAY, 4, 4, 1)
    try:
        set_gate(stale, 1)
        with bpffs() as directory:
            before = set(os.listdir(directory))
            sc.obj_pin(stale, f"{directory}/gp_gate")
            gate = make_gate(gate_fd)
            with prefilter.Loaded(family, AGE, gate, directory) as lo:
                assert set(os.listdir(directory)) == before
                assert run(lo, frame(family, record(512))) == 1
                set_gate(gate_fd, 1)
                assert run(lo, frame(family, record(512), sport=40001)) == 0
    finally:
        os.close(stale)


def test_a_closed_gate_fd_is_a_bpf_error(family: str) -> None:
    fd = sc.map_create(sc.MAP_TYPE_ARRAY, 4, 4, 1)
    os.close(fd)
    gate = make_gate(fd)
    with pytest.raises(sc.BpfError) as err:
        prefilter.Loaded(family, AGE, gate)
    assert err.value.errno == errno.EBADF
    assert "gate map" in str(err.value)


def test_a_pin_directory_off_bpffs_is_a_bpf_error(family: str, tmp_path: Path) -> None:
    with pytest.raises(sc.BpfError) as err:
        prefilter.Loaded(family, AGE, pin_dir=str(tmp_path))
    assert "gp_gate" in str(err.value)
    assert os.listdir(tmp_path) == []


def test_unavailable_reason_is_none_as_root() -> None:
    assert prefilter.unavailable_reason() is None


# ------------------------------------------------------------- kernel split gate

GATE_MIN, GATE_MAX = 64, 1000  # the whole records left to the kernel split, by payload size
GATE_CHUNK = GATE_MIN - 1
GATE_SEG = 2000  # no header size here makes the engine cut a record within GATE_MAX in three


def make_gate(fd: int, max_seg_payload: int = GATE_SEG) -> KernelSplitGate:
    return KernelSplitGate(fd, GATE_MIN, GATE_MAX, GATE_CHUNK, max_seg_payload)


@pytest.fixture
def gate_fd() -> Iterator[int]:
    fd = sc.map_create(sc.MAP_TYPE_ARRAY, 4, 4, 1)  # a new array map holds zeros: gate off
    try:
        yield fd
    finally:
        os.close(fd)


def set_gate(fd: int, value: int) -> None:
    sc.map_update(fd, struct.pack("=I", 0), struct.pack("=I", value))


@pytest.fixture
def gated(family: str, gate_fd: int) -> Iterator[prefilter.Loaded]:
    gate = make_gate(gate_fd)
    with prefilter.Loaded(family, AGE, gate) as lo:
        yield lo


@pytest.mark.parametrize("payload", [GATE_MIN, 517, GATE_MAX])
@pytest.mark.parametrize("value", [1, 2, 0xFFFFFFFF])
def test_gate_on_leaves_a_whole_record_to_the_kernel_split(
    family: str, gated: prefilter.Loaded, gate_fd: int, payload: int, value: int
) -> None:
    set_gate(gate_fd, value)
    assert run(gated, frame(family, record(payload - 5))) == 0
    assert gated.entry(key(family)) is None


def test_gate_off_matches_and_remembers_as_without_a_gate(
    family: str, gated: prefilter.Loaded, gate_fd: int
) -> None:
    hello = record(512)
    assert run(gated, frame(family, hello)) == 1  # a new map: 0, off
    assert end_of(gated.entry(key(family))) == ISN + len(hello)
    set_gate(gate_fd, 0)
    assert run(gated, frame(family, hello, ISN + 10_000, sport=40001)) == 1
    assert end_of(gated.entry(key(family, 40001))) == ISN + 10_000 + len(hello)


def test_gate_is_read_on_every_packet(family: str, gated: prefilter.Loaded, gate_fd: int) -> None:
    hello = record(512)
    set_gate(gate_fd, 1)
    assert run(gated, frame(family, hello)) == 0
    set_gate(gate_fd, 0)
    assert run(gated, frame(family, hello)) == 1
    assert end_of(gated.entry(key(family))) == ISN + len(hello)
    set_gate(gate_fd, 1)
    assert run(gated, frame(family, hello, sport=40001)) == 0
    assert gated.entry(key(family, 40001)) is None


def test_gate_on_record_over_two_packets_still_matches(
    family: str, gated: prefilter.Loaded, gate_fd: int
) -> None:
    set_gate(gate_fd, 1)
    hello = record(700)  # 705 bytes: within the gate's sizes, but not whole in one packet
    assert run(gated, frame(family, hello[:400])) == 1
    assert end_of(gated.entry(key(family))) == ISN + len(hello)
    assert run(gated, frame(family, hello[400:], ISN + 400)) == 1
    assert end_of(gated.entry(key(family))) == ISN + len(hello)


@pytest.mark.parametrize("payload", [6, GATE_MIN - 1, GATE_MAX + 1, 1500])
def test_gate_on_whole_record_outside_its_sizes_matches(
    family: str, gated: prefilter.Loaded, gate_fd: int, payload: int
) -> None:
    set_gate(gate_fd, 1)
    hello = record(payload - 5)
    assert len(hello) == payload
    assert run(gated, frame(family, hello)) == 1
    assert end_of(gated.entry(key(family))) == ISN + payload


@pytest.mark.parametrize(
    ("shape", "largest"),
    [("ipv4", 963), ("ipv6", 943), ("ipv4-timestamps", 951)],
)
def test_gate_on_whole_record_the_engine_cuts_in_more_than_two_matches(
    shape: str, largest: int, gate_fd: int
) -> None:
    # max-seg-payload 900: the engine's segments carry at most 900 bytes less the
    # headers' bytes over 40, so a record cut at GATE_CHUNK is the kernel split's
    # up to GATE_CHUNK + that, and the engine's past it (as in ksplit.bpf.c).
    family = shape.split("-")[0]
    options = [("NOP", None), ("NOP", None), ("Timestamp", (7, 8))] if "-" in shape else None
    set_gate(gate_fd, 1)
    with prefilter.Loaded(family, AGE, make_gate(gate_fd, 900)) as lo:
        assert run(lo, frame(family, record(largest - 5), tcp_options=options)) == 0
        assert lo.entry(key(family)) is None
        assert run(lo, frame(family, record(largest - 4), tcp_options=options)) == 1
        assert end_of(lo.entry(key(family))) == ISN + largest + 1


@pytest.mark.parametrize("minor", [0x00, 0x05])
def test_gate_on_record_version_the_engine_passes_matches(
    family: str, gated: prefilter.Loaded, gate_fd: int, minor: int
) -> None:
    # The engine splits record versions 3.1 to 3.4 only; the kernel split leaves
    # the others alone, so they go to the queue as without the gate.
    set_gate(gate_fd, 1)
    hello = record(512, version=bytes([3, minor]))
    assert run(gated, frame(family, hello)) == 1
    assert end_of(gated.entry(key(family))) == ISN + len(hello)


def test_gate_on_two_records_in_one_packet_match(
    family: str, gated: prefilter.Loaded, gate_fd: int
) -> None:
    # The first record is whole, but the payload is more than that record.
    set_gate(gate_fd, 1)
    first = record(300)
    assert run(gated, frame(family, first + record(100))) == 1
    assert end_of(gated.entry(key(family))) == ISN + len(first)


def test_gate_on_gso_packet_matches(family: str, gated: prefilter.Loaded, gate_fd: int) -> None:
    # skb_shinfo(skb)->gso_segs from the test run's context (struct __sk_buff).
    set_gate(gate_fd, 1)
    hello = record(512)
    ctx = bytearray(192)  # sizeof(struct __sk_buff)
    struct.pack_into("=I", ctx, 164, 2)  # gso_segs
    assert sc.prog_test_run(gated.prog_fd, frame(family, hello), ctx=bytes(ctx)).retval == 1
    assert end_of(gated.entry(key(family))) == ISN + len(hello)
    struct.pack_into("=I", ctx, 164, 1)  # one segment: not GSO
    assert (
        sc.prog_test_run(gated.prog_fd, frame(family, hello, sport=40001), ctx=bytes(ctx)).retval
        == 0
    )


def test_gate_on_other_packets_are_as_without_a_gate(
    family: str, gated: prefilter.Loaded, gate_fd: int
) -> None:
    set_gate(gate_fd, 1)
    assert run(gated, frame(family, record(90, hs_type=0x02, version=b"\x03\x03"))) == 0
    assert run(gated, frame(family, flags="A")) == 0
    assert run(gated, frame(family, b"GET / HTTP/1.1\r\n\r\n")) == 0
    assert gated.entry(key(family)) is None


# ------------------------------------------------------------- the test run wrapper


def test_test_run_returns_the_packet_when_asked(family: str, loaded: prefilter.Loaded) -> None:
    data = frame(family, record(512))
    assert sc.prog_test_run(loaded.prog_fd, data).data == b""
    res = sc.prog_test_run(loaded.prog_fd, data, out_size=4096)
    assert res.retval == 1
    assert len(res.data) == len(data)
    # a socket filter's output has its link header zeroed by the kernel
    assert res.data[14:] == data[14:]
    with pytest.raises(sc.BpfError) as err:
        sc.prog_test_run(loaded.prog_fd, data, out_size=100)
    assert err.value.errno == errno.ENOSPC
