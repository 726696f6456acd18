"""--block-quic all: outbound QUIC Initial packets are dropped (so browsers fall
back to TCP); other UDP to port 443 and everything after the daemon stops pass."""

from __future__ import annotations

import time
from pathlib import Path

from e2e_support import HERE, running
from govpass.lab import Lab

INITIAL_V1, INITIAL_V2, SHORT_HEADER = 0xC3, 0xD1, 0x43


def _send_all(lab: Lab) -> None:
    for family in (4, 6):
        addr = lab.address("server", family)
        for first, size in ((INITIAL_V1, 1200), (INITIAL_V2, 1200), (SHORT_HEADER, 60)):
            lab.exec(
                "client",
                ["python3", str(HERE / "udp_probe.py"), "send", addr, hex(first), str(size)],
            )


def _received(log: Path, after: int) -> list[int]:
    deadline = time.monotonic() + 2
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()[after:]
        if len(lines) >= 2:  # at least the short-header datagrams of both families
            time.sleep(0.3)
            lines = log.read_text().splitlines()[after:]
            break
        time.sleep(0.05)
    return sorted(int(line.split()[0], 16) for line in lines)


def test_block_quic_drops_initial_packets_only(host_lab: Lab) -> None:
    log = host_lab.workdir / "udp-received.log"
    log.touch()
    pid = host_lab.spawn("server", ["python3", str(HERE / "udp_probe.py"), "serve", str(log)])
    try:
        time.sleep(0.3)
        _send_all(host_lab)
        before = _received(log, 0)
        assert before == sorted([INITIAL_V1, INITIAL_V2, SHORT_HEADER] * 2), before
        seen = len(log.read_text().splitlines())
        with running(host_lab, ["--block-quic", "all"], name="quic"):
            _send_all(host_lab)
            during = _received(log, seen)
            assert during == [SHORT_HEADER, SHORT_HEADER], during
        seen = len(log.read_text().splitlines())
        _send_all(host_lab)
        after = _received(log, seen)
        assert after == sorted([INITIAL_V1, INITIAL_V2, SHORT_HEADER] * 2), after
    finally:
        host_lab.kill(pid)  # port 443/udp free for the next test
