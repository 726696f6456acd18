"""govpass in host mode: the daemon runs in the client's namespace.

Baseline first (no govpass: the listed name is blocked, the other passes), then one
daemon per split configuration, each shared by the tests of its class.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    BLOCKED_TIMEOUT,
    FAMILIES,
    NAMES,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    Govpass,
    Job,
    assert_blocked,
    boundaries,
    by_port,
    censoring,
    hello_flows,
    netprobe,
    run_matrix,
    running,
    serving_lab,
    sni_offset,
)
from govpass.lab import Lab

pytestmark = pytest.mark.netns


def all_jobs(kinds: list[str], names: tuple[str, ...] = NAMES) -> list[Job]:
    return [(k, n, f) for k in kinds for n in names for f in FAMILIES]


def assert_all_ok(results: dict[Job, tuple[bool, str]], what: str) -> None:
    failed = {job: res for job, res in results.items() if not res[0]}
    assert not failed, f"{what}: {failed}"


def test_chromium_is_there_unless_opted_out(kinds: list[str]) -> None:
    """ci/lab-deps.sh installs Chromium unless LAB_CHROMIUM=0: then it must be used."""
    if os.environ.get("LAB_CHROMIUM", "1") != "0":
        assert "chromium" in kinds, (
            "chromium is not installed: run ci/lab-deps.sh, or set LAB_CHROMIUM=0 to run "
            "the end-to-end tests without it"
        )


# -- baseline: no govpass -------------------------------------------------------------------


@pytest.mark.parametrize("censor", ["firstpacket", "string"])
def test_baseline_without_govpass(host_lab: Lab, kinds: list[str], censor: str) -> None:
    with censoring(host_lab, censor):
        blocked = run_matrix(host_lab, all_jobs(kinds, (BLOCKED,)), BLOCKED_TIMEOUT)
        assert_blocked(host_lab, censor, blocked)
        allowed = run_matrix(host_lab, all_jobs(kinds, (ALLOWED,)), PASS_TIMEOUT)
        assert_all_ok(allowed, f"unlisted name through the {censor} censor")
        if censor == "firstpacket":
            kills = {
                d["family"]
                for d in host_lab.censor_decisions()
                if d["sni"] == BLOCKED and d["verdict"] == "kill"
            }
            assert kills == set(FAMILIES)
        else:
            assert host_lab.censor_drops() > 0


# -- defaults -------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def gp(host_lab: Lab) -> Iterator[Govpass]:
    """One daemon with the default split for the tests of a class."""
    with running(host_lab, name="defaults") as daemon:
        yield daemon


class TestDefaults:
    """``govpass run`` with the default split (first segment 5 bytes)."""

    def test_firstpacket_censor_is_passed(
        self, host_lab: Lab, gp: Govpass, kinds: list[str]
    ) -> None:
        with censoring(host_lab, "firstpacket"):
            results = run_matrix(host_lab, all_jobs(kinds), PASS_TIMEOUT)
            decisions = host_lab.censor_decisions()
        assert_all_ok(results, "with govpass through the firstpacket censor")
        # The censor saw a 5-byte first packet for every flow: nothing to read a name from.
        assert decisions and all(d["verdict"] == "allow" for d in decisions), decisions
        assert {d["len"] for d in decisions} == {5}, decisions

    def test_string_censor_still_blocks(self, host_lab: Lab, gp: Govpass, kinds: list[str]) -> None:
        # The second segment holds the whole name: a per-packet string match sees it.
        with censoring(host_lab, "string"):
            blocked = run_matrix(host_lab, all_jobs(kinds, (BLOCKED,)), BLOCKED_TIMEOUT)
            assert_blocked(host_lab, "string", blocked)
            allowed = run_matrix(host_lab, all_jobs(kinds, (ALLOWED,)), PASS_TIMEOUT)
        assert_all_ok(allowed, "unlisted name with govpass through the string censor")

    def test_wire(self, host_lab: Lab, gp: Govpass, kinds: list[str]) -> None:
        """Client-side pcap: 5-byte first segment, continuous seq, good checksums, and the
        record byte-identical to what the application wrote and to what the server got."""
        server = host_lab.address("server", 4), host_lab.address("server", 6)
        with host_lab.capture("client") as ccap, host_lab.capture("server") as scap:
            results = run_matrix(host_lab, all_jobs(kinds, (BLOCKED,)), PASS_TIMEOUT)
            probes = [
                netprobe(host_lab, ["hello", BLOCKED, server[i], "443", str(host_lab.cafile)])
                for i in range(2)
            ]
        assert_all_ok(results, "clients during the capture")
        for probe in probes:
            assert probe["ok"] and probe["sni"] == BLOCKED, probe
        client_flows = hello_flows(ccap.flows())
        server_flows = by_port(hello_flows(scap.flows()))
        # every client run is one connection, Chromium may open a second one
        assert len(client_flows) >= len(results) + len(probes), [f.summary() for f in ccap.flows()]
        for flow in client_flows:
            where = flow.summary()
            assert flow.sni == BLOCKED and flow.is_client_hello, where
            assert flow.sizes[0] == 5 and len(flow.sizes) >= 2, where
            assert flow.seq_continuous and flow.retransmissions == 0, where
            assert flow.checksums_ok, (where, flow.bad_checksums)
            assert sum(flow.sizes) == flow.record_len, where
            assert server_flows[(flow.family, flow.sport)].first_record == flow.first_record
        # The probe's own bytes: what the application wrote is what went on the wire.
        sent = {bytes.fromhex(p["hello"]) for p in probes}
        wire = {f.first_record for f in client_flows}
        assert sent <= wire, "a ClientHello changed on its way to the wire"
        if "chromium" in kinds:
            # Chromium's ~2 KB hello spans two segments: reassembled whole, then split.
            big = [f for f in client_flows if f.record_len and f.record_len > 1500]
            assert {f.family for f in big} == set(FAMILIES), [f.summary() for f in client_flows]
            for flow in big:
                assert flow.sizes[0] == 5 and len(flow.sizes) >= 3, flow.summary()

    def test_packets_queued_per_connection(self, host_lab: Lab, gp: Govpass) -> None:
        """curl, Python and OpenSSL send their hello whole in one packet: the kernel
        split takes every one of them, and none reaches the queue."""
        before = gp.wait_stats(lambda s: "kernel_split" in s)  # written once per interval
        n = 24
        for i in range(0, n, 8):  # a few at a time: these must all succeed
            assert_all_ok(
                run_matrix(host_lab, one_packet_jobs(n)[i : i + 8], PASS_TIMEOUT), "connections"
            )
        after = gp.wait_stats(lambda s: s["kernel_split"] - before["kernel_split"] >= n)
        time.sleep(0.6)
        after = gp.stats()
        assert after["kernel_split"] - before["kernel_split"] == n, (before, after)
        assert after["packets"] == before["packets"], (before, after)
        assert after["splits"] == before["splits"], (before, after)
        for key in ("kernel_unsplit", "kernel_first_only", "kernel_dropped"):
            assert after[key] == 0, after
        assert after["kernel_split_state"].startswith("on"), after

    def test_stats_name_the_rules_and_the_loop(self, gp: Govpass) -> None:
        stats = gp.stats()
        assert stats["kernel_split_state"] == "on (tcx egress: eth0)", stats
        assert stats["rules"]["backend"] == "iptables-nft"
        assert stats["rules"]["prefilter"].startswith("bpf"), stats["rules"]
        assert stats["verdict_errors"] == 0  # the Rust packet loop runs


def one_packet_jobs(n: int) -> list[tuple[str, str, int]]:
    """``n`` connections of the clients whose hello fits one packet."""
    return [(("curl", "python", "openssl")[i % 3], NAMES[i % 2], FAMILIES[i % 2]) for i in range(n)]


def test_worker_path_queues_at_most_two_packets_per_connection() -> None:
    """With the kernel split off every hello takes the worker path: at most two
    packets queued per TLS connection, the split's last segment sent in the verdict
    of the packet it replaces, the first one raw, and no fail-open. (A lab of its
    own: hellos that earlier tests' blocked connections still retransmit would
    reach this new daemon's queue as records it never saw begin.)"""
    with serving_lab() as lab, running(lab, WORKERS_ONLY, name="workers") as gp:
        before = gp.wait_stats(lambda s: True)
        n = 24
        jobs = one_packet_jobs(n)
        for i in range(0, n, 8):
            assert_all_ok(run_matrix(lab, jobs[i : i + 8], PASS_TIMEOUT), "connections")
        gp.wait_stats(lambda s: s["splits"] - before["splits"] >= n)
        time.sleep(0.6)
        after = gp.stats()
    splits = after["splits"] - before["splits"]
    packets = after["packets"] - before["packets"]
    assert splits == n, (before, after)
    assert "kernel_split" not in after and after["kernel_split_state"].startswith("off"), after
    assert packets / n <= 2, f"{packets} packets queued for {n} TLS connections"
    assert after["inject_errors"] == before["inject_errors"], after
    carried = after["verdict_sent"] - before["verdict_sent"]
    assert n <= carried <= 2 * n, (before, after)
    assert after["inject_sent"] - before["inject_sent"] >= n, (before, after)
    fails = {k: n - before["fail_open"].get(k, 0) for k, n in after["fail_open"].items()}
    assert not any(fails.values()), fails


# -- the other pre-filter and the other packet loop ----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--prefilter", "conntrack", *WORKERS_ONLY],
        ["--packet-loop", "python", *WORKERS_ONLY],
        ["--inject", "raw", *WORKERS_ONLY],
    ],
    ids=["prefilter-conntrack", "packet-loop-python", "inject-raw"],
)
def test_alternative_paths_split_every_client(
    host_lab: Lab, kinds: list[str], args: list[str]
) -> None:
    """``--prefilter conntrack`` (the rules of iptables-legacy, nftables and the
    least-privilege unit), ``--packet-loop python`` (a netfilterqueue callback per
    packet) and ``--inject raw`` (no segment in a verdict, as outside the initial user
    namespace): every client passes the first-packet censor, Chromium's two-segment
    hello included, and every hello on the wire starts with 5 bytes. (The kernel
    split is off, so that every hello takes these paths.)"""
    with (
        running(host_lab, args, name=args[1]) as daemon,
        censoring(host_lab, "firstpacket"),
        host_lab.capture("client") as ccap,
    ):
        results = run_matrix(host_lab, all_jobs(kinds), PASS_TIMEOUT)
        stats = daemon.stats()
    assert_all_ok(results, f"{' '.join(args)} through the firstpacket censor")
    if args[0] == "--prefilter":
        assert stats["rules"]["prefilter"] == "conntrack"
    elif args[0] == "--inject":
        assert stats["verdict_sent"] == 0 and stats["inject_sent"] >= 2 * len(results), stats
    else:
        assert "verdict_errors" not in stats  # counted by the Rust loop only
    flows = hello_flows(ccap.flows())
    assert len(flows) >= len(results), [f.summary() for f in ccap.flows()]
    for flow in flows:
        assert flow.sizes[0] == 5 and flow.seq_continuous, flow.summary()


# -- split positions that defeat the string censor ------------------------------------------


@pytest.mark.parametrize("pos", ["midsld", "sni+1"])
def test_split_pos_passes_string_and_firstpacket(host_lab: Lab, kinds: list[str], pos: str) -> None:
    with running(host_lab, ["--split-pos", pos], name=pos):
        for censor in ("string", "firstpacket"):
            with censoring(host_lab, censor):
                results = run_matrix(host_lab, all_jobs(kinds), PASS_TIMEOUT)
            assert_all_ok(results, f"--split-pos {pos} through the {censor} censor")


def test_wire_boundaries_at_configured_offsets(host_lab: Lab, kinds: list[str]) -> None:
    """``--split-chunk 3 --split-pos sni,midsld``: cuts at 3, at the name and in the
    middle of its second-level label, exactly; nothing else but size limits."""
    with (
        running(host_lab, ["--split-chunk", "3", "--split-pos", "sni,midsld"], name="cuts"),
        host_lab.capture("client") as ccap,
        host_lab.capture("server") as scap,
    ):
        results = run_matrix(host_lab, all_jobs(kinds, (BLOCKED,)), PASS_TIMEOUT)
    assert_all_ok(results, "clients with --split-chunk 3 --split-pos sni,midsld")
    server_flows = by_port(hello_flows(scap.flows()))
    flows = hello_flows(ccap.flows())
    assert len(flows) >= len(results), [f.summary() for f in ccap.flows()]
    sld = BLOCKED.split(".")[0]  # "blocked": the second-level label of blocked.example
    for flow in flows:
        assert flow.first_record is not None and flow.record_len is not None
        at = sni_offset(flow.first_record, BLOCKED)
        expected = [3, at, at + len(sld) // 2]
        cuts = boundaries(flow)
        where = f"{flow.summary()} cuts={cuts} expected={expected}"
        assert set(expected) <= set(cuts), where
        # Any other cut only where a piece reached the largest segment size (the MSS).
        limit = max(flow.sizes)
        for seg in flow.segments[:-1]:
            assert seg.rel_seq + seg.length in expected or seg.length == limit, where
        if flow.record_len < 1400:
            assert flow.sizes == [3, at - 3, len(sld) // 2, flow.record_len - expected[2]], where
        assert flow.seq_continuous and flow.retransmissions == 0 and flow.checksums_ok, where
        assert server_flows[(flow.family, flow.sport)].first_record == flow.first_record
