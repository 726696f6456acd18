"""--block-quic listed: the daemon drops the QUIC Initials of names it would split
(here --hosts blocked.example) and lets every other QUIC Initial through.

Real Initials: built by aioquic in the client namespace (tests/e2e/quic_probe.py)
and sent with a UDP socket to the server's port 443, where a receiver records a
digest of every datagram that arrives. A hello in one packet; one whose name
straddles two Initial packets, in order, with retransmissions, and reordered;
QUIC v1 and v2; IPv4 and IPv6. TCP keeps being split meanwhile. With
--block-quic all, both names' Initials are dropped by the kernel rule.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import ALLOWED, BLOCKED, FAMILIES, HERE, PASS_TIMEOUT, censoring, running
from govpass.lab import Lab

pytestmark = pytest.mark.netns

# (server name, cipher suites offered, QUIC version, order sent,
#  how many times each datagram of the flight arrives, packets govpass drops)
Case = tuple[str, int, int, list[int], list[int], int]
CASES: list[Case] = [
    (BLOCKED, 0, 1, [0, 0], [0], 2),  # one packet: dropped, and its retransmission
    (ALLOWED, 0, 1, [0, 0], [2], 0),
    (BLOCKED, 0, 2, [0], [0], 1),  # QUIC v2
    (ALLOWED, 0, 2, [0], [1], 0),
    # the name straddles two packets: the first alone cannot tell and passes; the
    # one completing the name is dropped, and so is every retransmission
    (BLOCKED, 385, 1, [0, 1, 0, 1], [1, 0], 3),
    (BLOCKED, 385, 1, [1, 0], [0, 1], 1),  # reordered: the second arrives first
    (ALLOWED, 385, 1, [0, 1, 0, 1], [2, 2], 0),
]
GARBAGE = bytes([0xC3]) + b"\x00\x00\x00\x01" + bytes(1195)  # tests/e2e/udp_probe.py's


def digest(datagram: bytes) -> str:
    return hashlib.sha256(datagram).hexdigest()[:16]


@pytest.fixture
def receiver(host_lab: Lab) -> Iterator[Path]:
    log = host_lab.workdir / f"quic-received-{time.monotonic_ns()}.log"
    log.touch()
    pid = host_lab.spawn("server", [sys.executable, str(HERE / "quic_probe.py"), "serve", str(log)])
    time.sleep(0.3)
    try:
        yield log
    finally:
        host_lab.kill(pid)  # port 443/udp free for the next test


def send(lab: Lab, family: int, name: str, suites: int, version: int, order: list[int]) -> dict:
    addr = lab.address("server", family)
    argv = [sys.executable, str(HERE / "quic_probe.py"), "send", addr, name,
            "--suites", str(suites), "--version", str(version),
            "--order", ",".join(map(str, order))]  # fmt: skip
    out: dict = json.loads(lab.exec("client", argv).stdout.strip().splitlines()[-1])
    return out


def send_garbage(lab: Lab, family: int) -> None:
    lab.exec(
        "client",
        [sys.executable, str(HERE / "udp_probe.py"), "send", lab.address("server", family),
         "0xc3", "1200"],
    )  # fmt: skip


def arrived(log: Path, expected_total: int) -> Counter[str]:
    """Digests of the datagrams received, once `expected_total` came in and
    nothing more for a while (so an extra one would be seen too)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(log.read_text().splitlines()) >= expected_total:
            break
        time.sleep(0.05)
    time.sleep(0.5)
    return Counter(line.split()[0] for line in log.read_text().splitlines())


def test_block_quic_listed_drops_only_listed_names(host_lab: Lab, receiver: Path) -> None:
    expected: Counter[str] = Counter()
    drops = 0
    args = ["--block-quic", "listed", "--hosts", BLOCKED]
    with running(host_lab, args, name="quic-listed") as gp:
        for family in FAMILIES:
            for name, suites, version, order, arrivals, dropped in CASES:
                sent = send(host_lab, family, name, suites, version, order)
                assert len(sent["digests"]) == len(arrivals), (name, suites, sent)
                for d, n in zip(sent["digests"], arrivals, strict=True):
                    expected[d] += n
                drops += dropped
            send_garbage(host_lab, family)  # undecidable: passes
            expected[digest(GARBAGE)] += 1
        got = arrived(receiver, sum(expected.values()))
        assert got == +expected, {"missing": expected - got, "extra": got - expected}
        stats = gp.wait_stats(lambda s: s.get("quic_dropped", 0) >= drops)
        assert stats["quic_dropped"] == drops, stats
        assert stats["quic_split_conns"] == 4 * len(FAMILIES), stats
        assert stats.get("callback_errors", 0) == 0, stats
        # TCP goes on through the same callback: the blocked name's hello is split
        with censoring(host_lab, "firstpacket"):
            for family in FAMILIES:
                ok, detail = host_lab.client("python", BLOCKED, family, timeout=PASS_TIMEOUT)
                assert ok, (family, detail)
        assert gp.wait_stats(lambda s: s.get("splits", 0) >= 2)["splits"] >= 2
    # stopped: nothing is queued or dropped any more
    sent = send(host_lab, 4, BLOCKED, 0, 1, [0])
    assert digest_arrives(receiver, sent["digests"][0])


def digest_arrives(log: Path, d: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.split()[0] == d for line in log.read_text().splitlines()):
            return True
        time.sleep(0.05)
    return False


def test_block_quic_all_drops_every_name(host_lab: Lab, receiver: Path) -> None:
    with running(host_lab, ["--block-quic", "all", "--hosts", BLOCKED], name="quic-all"):
        digests = []
        for family in FAMILIES:
            for name in (BLOCKED, ALLOWED):
                digests += send(host_lab, family, name, 0, 1, [0])["digests"]
            send_garbage(host_lab, family)
        time.sleep(1.0)
        got = Counter(line.split()[0] for line in receiver.read_text().splitlines())
        assert not (set(digests) | {digest(GARBAGE)}) & set(got), got
