"""Watching a live NFQUEUE daemon: ``--metrics`` scraped from inside its namespace after
a curl through it, and systemd's notifications (READY, STATUS, WATCHDOG, STOPPING) on
a datagram socket as ``Type=notify`` gives one."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from e2e_support import BLOCKED, PASS_TIMEOUT, WORKERS_ONLY, Govpass, censoring, running
from govpass.lab import Lab
from govpass.lab.netns import wait_for

pytestmark = pytest.mark.netns

PORT = 9464

SCRAPE = """
import sys, urllib.error, urllib.request
url = sys.argv[1]
try:
    with urllib.request.urlopen(url, timeout=5) as r:
        print(r.status, r.headers["Content-Type"])
        print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.headers["Content-Type"])
"""


@pytest.fixture
def lab(host_lab: Lab) -> Iterator[Lab]:
    with censoring(host_lab, "firstpacket"):
        yield host_lab


def scrape(lab: Lab, path: str = "/metrics") -> tuple[str, str]:
    """GET http://127.0.0.1:PORT{path} from inside the client's namespace: its status
    line (code, content type) and body."""
    url = f"http://127.0.0.1:{PORT}{path}"
    proc = lab.exec("client", [sys.executable, "-c", SCRAPE, url], check=False)
    assert proc.returncode == 0, proc.stderr
    head, _, body = proc.stdout.partition("\n")
    return head, body


def sample(body: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", body, re.M)
    return float(m[1]) if m else None


def test_metrics_count_the_split_of_a_curl_through_the_daemon(lab: Lab) -> None:
    args = [*WORKERS_ONLY, "--metrics", f"127.0.0.1:{PORT}"]
    with running(lab, args, name="metrics") as gp:
        assert f"metrics: http://127.0.0.1:{PORT}/metrics" in gp.log()
        head, body = scrape(lab)
        assert head == "200 text/plain; version=0.0.4; charset=utf-8", head
        assert sample(body, "govpass_workers") == 1
        before = sample(body, "govpass_splits_total") or 0
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0], "curl through the split"

        def split_seen() -> bool:
            return (sample(scrape(lab)[1], "govpass_splits_total") or 0) >= before + 1

        wait_for(split_seen, 10.0, "govpass_splits_total counting the curl")
        body = scrape(lab)[1]
        assert "# TYPE govpass_splits_total counter" in body
        assert "# TYPE govpass_fail_open_total counter" in body
        assert scrape(lab, "/")[0].startswith("404 ")
    # Stopped with the daemon: nothing listens any more.
    proc = lab.exec("client", [sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{PORT}/"],
                    check=False)  # fmt: skip
    assert proc.returncode != 0 and "Connection refused" in proc.stderr, proc


def _listen(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """The datagrams that arrive within `seconds`, with when they did."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append((time.monotonic(), data.decode()))
    return out


def _pets(messages: list[tuple[float, str]]) -> list[float]:
    return [t for t, m in messages if m == "WATCHDOG=1"]


def test_systemd_notifications_from_the_nfqueue_daemon(lab: Lab) -> None:
    path = lab.workdir / f"notify-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    gp = Govpass(lab, "client", WORKERS_ONLY, name="notify", env=env)
    try:
        gp.start()
        first = _listen(sock, 3.0)
        assert first[0][1].startswith("READY=1\nSTATUS="), first
        pets = _pets(first)
        assert 4 <= len(pets) <= 8, first  # every 0.5 s (half of WATCHDOG_USEC) over 3 s
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        assert min(gaps) >= 0.45, gaps  # never more often than half the period
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0], "curl through the split"
        statuses = [m for _, m in _listen(sock, 1.5) if m.startswith("STATUS=")]
        assert any(" splits=1 " in m for m in statuses), statuses  # a changed line is sent
        # A stopped worker: unhealthy once it has not run for worker-timeout (1 s),
        # when the daemon replaces it; the pets go on with the new one, and the
        # status says so.
        (worker,) = gp.workers()
        os.kill(worker, signal.SIGSTOP)
        after = _listen(sock, 4.0)
        assert "has not run for" in gp.log(), gp.log()[-2000:]
        assert len(_pets(after)) >= 5, after
        assert any("watchdog_restarts=1" in m for _, m in after if m.startswith("STATUS=")), after
        assert gp.stop() == 0, gp.log()[-2000:]
        rest = _listen(sock, 0.5)
        assert rest and rest[-1][1] == "STOPPING=1", rest
    finally:
        gp.stop()
        sock.close()
        path.unlink(missing_ok=True)
