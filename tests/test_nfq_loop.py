"""The Rust NFQUEUE loop (Engine.nfq_*) against a socket pair standing in for the
kernel: queued-packet messages go in, verdict messages come out.

The end-to-end tests run the same loop on real queues; these pin down the
message handling without root."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from govpass._core import SEND, Engine, EngineConfig
from scapy.all import IP, TCP, Raw  # type: ignore[import-untyped]

QUEUE = 200
MARK = 0x10000000
NLMSG_HDRLEN = 16
MSG_PACKET = 3 << 8
MSG_VERDICT = (3 << 8) | 1
NF_DROP, NF_ACCEPT = 0, 1


def attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def packet_message(packet_id: int, payload: bytes, mark: int = 0) -> bytes:
    body = struct.pack("=BB", socket.AF_INET, 0) + struct.pack("!H", QUEUE)
    body += attr(1, struct.pack("!IHB", packet_id, 0x0800, 3))
    body += attr(3, struct.pack("!I", mark))
    body += attr(10, payload)
    return struct.pack("=IHHII", NLMSG_HDRLEN + len(body), MSG_PACKET, 0, 0, 0) + body


def verdict_messages(datagram: bytes) -> list[tuple[int, int, int | None, bytes | None]]:
    """(packet id, verdict, mark or None, packet to send instead or None) of each
    verdict message in a datagram."""
    out = []
    while len(datagram) >= NLMSG_HDRLEN:
        length, kind = struct.unpack_from("=IH", datagram)
        assert kind == MSG_VERDICT
        (queue,) = struct.unpack_from("!H", datagram, NLMSG_HDRLEN + 2)
        assert queue == QUEUE
        rest = datagram[NLMSG_HDRLEN + 4 : length]
        found: dict[int, bytes] = {}
        while rest:
            alen, akind = struct.unpack_from("=HH", rest)
            found[akind] = rest[4:alen]
            rest = rest[(alen + 3) & ~3 :]
        verdict, packet_id = struct.unpack("!II", found[2])
        mark = struct.unpack("!I", found[3])[0] if 3 in found else None
        out.append((packet_id, verdict, mark, found.get(10)))
        datagram = datagram[(length + 3) & ~3 :]
    return out


def tcp(payload: bytes, seq: int = 1000, sport: int = 40000) -> bytes:
    pkt = IP(src="192.0.2.1", dst="198.51.100.2") / TCP(
        sport=sport, dport=443, seq=seq, ack=1, flags="PA"
    )
    return bytes(pkt / Raw(payload))


def hello_record(body_len: int = 300) -> bytes:
    body = b"\x01" + (body_len - 4).to_bytes(3, "big") + b"\x03\x03" + bytes(body_len - 6)
    return b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body


class Kernel:
    """The kernel side of the queue socket, and a raw socket that refuses to send."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # sendto(AF_INET) fails
        self.theirs.settimeout(1.0)

    def queue(self, *messages: bytes) -> None:
        for m in messages:
            self.theirs.send(m)

    def verdicts(self) -> list[tuple[int, int, int | None]]:
        """The next datagram's verdicts, without packets they carry."""
        return [v[:3] for v in self.verdict_messages()]

    def verdict_messages(self) -> list[tuple[int, int, int | None, bytes | None]]:
        return verdict_messages(self.theirs.recv(65536))

    def close(self) -> None:
        for s in (self.ours, self.theirs, self.raw):
            s.close()


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    yield k
    k.close()


def run(engine: Engine, expected: int) -> int:
    """Runs the loop in short slices until ``expected`` packets were read (1 s at most)."""
    total, deadline = 0, time.monotonic() + 1.0
    while total < expected and time.monotonic() < deadline:
        total += engine.nfq_run(0.02)
    return total


def attached(kernel: Kernel, in_verdicts: bool = False, **cfg: object) -> Engine:
    engine = Engine(EngineConfig(**cfg))  # type: ignore[arg-type]
    engine.nfq_attach(
        kernel.ours.fileno(), QUEUE, MARK, kernel.raw.fileno(), None, in_verdicts=in_verdicts
    )
    return engine


def segments_of(*packets: bytes) -> list[bytes]:
    """The segments the engine makes of ``packets`` (through the Python API)."""
    engine = Engine(EngineConfig())
    out: list[bytes] = []
    for p in packets:
        actions = engine.process(p, time.monotonic(), None) or []
        out += [a.packet for a in actions if a.kind == SEND]
    return out


def test_a_packet_that_passes_is_accepted_with_the_mark(kernel: Kernel) -> None:
    engine = attached(kernel)
    kernel.queue(packet_message(7, tcp(b"GET / HTTP/1.1\r\n\r\n"), mark=0x1))
    assert run(engine, 1) == 1
    assert kernel.verdicts() == [(7, NF_ACCEPT, MARK | 0x1)]


def test_verdicts_of_one_batch_share_a_datagram(kernel: Kernel) -> None:
    engine = attached(kernel)
    kernel.queue(
        packet_message(1, tcp(b"plain one", sport=40001)),
        packet_message(2, tcp(b"plain two", sport=40002)),
    )
    time.sleep(0.05)
    assert run(engine, 2) == 2
    assert kernel.verdicts() == [(1, NF_ACCEPT, MARK), (2, NF_ACCEPT, MARK)]


def test_a_split_drops_the_original_and_counts_segments_it_could_not_send(
    kernel: Kernel,
) -> None:
    engine = attached(kernel)
    kernel.queue(packet_message(3, tcp(hello_record())))
    assert run(engine, 1) == 1
    assert kernel.verdicts() == [(3, NF_DROP, None)]
    counters = engine.nfq_counters()
    assert counters["inject_errors"] == engine.stats()["segments"] >= 2
    assert counters["inject_sent"] == 0
    assert engine.stats()["splits"] == 1


def test_in_verdicts_the_last_segment_leaves_in_place_of_the_original(
    kernel: Kernel,
) -> None:
    engine = attached(kernel, in_verdicts=True)
    packet = tcp(hello_record(), seq=7000, sport=44000)
    kernel.queue(packet_message(3, packet, mark=0x2))
    assert run(engine, 1) == 1
    segments = segments_of(packet)
    assert len(segments) >= 2
    # The others went to the raw socket (which refuses here); the last one
    # rides in the original's verdict, marked like the raw sockets' segments.
    assert kernel.verdict_messages() == [(3, NF_ACCEPT, MARK | 0x2, segments[-1])]
    counters = engine.nfq_counters()
    assert counters["inject_errors"] == len(segments) - 1
    assert counters["inject_sent"] == 0 and counters["verdict_sent"] == 1


def test_in_verdicts_a_record_over_two_packets_leaves_in_both_verdicts(
    kernel: Kernel,
) -> None:
    engine = attached(kernel, in_verdicts=True)
    record = hello_record(600)
    first = tcp(record[:300], seq=5000, sport=42000)
    second = tcp(record[300:], seq=5300, sport=42000)
    kernel.queue(packet_message(6, first))
    assert run(engine, 1) == 1
    kernel.queue(packet_message(7, second))
    assert run(engine, 1) == 1
    got = kernel.verdict_messages()
    assert [(i, v, m) for i, v, m, _ in got] == [(6, NF_ACCEPT, MARK), (7, NF_ACCEPT, MARK)]
    segments = segments_of(first, second)
    # The last two segments, in order; the ones before them went raw.
    assert [p for *_, p in got] == segments[-2:]
    counters = engine.nfq_counters()
    assert counters["verdict_sent"] == 2
    assert counters["inject_errors"] == len(segments) - 2


def test_held_packets_are_released_by_the_timer_and_at_shutdown(kernel: Kernel) -> None:
    engine = attached(kernel, collect_timeout_ms=50.0)
    record = hello_record(600)
    kernel.queue(packet_message(4, tcp(record[:200], sport=41000)))
    assert run(engine, 1) == 1
    assert engine.stats()["held_packets_now"] == 1
    engine.nfq_expire(time.monotonic() + 1.0)  # past the collect timeout
    assert kernel.verdicts() == [(4, NF_ACCEPT, MARK)]
    assert engine.stats()["fail_open"]["timeout"] == 1

    kernel.queue(packet_message(5, tcp(record[:200], sport=41001)))
    assert run(engine, 1) == 1
    engine.nfq_release_all()
    assert kernel.verdicts() == [(5, NF_ACCEPT, MARK)]
    assert engine.stats()["held_packets_now"] == 0


def test_a_record_over_two_packets_is_split_once_whole(kernel: Kernel) -> None:
    engine = attached(kernel)
    record = hello_record(600)
    kernel.queue(packet_message(6, tcp(record[:300], seq=5000, sport=42000)))
    assert run(engine, 1) == 1
    kernel.queue(packet_message(7, tcp(record[300:], seq=5300, sport=42000)))
    assert run(engine, 1) == 1
    assert sorted(kernel.verdicts()) == [(6, NF_DROP, None), (7, NF_DROP, None)]
    assert engine.stats()["splits"] == 1


def test_a_call_runs_until_its_timeout_and_handles_what_comes_meanwhile(
    kernel: Kernel,
) -> None:
    engine = attached(kernel)
    start = time.monotonic()
    assert engine.nfq_run(0.05) == 0
    assert 0.04 <= time.monotonic() - start < 0.5
    kernel.queue(packet_message(10, tcp(b"one", sport=43001)))
    kernel.queue(packet_message(11, tcp(b"two", sport=43002)))
    start = time.monotonic()
    assert engine.nfq_run(0.2) == 2
    assert time.monotonic() - start >= 0.15  # it kept waiting for more
    got = kernel.verdicts()
    if len(got) < 2:  # the two may have been read in two batches
        got += kernel.verdicts()
    assert got == [(10, NF_ACCEPT, MARK), (11, NF_ACCEPT, MARK)]


def test_a_call_made_idle_returns_once_a_packet_is_held(kernel: Kernel) -> None:
    """The worker waits with a long timer while nothing is held; the first held
    packet ends the call at once, so the collect timeout is kept on time."""
    engine = attached(kernel, collect_timeout_ms=50.0)
    assert engine.held_packets == 0
    record = hello_record(600)
    kernel.queue(packet_message(20, tcp(record[:200], sport=44000)))
    start = time.monotonic()
    assert engine.nfq_run(2.0) == 1
    assert time.monotonic() - start < 1.0  # not the whole 2 s
    assert engine.held_packets == 1
    # With a packet held already, a call waits out its timeout as before.
    start = time.monotonic()
    assert engine.nfq_run(0.1) == 0
    assert time.monotonic() - start >= 0.08
    engine.nfq_release_all()
    assert engine.held_packets == 0 and kernel.verdicts() == [(20, NF_ACCEPT, MARK)]


def test_the_loop_waits_in_its_receive_even_on_a_non_blocking_socket(
    kernel: Kernel,
) -> None:
    # The worker's own setup leaves the queue socket non-blocking (Python's
    # socket timeouts set O_NONBLOCK on the shared file): attaching undoes it, so
    # an idle call sleeps instead of spinning.
    kernel.ours.setblocking(False)
    engine = attached(kernel)
    start, cpu = time.monotonic(), time.process_time()
    assert engine.nfq_run(0.2) == 0
    assert time.monotonic() - start >= 0.15
    assert time.process_time() - cpu < 0.05


def test_malformed_messages_are_skipped(kernel: Kernel) -> None:
    engine = attached(kernel)
    kernel.queue(b"\x01\x02\x03", struct.pack("=IHHII", 400, MSG_PACKET, 0, 0, 0))
    kernel.queue(packet_message(8, tcp(b"after the junk")))
    time.sleep(0.05)
    assert run(engine, 1) == 1
    assert kernel.verdicts() == [(8, NF_ACCEPT, MARK)]


def test_the_python_entry_points_refuse_once_attached(kernel: Kernel) -> None:
    engine = attached(kernel)
    kernel.queue(packet_message(9, tcp(hello_record(600)[:200])))
    run(engine, 1)
    with pytest.raises(RuntimeError, match="nfq_"):
        engine.release_all()


def test_the_loop_needs_an_attached_socket() -> None:
    with pytest.raises(RuntimeError, match="nfq_attach"):
        Engine().nfq_run(0.0)
