"""A packet cut short by the NFQUEUE copy range is accepted untouched (netns lab)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns


def test_truncated_copy_passes_untouched(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this end-to-end test needs root (it builds network namespaces)")
    from govpass.lab import Lab

    with Lab(router=False) as lab:
        lab.start_server(names=["allowed.example"])
        argv = [
            "-m",
            "govpass",
            "run",
            "--workers",
            "1",
            "--copy-range",
            "100",
            "--kernel-split",
            "off",  # whole hellos must reach the queue, where the copy is cut
            "--stats-interval",
            "0.2",
        ]
        pid = lab.spawn("client", argv, env={"GOVPASS_RUN_DIR": str(tmp_path)}, python=True)
        deadline = time.monotonic() + 15
        while "running" not in lab.log_of(pid).read_text():
            assert time.monotonic() < deadline and pid in lab.alive(), lab.log_of(pid).read_text()
            time.sleep(0.1)
        with lab.capture("client") as cap:
            for family in (4, 6):
                ok, detail = lab.client("curl", "allowed.example", family=family)
                assert ok, detail
        hellos = [f for f in cap.flows() if f.syn_seen and f.is_client_hello]
        assert len(hellos) == 2
        for flow in hellos:
            assert flow.sizes[0] == flow.record_len, flow.summary()  # one unsplit segment
            assert flow.checksums_ok
        time.sleep(0.5)
        stats = json.loads((tmp_path / "workers" / "worker-0.json").read_text())
        assert stats["packets"] >= 2  # the hellos were queued ...
        assert stats["splits"] == 0  # ... and passed as they were
        assert stats["fail_open"]["truncated"] == 0  # no flow existed to fail
        lab.kill(pid)
