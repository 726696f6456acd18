"""One govpass per network namespace, and rules that stay in place.

* a second ``govpass run`` (its own run directory and queue) is refused with one line,
  and the first daemon's rules, queue and counters are untouched;
* ``govpass rules remove`` / ``install`` by hand while a daemon runs are refused with
  one line; with ``--force`` they go through, and the daemon puts its rules back
  (removed or changed) and says so once;
* run directories: one others could write to, or owned by another user, is refused
  with one line naming it; symlinks planted in a run directory are replaced, never
  followed; a planted or stale daemon.json blocks nothing; files are 0640, a new run
  directory 0750.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    Govpass,
    all_splits,
    censoring,
    govpass_cli,
    mangle_rules,
    running,
)
from govpass.lab import Lab
from govpass.lab.netns import wait_for

pytestmark = pytest.mark.netns


@pytest.fixture
def lab(host_lab: Lab) -> Iterator[Lab]:
    with censoring(host_lab, "firstpacket"):
        yield host_lab


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {stderr!r}"
    return lines[0]


def test_a_second_daemon_in_the_namespace_is_refused(lab: Lab) -> None:
    with running(lab, WORKERS_ONLY, name="first-ns") as first:
        rules = mangle_rules(lab, "client")
        second = lab.workdir / f"second-ns-{time.monotonic_ns()}"
        proc = govpass_cli(lab, "client", ["run", "--workers", "1", "--queue-num", "300"], second)
        assert proc.returncode != 0
        line = one_line(proc.stderr)
        assert f"another govpass daemon (pid {first.pid}, uid 0) is already running in this " \
            "network namespace" in line, line  # fmt: skip
        assert mangle_rules(lab, "client") == rules, "the first daemon's rules are untouched"
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0]
        first.wait_stats(lambda s: all_splits(s) >= 1)
        assert "rules removed" not in first.log()


def test_rules_changed_by_hand_are_refused_then_put_back(lab: Lab) -> None:
    with running(lab, WORKERS_ONLY, name="by-hand") as gp:
        rules = mangle_rules(lab, "client")
        assert rules
        for command in (["rules", "remove"], ["rules", "install", "--workers", "1"]):
            proc = govpass_cli(lab, "client", command)
            assert proc.returncode != 0, proc
            line = one_line(proc.stderr)
            assert f"a govpass daemon (pid {gp.pid}) is running in this network namespace" in line
            assert "--force" in line
            assert mangle_rules(lab, "client") == rules

        proc = govpass_cli(lab, "client", ["rules", "remove", "--force"])
        assert proc.returncode == 0 and proc.stdout.startswith("removed"), proc
        # The daemon checks its rules every few seconds: it may have put them back
        # before the command looked again (and then the command says so).
        if "put its rules back" not in proc.stdout:
            assert proc.stdout.startswith("removed:"), proc
        wait_for(lambda: mangle_rules(lab, "client") == rules, 12.0, "the rules put back")
        wait_for(lambda: "rules removed from outside govpass: reinstalled" in gp.log(), 5.0,
                 "the log line")  # fmt: skip
        assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0]

        argv = ["rules", "install", "--force", "--workers", "1", "--ports", "8443"]
        proc = govpass_cli(lab, "client", argv)
        assert proc.returncode == 0, proc
        assert mangle_rules(lab, "client") != rules
        wait_for(lambda: mangle_rules(lab, "client") == rules, 12.0, "the rules restored")
        wait_for(lambda: "rules changed from outside govpass: reinstalled" in gp.log(), 5.0,
                 "the log line")  # fmt: skip
        time.sleep(6)  # one more check: nothing to do, nothing logged
        assert gp.log().count("from outside govpass") == 2, gp.log()[-3000:]
        assert lab.client("curl", ALLOWED, 6, timeout=PASS_TIMEOUT)[0]
    proc = govpass_cli(lab, "client", ["rules", "remove"])
    assert proc.returncode == 0 and "nothing installed" in proc.stdout, proc


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "another user"])
def test_unsafe_run_directories_are_refused(lab: Lab, how: str) -> None:
    run = lab.workdir / f"unsafe-{how.replace(' ', '-')}-{time.monotonic_ns()}"
    run.mkdir(mode=0o750)
    if how == "world-writable":
        run.chmod(0o1777)
    elif how == "group-writable":
        run.chmod(0o770)
    else:
        os.chown(run, 65534, 65534)
    proc = govpass_cli(lab, "client", ["run", "--workers", "1"], run)
    assert proc.returncode != 0
    line = one_line(proc.stderr)
    assert f"run directory {run}: " in line, line
    assert list(run.iterdir()) == [], "nothing written there"
    assert mangle_rules(lab, "client") == [], "nothing installed"


def state_files(run_dir: Path) -> list[Path]:
    """The run directory's files, and those of its `workers/` directory (the workers'
    counters, written by the unprivileged worker user), which must itself be a real
    directory only its owner and group can enter."""
    workers = run_dir / "workers"
    st = os.lstat(workers)
    assert stat.S_ISDIR(st.st_mode), f"{workers} is not a directory"
    assert stat.S_IMODE(st.st_mode) == 0o750, f"{workers}: {stat.S_IMODE(st.st_mode):o}"
    return [p for p in [*run_dir.iterdir(), *workers.iterdir()] if p != workers]


def test_planted_files_in_the_run_directory_are_harmless(lab: Lab) -> None:
    victim = lab.workdir / f"victim-{time.monotonic_ns()}"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    gp = Govpass(lab, "client", WORKERS_ONLY, name="planted")
    gp.run_dir.mkdir(mode=0o750)
    for name in ("stats.json", "worker-0.json", "learner.json", "kernel-split.json"):
        (gp.run_dir / name).symlink_to(victim)
    # A stale daemon.json whose pid is now a live process with "govpass" in its argv.
    impostor = subprocess.Popen(["sh", "-c", "sleep 60", "govpass"])
    try:
        (gp.run_dir / "daemon.json").write_text(json.dumps({"pid": impostor.pid}))
        gp.start()
        try:
            assert lab.client("curl", BLOCKED, 4, timeout=PASS_TIMEOUT)[0]
            stats = gp.wait_stats(lambda s: all_splits(s) >= 1)
            assert stats["pid"] == gp.pid
            for path in state_files(gp.run_dir):
                st = os.lstat(path)
                assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
                assert stat.S_IMODE(st.st_mode) == 0o640, f"{path}: {stat.S_IMODE(st.st_mode):o}"
        finally:
            assert gp.stop() == 0, gp.log()
    finally:
        impostor.kill()
        impostor.wait()
    assert victim.read_text() == "root's file\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_a_new_run_directory_is_0750(lab: Lab) -> None:
    with running(lab, WORKERS_ONLY, name="mode") as gp:
        assert stat.S_IMODE(gp.run_dir.stat().st_mode) == 0o750
        gp.wait_stats(lambda s: s.get("workers", 0) >= 1)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state_files(gp.run_dir)}
        assert modes and set(modes.values()) == {0o640}, modes
