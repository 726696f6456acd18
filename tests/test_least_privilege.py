"""The daemon works holding only CAP_NET_ADMIN and CAP_NET_RAW (what the
systemd unit in scripts/ grants), in the netns lab against the first-packet censor."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from govpass.lab.netns import caps_argv

pytestmark = pytest.mark.netns

ONLY_TWO_CAPS = caps_argv(("net_admin", "net_raw"))


def test_daemon_runs_with_only_net_admin_and_net_raw(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this end-to-end test needs root (it builds network namespaces)")
    from govpass.lab import Lab

    with Lab(router=False) as lab:
        lab.start_server(names=["blocked.example"])
        lab.start_censor("firstpacket", names=["blocked.example"])
        ok, detail = lab.client("curl", "blocked.example", family=4)
        assert not ok, f"censor should block without govpass: {detail}"
        argv = [*ONLY_TWO_CAPS, sys.executable, "-m", "govpass", "run", "--workers", "1"]
        pid = lab.spawn("client", argv, env={"GOVPASS_RUN_DIR": str(tmp_path)})
        deadline = time.monotonic() + 15
        while (
            not (tmp_path / "daemon.json").exists() or "running" not in lab.log_of(pid).read_text()
        ):
            assert time.monotonic() < deadline, lab.log_of(pid).read_text()
            assert pid in lab.alive(), lab.log_of(pid).read_text()
            time.sleep(0.1)
        status = Path(f"/proc/{pid}/status").read_text()
        cap_eff = next(line for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(cap_eff.split()[1], 16) == (1 << 12) | (1 << 13)
        ok, detail = lab.client("curl", "blocked.example", family=4)
        assert ok, detail
        lab.kill(pid)
        rules = lab.exec("client", ["iptables-save", "-t", "mangle"]).stdout
        assert "GOVPASS" not in rules
