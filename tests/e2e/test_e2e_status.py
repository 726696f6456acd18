"""The live status view: `govpass run` on a terminal draws a table of its counters
(rich), refreshed as traffic flows; on a pipe it logs key=value lines instead."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

from e2e_support import BLOCKED, PASS_TIMEOUT, cli_argv, govpass_rule_lines
from govpass.lab import Lab


def read_until(fd: int, pattern: str, timeout: float) -> str:
    """Terminal output read from ``fd`` until ``pattern`` matches (ANSI codes removed)."""
    raw, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                raw += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode(errors="replace"))
        if re.search(pattern, text):
            return text
    raise AssertionError(f"no {pattern!r} on the terminal within {timeout} s:\n{text}")


def test_on_a_terminal_run_draws_a_live_table(host_lab: Lab, tmp_path: Path) -> None:
    argv = cli_argv(tmp_path / "run", ["run", "--workers", "1", "--stats-interval", "0.3"])
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host_lab.ns("client"), *argv],
        stdin=subprocess.DEVNULL,
        stdout=sub,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(sub)
    try:
        first = read_until(main, r"flows seen\s+\S*\s*0", 20.0)
        assert "govpass" in first and "packets queued" in first, first
        ok, detail = host_lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail
        # The table is redrawn with the split counted (curl's hello is whole in one
        # packet: the kernel split takes it).
        read_until(main, r"splits in the kernel\s+\S*\s*1\b", 10.0)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(20)
        os.close(main)
    assert rc == 0
    assert govpass_rule_lines(host_lab, "client") == []
