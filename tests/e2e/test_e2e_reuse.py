"""A new connection reusing the client port of a split one (within the flow
timeout, its SYN never queued) is split too, by the workers (whose flow table
still holds the old flow)."""

from __future__ import annotations

from e2e_support import BLOCKED, WORKERS_ONLY, censoring, running
from govpass.lab import Lab


def test_reused_client_port_is_split_again(host_lab: Lab) -> None:
    addr = host_lab.address("server", 4)
    argv = [
        "curl",
        "-sk",
        "--max-time",
        "4",
        "--local-port",
        "40111",
        "--resolve",
        f"{BLOCKED}:443:{addr}",
        f"https://{BLOCKED}/",
    ]
    with censoring(host_lab, "firstpacket"), running(host_lab, WORKERS_ONLY, name="reuse") as gp:
        for attempt in range(3):
            proc = host_lab.exec("client", argv, check=False)
            assert proc.returncode == 0, (attempt, proc.stderr, gp.log()[-1500:])
        stats = gp.wait_stats(lambda s: s.get("splits", 0) >= 3)
        assert stats["splits"] >= 3, stats
