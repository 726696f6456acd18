"""Least privilege after start: a root-started daemon's workers run as an unprivileged
user with CAP_NET_ADMIN only, no_new_privs and a seccomp filter (read from /proc), and
still split a connection through the first-packet censor; the daemon itself keeps
exactly the ten capabilities its run-time jobs need (README "What each process
holds"), and with those alone each of them works: rules put back, host lists
reloaded, workers restarted, the kernel split following interfaces, the auto list
rewritten, the stop; `--user root` keeps uid 0."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    ALLOWED,
    BLOCKED,
    BLOCKED_TIMEOUT,
    NAMES,
    PASS_TIMEOUT,
    WORKERS_ONLY,
    Govpass,
    censoring,
    govpass_cli,
    mangle_rules,
    running,
    tcx_egress_programs,
)
from govpass.lab import Lab
from govpass.lab.netns import LabError, wait_for
from govpass.privileges import PARENT_CAPS, cap_names, status_fields

pytestmark = pytest.mark.netns

NET_ADMIN = 1 << 12
# What the daemon keeps (README "What each process holds"), as /proc and its log
# name them; the test itself holds each of these.
DAEMON_CAPS = (
    "chown,dac_override,dac_read_search,kill,setgid,setuid,setpcap,net_admin,net_raw,sys_admin"
)


def expected_uid() -> int:
    for name in ("govpass", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    pytest.skip("neither a govpass nor a nobody user")


def test_root_started_workers_drop_to_the_unprivileged_user(host_lab: Lab) -> None:
    uid = expected_uid()
    with censoring(host_lab, "firstpacket"), running(host_lab, WORKERS_ONLY) as gp:
        workers = gp.workers()
        assert workers, gp.log()
        for pid in workers:
            f = status_fields(pid)
            assert f["Uid"] == str(uid), f
            assert int(f["CapEff"], 16) == NET_ADMIN, f
            assert int(f["CapPrm"], 16) == NET_ADMIN, f
            assert int(f["CapBnd"], 16) == NET_ADMIN, f
            assert f["NoNewPrivs"] == "1" and f["Seccomp"] == "2", f
        parent = status_fields(gp.pid or 0)
        assert parent["Uid"] == "0", parent
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert cap_names(int(parent[field], 16)) == DAEMON_CAPS, (field, parent)
        assert f"privileges: daemon uid 0, caps {DAEMON_CAPS}, no_new_privs 0" in gp.log()
        ok, detail = host_lab.client("curl", BLOCKED, family=4)
        assert ok, f"blocked name did not pass with govpass: {detail}\n{gp.log()[-2000:]}"
        stats = gp.wait_stats(lambda s: s.get("splits", 0) >= 1)
        assert stats.get("splits", 0) >= 1, stats
        assert f"privileges: workers uid {uid}, caps net_admin, no_new_privs 1" in gp.log()
        doctor = govpass_cli(host_lab, "client", ["doctor", "--json"], gp.run_dir)
        assert f"uid {uid}, caps net_admin, no_new_privs 1, seccomp 2" in doctor.stdout, (
            doctor.stdout
        )


def test_user_root_keeps_uid_0(host_lab: Lab) -> None:
    with running(host_lab, [*WORKERS_ONLY, "--user", "root"]) as gp:
        for pid in gp.workers():
            f = status_fields(pid)
            assert f["Uid"] == "0" and f["Seccomp"] == "0", f


def test_unknown_user_is_one_line(host_lab: Lab) -> None:
    proc = govpass_cli(host_lab, "client", ["run", "--user", "no-such-user-x"], None)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "user" in lines[0], proc.stderr


# -- what the daemon does after the drop, with what it kept -------------------------------

DAC_READ_SEARCH = 1 << 2
PROGRAM = "govpass_split"  # the kernel split's tc program


def waited(gp: Govpass, ready: Callable[[], object], timeout: float, what: str) -> None:
    """wait_for, failing with the daemon's log as it is then."""
    try:
        wait_for(ready, timeout, what)
    except LabError as e:
        pytest.fail(f"{e}; the log:\n{gp.log()[-3000:]}", pytrace=False)


def parent_keeps_exactly_parent_caps(gp: Govpass) -> None:
    """The daemon: uid 0, PARENT_CAPS (those of them the test holds) in its effective,
    permitted and bounding sets."""
    f = status_fields(gp.pid or 0)
    assert f["Uid"] == "0", f
    kept = sum(1 << c for c in PARENT_CAPS) & int(status_fields()["CapBnd"], 16)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(f[field], 16) == kept, (field, cap_names(int(f[field], 16)), f)


def assert_worker(pid: int, caps: int) -> None:
    f = status_fields(pid)
    assert f["Uid"] == str(expected_uid()), f
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(f[field], 16) == caps, (field, cap_names(int(f[field], 16)), f)
    assert f["NoNewPrivs"] == "1" and f["Seccomp"] == "2", f


def restart_worker(gp: Govpass) -> int:
    """kill -9 of the daemon's worker; the pid of the one it starts instead, once it
    has dropped to its user."""
    (old,) = gp.workers()
    os.kill(old, signal.SIGKILL)

    def dropped() -> list[int]:  # not a command the daemon is starting (same program)
        return [w for w in gp.workers() if w != old and status_fields(w).get("Seccomp") == "2"]

    waited(gp, dropped, 10.0, "a restarted worker")
    waited(gp, lambda: "worker 0 exited (code -9); restarting" in gp.log(), 5.0, "the log line")
    (new,) = dropped()
    return new


def delete_rules_by_hand(lab: Lab) -> None:
    """Deletes the jumps into govpass's chains with iptables/ip6tables -D, as an admin
    or a firewall reload would."""
    for tool in ("iptables", "ip6tables"):
        for line in mangle_rules(lab, "client", f"{tool}-save"):
            if line.startswith("-A ") and not line.split()[1].startswith("GOVPASS"):
                lab.exec("client", [tool, "-t", "mangle", "-D", *shlex.split(line)[1:]])


def rules_put_back(gp: Govpass, lab: Lab, rules: list[str]) -> None:
    delete_rules_by_hand(lab)
    assert mangle_rules(lab, "client") != rules
    waited(gp, lambda: mangle_rules(lab, "client") == rules, 12.0, "the rules put back")
    waited(gp, lambda: "from outside govpass: reinstalled" in gp.log(), 5.0, "the log line")
    assert "cannot reinstall" not in gp.log(), gp.log()[-3000:]


def worker_file(gp: Govpass) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data: dict[str, Any] = json.loads((gp.run_dir / "workers" / "worker-0.json").read_text())
        return data
    return {}


def reloaded(gp: Govpass, before: int) -> None:
    """Worker 0 applied a reload more than `before` times, without a failed one."""
    waited(gp, lambda: worker_file(gp).get("list_reloads", 0) > before, 10.0, "a list reload")
    assert worker_file(gp).get("list_errors", 0) == 0, (worker_file(gp), gp.log()[-2000:])


def gzip_list(path: Path, names: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress("".join(f"{n}\n" for n in names).encode()))
    tmp.rename(path)


def passes(lab: Lab, name: str, gp: Govpass) -> None:
    ok, detail = lab.client("curl", name, 4, timeout=PASS_TIMEOUT)
    assert ok, f"{name} did not pass: {detail}\n{gp.log()[-3000:]}"


def assert_clean_run_dir(gp: Govpass) -> None:
    left = [p.name for p in (*gp.run_dir.glob("*.json"), *gp.run_dir.glob("workers/*.json"))]
    assert left == [], left


def test_after_the_drop_lists_reload_rules_return_and_workers_restart(host_lab: Lab) -> None:
    """The run-time jobs of the daemon with the capabilities it kept: host lists
    (one plain, one gzip, both under the lab's 0700 work directory, which the
    workers' user cannot search) reloaded on edit and on SIGHUP, QUIC blocking
    rules, rules deleted by hand with iptables put back, a worker killed with
    SIGKILL restarted as the user with its own capabilities, and the stop."""
    lab = host_lab
    plain = lab.workdir / f"hosts-{time.monotonic_ns()}.txt"
    packed = lab.workdir / f"hosts-{time.monotonic_ns()}.txt.gz"
    plain.write_text("other.example\n")
    gzip_list(packed, ["another.example"])
    args = ["--hostlist", f"{plain},{packed}", "--block-quic", "all"]
    worker_caps = NET_ADMIN | DAC_READ_SEARCH  # the lists are not readable by the user
    with censoring(lab, "firstpacket", NAMES), running(lab, args, name="drop-lists") as gp:
        parent_keeps_exactly_parent_caps(gp)
        (first,) = gp.workers()
        assert_worker(first, worker_caps)
        rules = mangle_rules(lab, "client")
        assert any("udp" in ln for ln in rules), rules  # the QUIC rules
        rules_put_back(gp, lab, rules)

        reloads = worker_file(gp).get("list_reloads", 0)
        with plain.open("a") as f:
            f.write(f"{BLOCKED}\n")
        reloaded(gp, reloads)
        passes(lab, BLOCKED, gp)

        new = restart_worker(gp)
        assert_worker(new, worker_caps)
        passes(lab, BLOCKED, gp)
        reloads = worker_file(gp).get("list_reloads", 0)
        gzip_list(packed, ["another.example", ALLOWED])
        reloaded(gp, reloads)  # by the restarted worker
        passes(lab, ALLOWED, gp)

        reloads = worker_file(gp).get("list_reloads", 0)
        os.kill(gp.pid or 0, signal.SIGHUP)
        waited(gp, lambda: "lists reloaded (SIGHUP)" in gp.log(), 10.0, "the SIGHUP reload")
        reloaded(gp, reloads)
        rules_put_back(gp, lab, rules)  # also once a worker was restarted
        passes(lab, BLOCKED, gp)
        parent_keeps_exactly_parent_caps(gp)
    assert_clean_run_dir(gp)


def bpf_mounts(lab: Lab) -> list[str]:
    """govpass's bpf file systems and pins left in the client namespace."""
    mounts = lab.exec("client", ["cat", "/proc/self/mountinfo"]).stdout
    left = [ln for ln in mounts.splitlines() if "govpass" in ln]
    pins = lab.exec("client", ["sh", "-c", "ls -d /sys/fs/bpf/govpass* 2>/dev/null || true"])
    return left + pins.stdout.split()


def test_after_the_drop_the_kernel_split_follows_interfaces(host_lab: Lab) -> None:
    """The kernel split with the capabilities the daemon kept: the pre-filter pinned
    again when rules deleted by hand are put back, the program attached to an
    interface that appears, a worker restarted, and on SIGTERM everything detached,
    unmounted and unpinned."""
    lab = host_lab
    with censoring(lab, "firstpacket"), running(lab, name="drop-ks") as gp:
        parent_keeps_exactly_parent_caps(gp)
        waited(
            gp,
            lambda: gp.stats().get("kernel_split_state") == "on (tcx egress: eth0)",
            10.0,
            "the kernel split on",
        )
        assert tcx_egress_programs(lab, "client", "eth0") == [PROGRAM]
        rules = mangle_rules(lab, "client")
        assert any("--object-pinned" in ln for ln in rules), rules  # the eBPF pre-filter
        rules_put_back(gp, lab, rules)
        assert gp.stats().get("kernel_split_state") == "on (tcx egress: eth0)"

        veth = ["ip", "link", "add", "kpa0", "type", "veth", "peer", "name", "kpa1"]
        lab.exec("client", [*veth, "netns", lab.ns("censor")])
        try:
            waited(gp, lambda: "kernel split: attached to kpa0" in gp.log(), 10.0, "the attach")
            assert tcx_egress_programs(lab, "client", "kpa0") == [PROGRAM]
            assert_worker(restart_worker(gp), NET_ADMIN)
        finally:
            lab.exec("client", ["ip", "link", "del", "kpa0"], check=False)
        waited(gp, lambda: "kernel split: detached from kpa0" in gp.log(), 10.0, "the detach")
        before = gp.stats().get("kernel_split", 0)
        ok, detail = lab.client("python", BLOCKED, 4, timeout=PASS_TIMEOUT)
        assert ok, f"{detail}\n{gp.log()[-3000:]}"
        stats = gp.wait_stats(lambda s: s.get("kernel_split", 0) > before)
        assert stats.get("kernel_split", 0) > before, stats
        assert "cannot" not in gp.log(), gp.log()[-3000:]
    assert "kernel split: off (stopped)" in gp.log(), gp.log()[-2000:]
    assert tcx_egress_programs(lab, "client", "eth0") == []
    assert bpf_mounts(lab) == []
    assert_clean_run_dir(gp)


def test_after_the_drop_a_learned_name_keeps_the_auto_list_owner(host_lab: Lab) -> None:
    """Auto mode: the daemon rewrites the auto list with the name it learned. A list
    owned by the workers' user (mode 0640, in a directory they may search, so that
    they keep no CAP_DAC_READ_SEARCH) keeps that owner, and the workers then load
    the learned name (owned by root instead, they could not read it any more)."""
    lab = host_lab
    account = pwd.getpwuid(expected_uid())
    where = Path(tempfile.mkdtemp(prefix="govpass-auto-", dir="/tmp"))
    try:
        os.chmod(where, 0o755)
        auto = where / "auto.txt"
        auto.write_text("# learned names\n")
        os.chown(auto, account.pw_uid, account.pw_gid)
        os.chmod(auto, 0o640)
        args = ["--hostlist-auto", str(auto), "--auto-fail-threshold", "2"]
        with censoring(lab, "firstpacket"), running(lab, args, name="drop-auto") as gp:
            (worker,) = gp.workers()
            assert_worker(worker, NET_ADMIN)
            for attempt in (1, 2):
                ok, _ = lab.client("curl", BLOCKED, 4, timeout=BLOCKED_TIMEOUT)
                assert not ok, f"attempt {attempt} passed"
            waited(gp, lambda: f"auto: learned {BLOCKED}" in gp.log(), 10.0, "the learned name")
            st = os.stat(auto)
            assert (st.st_uid, st.st_gid) == (account.pw_uid, account.pw_gid), st
            assert stat.S_IMODE(st.st_mode) == 0o640, st
            waited(gp, lambda: "lists reloaded (changed)" in gp.log(), 10.0, "the reload")
            passes(lab, BLOCKED, gp)
    finally:
        shutil.rmtree(where, ignore_errors=True)
