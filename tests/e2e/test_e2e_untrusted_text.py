"""Untrusted bytes in text: a server name of the attacker's choice, sent by a real
client over a real connection, reaches no file, log line or terminal raw (issue 13's
reproduction); nor does an interface name in `govpass doctor`.

The name carries a comment sign, a terminal title escape, line breaks and a line of
its own; it ends in ``.blocked.example`` so the lab's censor drops the hello and the
auto-learner sees the failures it would learn from. An auto list an older govpass
filled with such lines does not stop the daemon either.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    BLOCKED,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    censoring,
    cli_argv,
    running,
)
from govpass.lab import Lab
from govpass.lab.netns import wait_for

pytestmark = pytest.mark.netns

HERE = Path(__file__).resolve().parent
HOSTILE = b"victim.example#\x1b]0;pwned\x07\nbad entry\n^bank.blocked.example"
RAW = ("\x1b", "\x07", "\x9b", "\r")


@pytest.fixture
def lab(host_lab: Lab) -> Iterator[Lab]:
    with censoring(host_lab, "firstpacket"):
        yield host_lab


def send_hostile(lab: Lab) -> int:
    argv = [sys.executable, str(HERE / "raw_hello.py"), lab.address("server", 4), "443",
            HOSTILE.hex(), "3"]  # fmt: skip
    return lab.exec("client", argv, check=False, timeout=30).returncode


def test_a_hostile_sni_is_not_learned_and_shown_escaped(lab: Lab) -> None:
    auto = lab.workdir / "auto-hostile.txt"
    # What the previous version wrote for this name; it refused to start on it after.
    auto.write_text("victim.example#\x1b]0;pwned\x07\nbad entry\n^bank.blocked.example\n")
    args = [*WORKERS_ONLY, "--hostlist-auto", str(auto), "--auto-fail-threshold", "2"]
    with running(lab, args, name="hostile") as gp:
        assert f"hostlist-auto {auto}: skipped 1 line(s) that do not parse (line 2)" in gp.log()
        for _ in range(3):
            assert send_hostile(lab) != 0, "the censor should have dropped it"
        wait_for(lambda: "auto: not learning" in gp.log(), 10.0, "the refusal in the log")
        stats = gp.wait_stats(lambda s: s.get("auto_rejected", 0) >= 2)
        assert stats["auto_rejected"] >= 2 and stats.get("auto_learned", 0) == 0, stats
        table = lab.exec("client", cli_argv(gp.run_dir, ["stats"]), check=False)
        assert table.returncode == 0, table.stderr
        assert "names refused" in table.stdout
        assert not any(c in table.stdout for c in RAW), table.stdout

        # A real blocked name is still learned next to it.
        for attempt in (1, 2):
            ok, detail = lab.client("curl", BLOCKED, 4, timeout=3.0)
            assert not ok, f"attempt {attempt}: {detail}: {gp.log()[-2000:]}"
        wait_for(lambda: f"auto: learned {BLOCKED}" in gp.log(), 10.0, "the learned name")
        wait_for(lambda: "lists reloaded" in gp.log(), 10.0, "the reload")
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0]
    log = gp.log()
    assert not any(c in log for c in RAW), "raw control characters in the log"
    refusal = [ln for ln in log.splitlines() if "auto: not learning" in ln]
    assert len(refusal) == 1, refusal
    assert "victim.example#\\x1b]0;pwned\\x07\\x0abad entry\\x0a^bank.blocked.example" in refusal[0]
    assert not any(ln.startswith(("bad entry", "^bank")) for ln in log.splitlines())
    learned = [ln for ln in auto.read_text().splitlines() if ln and not ln.startswith("#")]
    assert learned[-1] == BLOCKED and "bank.blocked.example" not in learned[-1]
    assert sum("bad entry" in ln for ln in learned) == 1, "only the old line, none added"
    # And the next start is not refused (it was, with exit 2, before).
    with running(lab, args, name="hostile-again") as again:
        assert "skipped 1 line(s)" in again.log()


def test_doctor_shows_a_hostile_interface_name_escaped(lab: Lab) -> None:
    name = "gp\x1b]0;pwn\x07"  # the kernel allows any byte but '/', ':' and spaces
    lab.exec("client", ["ip", "link", "add", name, "type", "veth", "peer", "name", "gp-peer0"])
    try:
        proc = lab.exec("client", cli_argv(None, ["doctor", "--workers", "1"]), check=False)
    finally:
        lab.exec("client", ["ip", "link", "del", name])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "gp\\x1b]0;pwn\\x07" in proc.stdout, proc.stdout
    assert not any(c in proc.stdout + proc.stderr for c in RAW), proc.stdout
