"""govpass in router mode: the daemon runs in the gateway namespace and reshapes the
client's forwarded flows; the client itself runs nothing of govpass."""

from __future__ import annotations

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    BLOCKED_TIMEOUT,
    FAMILIES,
    NAMES,
    PASS_TIMEOUT,
    all_splits,
    by_port,
    censoring,
    govpass_rule_lines,
    hello_flows,
    run_matrix,
    running,
)
from govpass.lab import Lab

pytestmark = pytest.mark.netns


def test_router_mode_passes_firstpacket_censor(router_lab: Lab, kinds: list[str]) -> None:
    lab = router_lab
    wan = lab.iface("gateway")
    with censoring(lab, "firstpacket"):
        # Baseline in this topology: the censor sees the gateway's forwarded traffic.
        before = run_matrix(lab, [("curl", BLOCKED, f) for f in FAMILIES], BLOCKED_TIMEOUT)
        assert not any(ok for ok, _ in before.values()), before
        with (
            running(lab, ["--mode", "router", "--iface", wan], role="gateway", name="router") as gp,
            lab.capture("gateway") as gw_cap,
            lab.capture("server") as srv_cap,
        ):
            jobs = [(k, n, f) for k in kinds for n in (BLOCKED, ALLOWED) for f in FAMILIES]
            results = run_matrix(lab, jobs, PASS_TIMEOUT)
            stats = gp.wait_stats(lambda s: all_splits(s) >= len(jobs))
        assert govpass_rule_lines(lab, "client") == []  # nothing of govpass on the client
    failed = {job: res for job, res in results.items() if not res[0]}
    assert not failed, f"router mode through the firstpacket censor: {failed}"
    assert all_splits(stats) >= len(jobs) and stats["inject_errors"] == 0, stats
    if "chromium" in kinds:  # its two-packet hello takes the worker path
        assert stats["splits"] >= 2 * len(FAMILIES), stats
    server_flows = by_port(hello_flows(srv_cap.flows()))
    flows = hello_flows(gw_cap.flows())
    assert {(f.family, f.sni) for f in flows} == {(f, n) for f in FAMILIES for n in NAMES}
    for flow in flows:
        where = flow.summary()
        assert flow.sizes[0] == 5 and sum(flow.sizes) == flow.record_len, where
        assert flow.seq_continuous and flow.checksums_ok, where
        assert server_flows[(flow.family, flow.sport)].first_record == flow.first_record


def test_router_mode_with_masquerade(router_lab: Lab) -> None:
    """A gateway that NATs its LAN (the usual home router): the split segments
    the gateway injects get the connection's source NAT like forwarded packets,
    and every later packet of the connection is unaffected."""
    lab = router_lab
    wan = lab.iface("gateway")
    nat = ["-t", "nat", "POSTROUTING", "-o", wan, "-j", "MASQUERADE"]
    for tool in ("iptables", "ip6tables"):
        lab.exec("gateway", [tool, "-t", "nat", "-A", *nat[2:]])
    try:
        with (
            censoring(lab, "firstpacket"),
            running(lab, ["--mode", "router", "--iface", wan], role="gateway", name="nat") as gp,
            lab.capture("server") as srv_cap,
        ):
            jobs = [("curl", n, f) for n in (BLOCKED, ALLOWED) for f in FAMILIES]
            results = run_matrix(lab, jobs, PASS_TIMEOUT)
            stats = gp.wait_stats(lambda s: all_splits(s) >= len(jobs))
        failed = {job: res for job, res in results.items() if not res[0]}
        assert not failed, f"router mode with NAT: {failed}"
        assert all_splits(stats) >= len(jobs), stats
        client_v4 = lab.address("client", 4)
        hellos = hello_flows(srv_cap.flows())
        v4 = [f for f in hellos if f.family == 4]
        # The server sees the gateway's address: the injected segments were NATed too.
        assert v4 and all(f.src != client_v4 for f in v4), [f.summary() for f in v4]
        assert all(f.sizes[0] == 5 for f in hellos), [f.summary() for f in hellos]
    finally:
        for tool in ("iptables", "ip6tables"):
            lab.exec("gateway", [tool, "-t", "nat", "-D", *nat[2:]], check=False)
