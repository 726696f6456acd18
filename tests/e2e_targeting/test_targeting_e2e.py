"""Targeting end to end: the daemon in the client namespace, the firstpacket censor
blocking only blocked.example.

* list mode splits only listed names (the client pcap shows the unlisted hello in one
  segment) and both names work;
* auto mode learns blocked.example after the configured failures, and it then works;
* a list edit is picked up without a restart, a broken edit keeps the old list;
* SIGHUP re-reads a list whose change the file watcher cannot see.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from govpass.lab import Lab
from targeting_support import ALLOWED, BLOCKED, FAIL_TIMEOUT, curl, running, wait_until

pytestmark = pytest.mark.netns


def test_list_mode_splits_only_listed_names(lab: Lab) -> None:
    with running(lab, ["--hosts", BLOCKED]) as gp, lab.capture("client") as cap:
        for family in (4, 6):
            assert curl(lab, BLOCKED, family), f"listed name, IPv{family}: {gp.log()[-2000:]}"
            assert curl(lab, ALLOWED, family), f"unlisted name, IPv{family}"
    flows = [f for f in cap.flows() if f.syn_seen and f.complete]
    by_name: dict[str | None, list] = {}
    for flow in flows:
        by_name.setdefault(flow.sni, []).append(flow)
    assert len(by_name.get(BLOCKED, [])) == 2, [f.summary() for f in flows]
    assert len(by_name.get(ALLOWED, [])) == 2, [f.summary() for f in flows]
    for flow in by_name[BLOCKED]:
        assert flow.sizes[0] == 5 and len(flow.sizes) >= 2, flow.summary()
        assert sum(flow.sizes) == flow.record_len and flow.seq_continuous, flow.summary()
    for flow in by_name[ALLOWED]:
        # Not listed: the ClientHello went out as the client wrote it, in one segment.
        assert flow.sizes == [flow.record_len], flow.summary()
    assert "profiles: listed: split (1 hosts); other: pass" in gp.log(), gp.log()


def test_auto_mode_learns_a_blocked_name(lab: Lab) -> None:
    auto = lab.workdir / "auto-hosts.txt"
    args = ["--hostlist-auto", str(auto), "--auto-fail-threshold", "2"]
    with running(lab, args) as gp:
        assert curl(lab, ALLOWED), "an unlisted name that works"
        for attempt in (1, 2):
            assert not curl(lab, BLOCKED, timeout=FAIL_TIMEOUT), f"attempt {attempt} passed"
        wait_until(
            f"{BLOCKED} in {auto}",
            lambda: auto.exists() and BLOCKED in auto.read_text(),
        )
        gp.wait_log(f"auto: learned {BLOCKED}")
        gp.wait_log("lists reloaded (changed)")
        assert curl(lab, BLOCKED), f"learned name still blocked: {gp.log()[-3000:]}"
        assert curl(lab, ALLOWED)
        lines = auto.read_text().splitlines()
        assert lines[0].startswith("#") and [ln for ln in lines if not ln.startswith("#")] == [
            BLOCKED
        ], lines
        wait_until(
            "stats with the learned name split",
            lambda: gp.stats().get("auto_learned") == 1 and int(gp.stats()["splits"]) >= 1,
        )
        stats = gp.stats()
        assert stats["auto_failures"] >= 2 and stats["auto_successes"] >= 1, stats
        assert stats["splits"] >= 1 and stats["watched"] >= 3, stats


def test_two_workers_learn_together(lab: Lab) -> None:
    """Failures seen by either worker count for the name; both workers load the learned
    name (flows are spread over the two queues by the kernel's flow hash)."""
    auto = lab.workdir / "auto-two.txt"
    args = ["--hostlist-auto", str(auto), "--auto-fail-threshold", "3"]
    with running(lab, args, workers=2) as gp:
        for attempt in (1, 2, 3):
            assert not curl(lab, BLOCKED, 4 if attempt % 2 else 6, FAIL_TIMEOUT), attempt
        wait_until(f"{BLOCKED} learned", lambda: auto.exists() and BLOCKED in auto.read_text())
        wait_until(
            "both workers reloading the auto list",
            lambda: [w.get("list_reloads") for w in gp.worker_stats()] == [1, 1],
        )
        results = [curl(lab, BLOCKED, family) for family in (4, 6) for _ in range(5)]
        assert all(results), (results, gp.log()[-3000:])
        assert gp.log().count("auto: learned") == 1, gp.log()[-3000:]


def test_list_edit_is_picked_up_without_restart(lab: Lab) -> None:
    hostlist = lab.workdir / "hosts-edit.txt"
    hostlist.write_text("# hosts to split\nother.example\n")
    with running(lab, ["--hostlist", str(hostlist)]) as gp:
        workers = gp.workers()
        assert len(workers) == 1
        assert not curl(lab, BLOCKED, timeout=FAIL_TIMEOUT), "unlisted blocked name passed"
        with hostlist.open("a") as f:
            f.write(f"{BLOCKED}\n")
        gp.wait_log("lists reloaded (changed)")
        assert curl(lab, BLOCKED), gp.log()[-3000:]
        # A broken edit: one clear line, the previous list stays in force.
        with hostlist.open("a") as f:
            f.write("bad host\n")
        gp.wait_log(f'hostlist {hostlist} line 4: "bad host" is not a valid entry (accepted: '
                    "host names, ^name for the name alone, # comments); "
                    "keeping the previous list")  # fmt: skip
        assert curl(lab, BLOCKED), gp.log()[-3000:]
        time.sleep(2.5)
        assert gp.log().count("keeping the previous list") == 1, gp.log()[-3000:]
        assert gp.workers() == workers and gp.popen().poll() is None, "restarted"


def test_sighup_reloads_the_lists(lab: Lab) -> None:
    hostlist = lab.workdir / "hosts-hup.txt"
    hostlist.write_text("xxxxxxx.example\n")
    with running(lab, ["--hostlist", str(hostlist)]) as gp:
        assert not curl(lab, BLOCKED, timeout=FAIL_TIMEOUT)
        # Same size, same inode, same mtime: invisible to the watcher, seen on SIGHUP.
        before = os.stat(hostlist)
        with hostlist.open("r+") as f:
            f.write(f"{BLOCKED}\n")
        os.utime(hostlist, ns=(before.st_atime_ns, before.st_mtime_ns))
        time.sleep(2.5)
        assert "lists reloaded" not in gp.log()
        os.kill(gp.pid, signal.SIGHUP)
        gp.wait_log("SIGHUP: reloading host lists and IP sets")
        gp.wait_log("lists reloaded (SIGHUP)")
        assert curl(lab, BLOCKED), gp.log()[-3000:]
        assert gp.popen().poll() is None, "SIGHUP stopped the daemon"


def test_bad_list_stops_the_start_with_one_line(lab: Lab, tmp_path: Path) -> None:
    bad = lab.workdir / "hosts-bad.txt"
    bad.write_text("ok.example\n\n# comment\n*.wild.example\n")
    argv = ["-m", "govpass", "run", "--workers", "1", "--hostlist", str(bad)]
    pid = lab.spawn("client", argv, python=True, env={"GOVPASS_RUN_DIR": str(tmp_path)})
    popen = lab.procs.procs[pid].popen
    rc = popen.wait(timeout=20)
    log = lab.log_of(pid).read_text()
    lab.kill(pid)
    assert rc == 2, log
    assert f'govpass: hostlist {bad} line 4: "*.wild.example" is not a valid entry' in log, log
    assert "Traceback" not in log
