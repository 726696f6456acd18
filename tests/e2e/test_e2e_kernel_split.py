"""The kernel split (``--kernel-split auto``, the default): a tc egress (tcx) eBPF
program, attached by the daemon to every interface its rules cover, cuts a
ClientHello record that is whole in one packet into ``split-chunk`` bytes and the
rest; the pre-filter leaves those packets out of NFQUEUE while the gate is on.

What is checked here, for real, in lab namespaces: the single-packet clients (curl,
OpenSSL, Python) pass the first-packet censor with no packet queued; the wire shows
``[5, rest]`` with continuous sequence numbers and right checksums (host mode, router
mode with full checksums and with CHECKSUM_PARTIAL packets); Chromium's two-packet
hello still goes to the workers; the settings that rule the kernel split out hand
every hello to the workers; interfaces that appear and go away while the daemon runs;
and that the program goes away with the daemon, SIGKILL included.

Which programs sit on an interface's tcx egress hook is asked from the kernel itself
(``BPF_PROG_QUERY``, see :func:`tcx_egress_programs`), not taken from the daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

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
    by_port,
    censoring,
    govpass_cli,
    govpass_rule_lines,
    hello_flows,
    mangle_rules,
    run_matrix,
    running,
    tcx_egress_programs,
)
from govpass.lab import FlowReport, Lab

pytestmark = pytest.mark.netns

CHUNK = 5  # the default split-chunk: the kernel split's first segment
PROGRAM = "govpass_split"  # the name the daemon loads its tc program under
ONE_PACKET = ("curl", "openssl", "python")  # clients whose hello leaves in one packet
ARPHRD_IPGRE = 778  # a link type the program does not support (GRE)


# -- helpers ---------------------------------------------------------------------------------


def one_packet_jobs(kinds: Sequence[str], names: Sequence[str] = (BLOCKED,)) -> list[Job]:
    """Every single-packet client installed here, to ``names``, over IPv4 and IPv6."""
    return [(k, n, f) for k in ONE_PACKET if k in kinds for n in names for f in FAMILIES]


def assert_all_ok(results: dict[Job, tuple[bool, str]], what: str) -> None:
    failed = {job: res for job, res in results.items() if not res[0]}
    assert not failed, f"{what}: {failed}"


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


def counters(stats: dict[str, Any]) -> dict[str, Any]:
    """The counters a failure message needs (the whole stats dump is long)."""
    keys = ("kernel_split", "kernel_unsplit", "kernel_first_only", "kernel_dropped",
            "kernel_split_state", "packets", "flows", "splits", "fail_open")  # fmt: skip
    return {k: stats.get(k) for k in keys}


def ready_stats(gp: Govpass) -> dict[str, Any]:
    """Stats once the daemon has written its kernel split state (first stats interval)."""
    stats = gp.wait_stats(lambda s: "kernel_split_state" in s, timeout=10.0)
    assert "kernel_split_state" in stats, f"no kernel split state in the stats: {stats}"
    return stats


def settled_stats(gp: Govpass, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Stats once ``ready`` holds, read again a little later: the workers write their
    counters every 0.25 s and the daemon the kernel's every 0.5 s, so a packet that
    should not have been counted would show by then."""
    gp.wait_stats(ready, timeout=10.0)
    time.sleep(0.8)
    return gp.stats()


def wait_log(gp: Govpass, text: str, timeout: float = 5.0, start: int = 0) -> str:
    """The daemon log from ``start`` on, once it holds ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        log = gp.log()
        if text in log[start:]:
            return log[start:]
        assert time.monotonic() < deadline, f"{text!r} not in the log within {timeout}s: {log}"
        time.sleep(0.05)


def kernel_lines(log: str) -> list[str]:
    """The daemon's kernel split log lines, without their time stamps."""
    return [ln.split("govpass: ", 1)[-1] for ln in log.splitlines() if "kernel split:" in ln]


def bpf_link_fds(pid: int | str) -> list[str]:
    """The bpf link descriptors process ``pid`` holds."""
    out = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:bpf_link":
                    out.append(fd)
    return out


def bpf_link_holders() -> list[str]:
    """Every process that holds a bpf link descriptor: "pid (comm): fd, ...", so a
    program that stays attached names who keeps it."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if fds := bpf_link_fds(pid):
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                out.append(f"{pid} ({comm}): {', '.join(fds)}")
    return out


def wait_tcx(lab: Lab, role: str, iface: str, want: list[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := tcx_egress_programs(lab, role, iface)) != want:
        assert time.monotonic() < deadline, (
            f"tcx egress of {role}/{iface}: {got}, not {want}; bpf links held by "
            f"{bpf_link_holders() or 'no process'}"
        )
        time.sleep(0.1)


def assert_kernel_split_flows(
    flows: list[FlowReport], server: dict[tuple[int, int], FlowReport], expected: int
) -> None:
    """Every hello went out as ``[CHUNK, rest]``: in sequence, nothing sent twice, right
    checksums, and the reassembled record is byte for byte what the server got."""
    assert len(flows) == expected, [f.summary() for f in flows]
    for flow in flows:
        where = flow.summary()
        assert flow.sni in NAMES and flow.is_client_hello, where
        assert flow.record_len is not None and flow.record_len > CHUNK, where
        assert flow.sizes == [CHUNK, flow.record_len - CHUNK], where
        assert flow.seq_continuous and flow.retransmissions == 0, where
        assert flow.checksums_ok, (where, flow.bad_checksums)
        got = server.get((flow.family, flow.sport))
        assert got is not None and got.first_record == flow.first_record, where


def assert_unsplit_flows(flows: list[FlowReport], expected: int) -> None:
    """Every hello went out whole, one segment (no program on the way)."""
    assert len(flows) == expected, [f.summary() for f in flows]
    for flow in flows:
        assert flow.sizes == [flow.record_len], flow.summary()
        assert flow.checksums_ok, (flow.summary(), flow.bad_checksums)


def blocked_through_censor(
    lab: Lab, gp: Govpass, jobs: list[Job], role: str = "client"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs ``jobs`` through the first-packet censor (they must all pass); stats before
    and after, once every hello has been counted by the kernel split or a worker."""
    before = ready_stats(gp)
    with censoring(lab, "firstpacket"):
        results = run_matrix(lab, jobs, PASS_TIMEOUT, role=role)
        decisions = lab.censor_decisions()
    assert_all_ok(results, "through the firstpacket censor")
    assert decisions and all(d["verdict"] == "allow" for d in decisions), decisions
    after = settled_stats(
        gp,
        lambda s: delta(s, before, "kernel_split") + delta(s, before, "splits") >= len(jobs),
    )
    return before, after


# -- tun devices of a link type of choice ------------------------------------------------------

_MAKE_TUN = r"""
import fcntl, os, struct, sys
TUNSETIFF, TUNSETPERSIST, TUNSETLINK = 0x400454CA, 0x400454CB, 0x400454CD
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))
fcntl.ioctl(fd, TUNSETLINK, int(sys.argv[2]))
fcntl.ioctl(fd, TUNSETPERSIST, 1)
os.close(fd)
"""


def add_link_of_type(lab: Lab, role: str, name: str, arphrd: int) -> None:
    """A persistent tun device whose link type is ``arphrd`` appears in ``role``.

    This kernel has no gre/ip6gre/vti/dummy drivers; a tun device can take any link
    type (TUNSETLINK). The type is set in another lab namespace (the server's) and the
    device then moved into ``role``'s, so that it appears there with that type from the
    first message (set in place, the daemon could see it as type "none" first)."""
    lab.exec("server", [sys.executable, "-c", _MAKE_TUN, name, str(arphrd)])
    lab.exec("server", ["ip", "link", "set", name, "netns", lab.ns(role)])
    kind = lab.exec(role, ["cat", f"/sys/class/net/{name}/type"]).stdout.strip()
    assert kind == str(arphrd), f"{name} has link type {kind}, not {arphrd}"


def delete_link(lab: Lab, role: str, name: str) -> None:
    for where in (role, "server"):
        lab.exec(where, ["ip", "link", "del", name], check=False)


# -- baseline: no govpass ----------------------------------------------------------------------


def test_baseline_single_packet_clients_are_blocked(host_lab: Lab, kinds: list[str]) -> None:
    """Without govpass the first-packet censor reads the name from the one-packet hello
    of every client used below and kills the connection, in both families."""
    assert govpass_rule_lines(host_lab, "client") == []
    with censoring(host_lab, "firstpacket"):
        results = run_matrix(host_lab, one_packet_jobs(kinds), BLOCKED_TIMEOUT)
        decisions = host_lab.censor_decisions()
    assert_blocked(host_lab, "firstpacket", results)
    kills = {d["family"] for d in decisions if d["sni"] == BLOCKED and d["verdict"] == "kill"}
    assert kills == set(FAMILIES), decisions


# -- host mode, the defaults -------------------------------------------------------------------


@pytest.fixture(scope="class")
def gp(host_lab: Lab) -> Iterator[Govpass]:
    """One default daemon (kernel split auto) for the tests of a class."""
    with running(host_lab, name="ksplit") as daemon:
        ready_stats(daemon)
        yield daemon


class TestHostDefaults:
    """``govpass run`` with the defaults in the client's namespace (eth0, lo)."""

    def test_attached_to_the_covered_interface_only(self, host_lab: Lab, gp: Govpass) -> None:
        """The program sits on eth0's tcx egress (and not on lo), the log and the stats
        say so, and nothing of it has gone wrong yet."""
        assert tcx_egress_programs(host_lab, "client", "eth0") == [PROGRAM]
        assert tcx_egress_programs(host_lab, "client", "lo") == []
        assert "kernel split: on (tcx egress: eth0)" in kernel_lines(gp.log()), gp.log()
        stats = gp.stats()
        assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
        for key in ("kernel_unsplit", "kernel_first_only", "kernel_dropped"):
            assert stats[key] == 0, counters(stats)

    def test_single_packet_hellos_are_split_in_the_kernel(
        self, host_lab: Lab, gp: Govpass, kinds: list[str]
    ) -> None:
        """curl, OpenSSL and Python over IPv4 and IPv6 pass the first-packet censor (it
        saw 5-byte first packets); on the client's wire each hello is [5, rest], in
        sequence, with right checksums, and identical to what the server received; the
        kernel split counted every one and the workers saw none of them."""
        jobs = one_packet_jobs(kinds)
        before = ready_stats(gp)
        with (
            censoring(host_lab, "firstpacket"),
            host_lab.capture("client") as ccap,
            host_lab.capture("server") as scap,
        ):
            results = run_matrix(host_lab, jobs, PASS_TIMEOUT)
            decisions = host_lab.censor_decisions()
        assert_all_ok(results, "one-packet clients through the firstpacket censor")
        assert decisions and all(d["verdict"] == "allow" for d in decisions), decisions
        assert {d["len"] for d in decisions} == {CHUNK}, decisions
        after = settled_stats(gp, lambda s: delta(s, before, "kernel_split") >= len(jobs))
        assert delta(after, before, "kernel_split") >= len(jobs), (counters(before), after)
        for key in ("packets", "flows", "splits"):  # the workers saw none of them
            assert delta(after, before, key) == 0, (key, counters(before), counters(after))
        for key in ("kernel_unsplit", "kernel_first_only", "kernel_dropped"):
            assert delta(after, before, key) == 0, (key, counters(before), counters(after))
        flows = hello_flows(ccap.flows())
        assert {(f.family, f.sni) for f in flows} == {(f, BLOCKED) for f in FAMILIES}
        assert_kernel_split_flows(flows, by_port(hello_flows(scap.flows())), len(jobs))

    def test_two_packet_hello_still_goes_to_the_workers(
        self, host_lab: Lab, gp: Govpass, kinds: list[str]
    ) -> None:
        """Chromium's ~2 KB hello spans two packets: no whole record for the program,
        so the workers split it (their counters rise) while the kernel split stays on,
        and on the wire it starts with a 5-byte segment."""
        if "chromium" not in kinds:
            pytest.skip("chromium is not installed here (LAB_CHROMIUM=0)")
        jobs: list[Job] = [("chromium", BLOCKED, f) for f in FAMILIES]
        before = ready_stats(gp)
        with censoring(host_lab, "firstpacket"), host_lab.capture("client") as ccap:
            results = run_matrix(host_lab, jobs, PASS_TIMEOUT)
        assert_all_ok(results, "chromium through the firstpacket censor")
        after = settled_stats(gp, lambda s: delta(s, before, "splits") >= len(jobs))
        assert delta(after, before, "splits") >= len(jobs), (counters(before), counters(after))
        assert delta(after, before, "packets") >= 2 * len(jobs), (before, counters(after))
        assert after["kernel_split_state"] == "on (tcx egress: eth0)", counters(after)
        big = [f for f in hello_flows(ccap.flows()) if f.record_len and f.record_len > 1500]
        assert {f.family for f in big} == set(FAMILIES), [f.summary() for f in ccap.flows()]
        for flow in big:
            assert flow.sizes[0] == CHUNK and len(flow.sizes) >= 3, flow.summary()
            assert flow.seq_continuous and flow.checksums_ok, flow.summary()

    def test_an_interface_that_appears_is_attached_and_detached(
        self, host_lab: Lab, gp: Govpass
    ) -> None:
        """A veth made while the daemon runs gets the program within seconds (log,
        stats, the kernel's own list); deleted, it is detached. The gate stays on all
        along, and a blocked connection afterwards is still split in the kernel."""
        name, peer = "ksnew0", "ksnew1"
        mark = len(gp.log())
        host_lab.exec(
            "client",
            ["ip", "link", "add", name, "type", "veth", "peer", "name", peer,
             "netns", host_lab.ns("censor")],
        )  # fmt: skip
        try:
            wait_log(gp, f"kernel split: attached to {name}", start=mark)
            assert tcx_egress_programs(host_lab, "client", name) == [PROGRAM]
            state = f"on (tcx egress: eth0, {name})"
            stats = gp.wait_stats(lambda s: s["kernel_split_state"] == state)
            assert stats["kernel_split_state"] == state, counters(stats)
        finally:
            host_lab.exec("client", ["ip", "link", "del", name], check=False)
        wait_log(gp, f"kernel split: detached from {name}", start=mark)
        stats = gp.wait_stats(lambda s: s["kernel_split_state"] == "on (tcx egress: eth0)")
        assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
        lines = kernel_lines(gp.log()[mark:])
        assert lines == [f"kernel split: attached to {name}", f"kernel split: detached from {name}"]
        assert tcx_egress_programs(host_lab, "client", "eth0") == [PROGRAM]
        before, after = blocked_through_censor(host_lab, gp, [("curl", BLOCKED, 4)])
        assert delta(after, before, "kernel_split") >= 1, (counters(before), counters(after))
        assert delta(after, before, "packets") == 0, (counters(before), counters(after))

    def test_a_tunnel_that_appears_is_left_out_and_the_gate_comes_back(
        self, host_lab: Lab, gp: Govpass
    ) -> None:
        """A GRE-type tunnel appears (not an interface the program can handle): the
        daemon's tunnel detection (every 5 s) excludes it from the rules, so the kernel
        split is on again over eth0 without it, and splits the next blocked hello. If the
        interface watcher saw it first, the gate was off meanwhile, naming it."""
        name = "ksgre1"
        mark = len(gp.log())
        add_link_of_type(host_lab, "client", name, ARPHRD_IPGRE)
        try:
            log = wait_log(gp, f"interfaces changed (now excluded: {name}", 10.0, mark)
            stats = gp.wait_stats(lambda s: s["kernel_split_state"] == "on (tcx egress: eth0)")
            assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
            for line in kernel_lines(log):
                assert line.startswith("kernel split: on (tcx egress: eth0)") or (
                    f"({name}: link type {ARPHRD_IPGRE} not supported)" in line
                ), log
            assert tcx_egress_programs(host_lab, "client", name) == []
            before, after = blocked_through_censor(host_lab, gp, [("python", BLOCKED, 6)])
            assert delta(after, before, "kernel_split") >= 1, (counters(before), after)
            assert delta(after, before, "splits") == 0, (counters(before), counters(after))
        finally:
            delete_link(host_lab, "client", name)
        wait_log(gp, "removed ['ksgre1']", 10.0, mark)
        assert gp.stats()["kernel_split_state"] == "on (tcx egress: eth0)"


# -- host mode: the workers instead ------------------------------------------------------------


def test_kernel_split_off_leaves_every_hello_to_the_workers(
    host_lab: Lab, kinds: list[str]
) -> None:
    """``--kernel-split off``: no program on eth0, the same one-packet clients pass the
    first-packet censor because the workers split them (splits and queued packets
    rise, no kernel counter at all), still [5, rest] on the wire."""
    jobs = one_packet_jobs(kinds)
    with running(host_lab, WORKERS_ONLY, name="ks-off") as gp:
        assert "kernel split: off (kernel-split is off)" in gp.log(), gp.log()
        assert tcx_egress_programs(host_lab, "client", "eth0") == []
        with host_lab.capture("client") as ccap, host_lab.capture("server") as scap:
            before, after = blocked_through_censor(host_lab, gp, jobs)
    assert delta(after, before, "splits") >= len(jobs), (counters(before), counters(after))
    assert delta(after, before, "packets") >= len(jobs), (counters(before), counters(after))
    assert "kernel_split" not in after, counters(after)
    assert after["kernel_split_state"].startswith("off (kernel-split is off)"), counters(after)
    flows = hello_flows(ccap.flows())
    assert_kernel_split_flows(flows, by_port(hello_flows(scap.flows())), len(jobs))


def test_split_pos_rules_the_kernel_split_out(host_lab: Lab, kinds: list[str]) -> None:
    """``--split-pos midsld`` needs the engine: the log says the kernel split is off and
    why, nothing is attached, and the string censor (which sees the whole name in any
    packet but the first) is passed because the workers cut inside the name."""
    jobs = one_packet_jobs(kinds)
    with running(host_lab, ["--split-pos", "midsld"], name="ks-midsld") as gp:
        reason = "kernel split: off (split-pos is set (cut positions need the engine))"
        assert reason in kernel_lines(gp.log()), gp.log()
        assert tcx_egress_programs(host_lab, "client", "eth0") == []
        before = ready_stats(gp)
        with censoring(host_lab, "string"):
            results = run_matrix(host_lab, jobs, PASS_TIMEOUT)
        after = settled_stats(gp, lambda s: delta(s, before, "splits") >= len(jobs))
    assert_all_ok(results, "--split-pos midsld through the string censor")
    assert delta(after, before, "splits") >= len(jobs), (counters(before), counters(after))
    assert "kernel_split" not in after, counters(after)
    assert after["kernel_split_state"].startswith("off (split-pos is set"), counters(after)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--prefilter", "conntrack"], "prefilter conntrack (the kernel split needs the bpf"),
        (["--split-chunk", "65"], "split-chunk 65 (the kernel split takes 1..64)"),
        (["--hosts", BLOCKED], "host lists or IP sets choose the flows"),
    ],
    ids=["prefilter-conntrack", "split-chunk-65", "hosts"],
)
def test_settings_that_rule_it_out_hand_hellos_to_the_workers(
    host_lab: Lab, args: list[str], reason: str
) -> None:
    """Each of these settings turns the kernel split off with its reason in the log
    and the stats; a blocked one-packet hello is then split by a worker."""
    with running(host_lab, args, name=f"ks-{args[0][2:]}") as gp:
        assert f"kernel split: off ({reason}" in gp.log(), gp.log()
        assert tcx_egress_programs(host_lab, "client", "eth0") == []
        before, after = blocked_through_censor(host_lab, gp, [("curl", BLOCKED, 4)])
    assert delta(after, before, "splits") >= 1, (counters(before), counters(after))
    assert "kernel_split" not in after and reason in after["kernel_split_state"], counters(after)


def test_unsupported_link_type_turns_the_gate_off_until_it_goes(host_lab: Lab) -> None:
    """An interface the rules cover but the program cannot handle (link type GRE,
    matched by ``--iface`` so that the tunnel detection leaves it covered; a pattern,
    as an interface that does not exist yet must be named) appears: the
    gate goes off naming it and blocked hellos are split by the workers (the kernel
    split counts none); once it is deleted the gate is on again and the kernel split
    takes the next hellos."""
    name = "ksgre0"
    jobs: list[Job] = [("curl", BLOCKED, 4), ("python", BLOCKED, 6)]
    with running(host_lab, ["--iface", "eth0,ksgre+"], name="ks-gre") as gp:
        stats = ready_stats(gp)
        assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
        mark = len(gp.log())
        add_link_of_type(host_lab, "client", name, ARPHRD_IPGRE)
        try:
            off = f"kernel split: off ({name}: link type {ARPHRD_IPGRE} not supported)"
            wait_log(gp, off, start=mark)
            stats = gp.wait_stats(lambda s: s["kernel_split_state"].startswith("off"))
            assert name in stats["kernel_split_state"], counters(stats)
            assert tcx_egress_programs(host_lab, "client", "eth0") == [PROGRAM]
            with host_lab.capture("client") as ccap:
                before, after = blocked_through_censor(host_lab, gp, jobs)
            assert delta(after, before, "splits") >= len(jobs), (counters(before), after)
            assert delta(after, before, "packets") >= len(jobs), (counters(before), after)
            assert delta(after, before, "kernel_split") == 0, (counters(before), after)
            flows = hello_flows(ccap.flows())
            assert len(flows) == len(jobs), [f.summary() for f in ccap.flows()]
            for flow in flows:
                assert flow.sizes[0] == CHUNK and flow.checksums_ok, flow.summary()
        finally:
            delete_link(host_lab, "client", name)
        wait_log(gp, "kernel split: on (tcx egress: eth0)", start=mark)
        stats = gp.wait_stats(lambda s: s["kernel_split_state"] == "on (tcx egress: eth0)")
        assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
        before, after = blocked_through_censor(host_lab, gp, jobs)
    assert delta(after, before, "kernel_split") >= len(jobs), (counters(before), after)
    assert delta(after, before, "splits") == 0, (counters(before), counters(after))
    assert delta(after, before, "packets") == 0, (counters(before), counters(after))


# -- the program's life is the daemon's ----------------------------------------------------


def test_sigkill_takes_the_program_with_the_daemon(host_lab: Lab) -> None:
    """SIGKILL of the daemon: its bpf links close with it, so eth0 carries no program;
    the rules it left behind let traffic through (queue bypass), and a blocked
    name's hello leaves whole. ``govpass rules remove`` cleans up; the next daemon
    attaches again and splits."""
    lab = host_lab
    gp = Govpass(lab, "client", [], name="ks-sigkill").start()
    try:
        assert ready_stats(gp)["kernel_split_state"] == "on (tcx egress: eth0)"
        assert tcx_egress_programs(lab, "client", "eth0") == [PROGRAM]
        workers = gp.workers()
        gp.stop(signal.SIGKILL)  # `kill -9 PID`: no clean-up code runs
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{w}").exists() for w in workers):
            assert time.monotonic() < deadline, "workers outlived the daemon"
            time.sleep(0.05)
        wait_tcx(lab, "client", "eth0", [])
        assert mangle_rules(lab, "client"), "the rules should outlive a SIGKILL"
        with lab.capture("client") as ccap:
            results = run_matrix(
                lab, [("curl", ALLOWED, 4), ("python", BLOCKED, 4), ("curl", BLOCKED, 6)],
                PASS_TIMEOUT,
            )  # fmt: skip
        assert_all_ok(results, "connections after the SIGKILL")
        assert_unsplit_flows(hello_flows(ccap.flows()), len(results))
    finally:
        gp.stop(signal.SIGKILL)  # a no-op once killed; never leave it in the shared lab
        proc = govpass_cli(lab, "client", ["rules", "remove"])
    assert proc.returncode == 0 and proc.stdout.startswith("removed:"), proc
    assert govpass_rule_lines(lab, "client") == []
    with (
        running(lab, name="ks-after-kill") as again,
        lab.capture("client") as ccap,
        lab.capture("server") as scap,
    ):
        assert tcx_egress_programs(lab, "client", "eth0") == [PROGRAM]
        before = ready_stats(again)
        ok, detail = lab.client("python", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, detail
        after = settled_stats(again, lambda s: delta(s, before, "kernel_split") >= 1)
    assert delta(after, before, "kernel_split") >= 1, counters(after)
    assert_kernel_split_flows(hello_flows(ccap.flows()), by_port(hello_flows(scap.flows())), 1)


def restart_worker(gp: Govpass) -> int:
    """Kills the daemon's worker; the pid of the one it starts instead."""
    (old,) = gp.workers()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not (new := [w for w in gp.workers() if w != old]):
        assert time.monotonic() < deadline, f"no worker restarted: {gp.log()[-1500:]}"
        time.sleep(0.05)
    wait_log(gp, "worker 0 exited (code -9); restarting")
    # The new pid shows as soon as the daemon forked, before the child has closed
    # the links it inherited (its at-fork hook): a worker stopped in that instant
    # would keep the program attached for as long as it stays stopped.
    while links := bpf_link_fds(new[0]):
        assert time.monotonic() < deadline, f"restarted worker {new[0]} keeps bpf links {links}"
        time.sleep(0.01)
    return new[0]


@pytest.mark.parametrize(
    "restart",
    [False, True],
    ids=["workers-as-started", "after-a-worker-restart"],
)
def test_an_interface_that_leaves_the_rules_is_detached(host_lab: Lab, restart: bool) -> None:
    """An attached interface renamed into an ``--exclude-iface`` pattern leaves the
    covered set: the daemon logs that it detached, and the kernel must agree (no
    program left on an interface govpass was told to leave alone) — also when a
    worker was restarted in between (the daemon restarts a worker that died)."""
    lab = host_lab
    with running(lab, ["--exclude-iface", "ksx+"], name=f"ks-rename-{restart}") as gp:
        ready_stats(gp)
        lab.exec(
            "client",
            ["ip", "link", "add", "ksa0", "type", "veth", "peer", "name", "ksa1",
             "netns", lab.ns("censor")],
        )  # fmt: skip
        try:
            wait_log(gp, "kernel split: attached to ksa0")
            if restart:
                restart_worker(gp)
            lab.exec("client", ["ip", "link", "set", "ksa0", "name", "ksx0"])
            wait_log(gp, "kernel split: detached from ksa0")
            stats = gp.wait_stats(lambda s: s["kernel_split_state"] == "on (tcx egress: eth0)")
            assert stats["kernel_split_state"] == "on (tcx egress: eth0)", counters(stats)
            wait_tcx(lab, "client", "ksx0", [], timeout=2.0)
        finally:
            lab.exec("client", ["ip", "link", "del", "ksx0"], check=False)
            lab.exec("client", ["ip", "link", "del", "ksa0"], check=False)


def test_sigkill_takes_the_program_even_with_a_restarted_worker(host_lab: Lab) -> None:
    """The program must go with the daemon also when a worker it restarted outlives
    it for a while (here: stopped when the daemon is killed; a worker only notices
    its parent's death on its next tick)."""
    lab = host_lab
    # The watchdog off: the stopped worker must stay as it is.
    gp = Govpass(lab, "client", ["--worker-timeout", "0"], name="ks-kill-restarted").start()
    worker = 0
    try:
        assert ready_stats(gp)["kernel_split_state"] == "on (tcx egress: eth0)"
        worker = restart_worker(gp)
        os.kill(worker, signal.SIGSTOP)
        assert gp.pid is not None
        os.kill(gp.pid, signal.SIGKILL)  # the daemon alone: the lab would kill its group
        gp.popen().wait(10)
        assert Path(f"/proc/{worker}").exists()
        wait_tcx(lab, "client", "eth0", [], timeout=2.0)
    finally:
        if worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        gp.stop(signal.SIGKILL)
        govpass_cli(lab, "client", ["rules", "remove"])
        wait_tcx(lab, "client", "eth0", [])
    assert govpass_rule_lines(lab, "client") == []


def test_an_ifb_device_is_left_alone_and_the_log_says_why(host_lab: Lab) -> None:
    """ifb devices carry another interface's redirected ingress (shapers): no program
    there, down or up, and the log names the device once."""
    lab = host_lab
    lab.exec("client", ["ip", "link", "add", "ifb7", "type", "ifb"])
    try:
        with running(lab, name="ks-ifb") as gp:
            assert ready_stats(gp)["kernel_split_state"] == "on (tcx egress: eth0)"
            lab.exec("client", ["ip", "link", "set", "ifb7", "up"])
            time.sleep(1.0)  # the link watcher's turn
            assert tcx_egress_programs(lab, "client", "ifb7") == []
            assert tcx_egress_programs(lab, "client", "eth0") == [PROGRAM]
            assert gp.log().count("kernel split: leaves ifb7 alone (ifb devices") == 1, gp.log()
    finally:
        lab.exec("client", ["ip", "link", "del", "ifb7"], check=False)


def test_sigterm_detaches_and_removes_everything(host_lab: Lab) -> None:
    """SIGTERM: the daemon turns the gate off, detaches, removes every rule (checked
    by ``running``), and a hello then leaves whole."""
    lab = host_lab
    with running(lab, name="ks-sigterm") as gp:
        assert tcx_egress_programs(lab, "client", "eth0") == [PROGRAM]
        before = ready_stats(gp)
        ok, detail = lab.client("curl", BLOCKED, 6, timeout=PASS_TIMEOUT)
        assert ok, detail
        after = settled_stats(gp, lambda s: delta(s, before, "kernel_split") >= 1)
        assert delta(after, before, "kernel_split") >= 1, counters(after)
    assert "kernel split: off (stopped)" in gp.log(), gp.log()[-2000:]
    assert tcx_egress_programs(lab, "client", "eth0") == []
    with lab.capture("client") as ccap:
        results = run_matrix(lab, [("curl", BLOCKED, 4), ("openssl", BLOCKED, 6)], PASS_TIMEOUT)
    assert_all_ok(results, "connections after the SIGTERM")
    assert_unsplit_flows(hello_flows(ccap.flows()), len(results))


# -- router mode -------------------------------------------------------------------------------


def tx_checksum_offload(lab: Lab, role: str, iface: str) -> bool:
    out = lab.exec(role, ["ethtool", "-k", iface]).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("tx-checksumming:"))
    return line.split()[1] == "on"


@pytest.mark.parametrize("client_tx", ["off", "on"], ids=["full-checksums", "checksum-partial"])
def test_router_mode_splits_forwarded_hellos(
    router_lab: Lab, kinds: list[str], client_tx: str
) -> None:
    """Router mode on the gateway's WAN side: forwarded one-packet hellos pass the
    first-packet censor, split in the kernel only (no packet queued), [5, rest] with
    valid checksums on the gateway's WAN wire and at the server.

    ``full-checksums``: the lab's client computes its checksums (no offload), so the
    program gets packets with final checksums and must apply the differences itself.
    ``checksum-partial``: the client's eth0 transmit checksum offload is turned on,
    its packets leave as CHECKSUM_PARTIAL (the client's capture shows unfinished
    checksums) and reach the program that way on the gateway; the checksums finished
    after it must be right (the server's capture, where each is final)."""
    lab = router_lab
    wan = lab.iface("gateway")
    jobs = one_packet_jobs(kinds, NAMES)
    lab.exec("client", ["ethtool", "-K", "eth0", "tx", client_tx])
    try:
        assert tx_checksum_offload(lab, "client", "eth0") == (client_tx == "on")
        with running(lab, ["--mode", "router", "--iface", wan], role="gateway", name="ks") as gp:
            assert tcx_egress_programs(lab, "gateway", wan) == [PROGRAM]
            assert tcx_egress_programs(lab, "gateway", "lan0") == []
            with (
                lab.capture("client") as ccap,
                lab.capture("gateway") as gcap,
                lab.capture("server") as scap,
            ):
                before, after = blocked_through_censor(lab, gp, jobs)
    finally:
        lab.exec("client", ["ethtool", "-K", "eth0", "tx", "off"], check=False)
    assert govpass_rule_lines(lab, "client") == []  # nothing of govpass on the client
    assert after["kernel_split_state"] == f"on (tcx egress: {wan})", counters(after)
    assert delta(after, before, "kernel_split") >= len(jobs), (counters(before), after)
    for key in ("packets", "flows", "splits", "kernel_unsplit", "kernel_dropped"):
        assert delta(after, before, key) == 0, (key, counters(before), counters(after))
    assert delta(after, before, "kernel_first_only") == 0, (counters(before), after)
    client_flows = hello_flows(ccap.flows())
    assert len(client_flows) == len(jobs), [f.summary() for f in ccap.flows()]
    for flow in client_flows:
        assert flow.sizes == [flow.record_len], flow.summary()  # whole from the client
        statuses = {s.tcp_checksum for s in flow.segments}
        assert statuses == ({"offload"} if client_tx == "on" else {"ok"}), flow.summary()
    server = by_port(hello_flows(scap.flows()))
    assert_kernel_split_flows(hello_flows(gcap.flows()), server, len(jobs))
    assert_kernel_split_flows(list(server.values()), server, len(jobs))
